"""Scores by the kind of cue an expression uses, on the expressions that need one: the demo's and the
ablation's test set is the test expressions whose target shares its category with another object."""

from __future__ import annotations

from ..data.expressions import parse_expression
from .metrics import grounding_metrics


def shares_category(record) -> bool:
    return any(o.category == record.category for o in record.others)


# The cues that say where the target is (`expressions.parse_expression` kinds); size cues do not.
POSITIONAL_CUES = ("absolute", "ordinal", "relative")
CUE_COLUMNS = (*POSITIONAL_CUES, "size", "positional")


def metrics_by_cue(records, predictions) -> dict[str, dict]:
    """`grounding_metrics` for each kind of cue among `records` (the synthetic grammar's "absolute",
    "ordinal", "relative", "size", "unique"; "free" for text outside it), plus "positional": the absolute,
    ordinal and relative cues together. `predictions` are `evaluate`'s rows, in the order of `records`."""
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if predictions[i].get("expression", r.expression) != r.expression:
            raise ValueError(f"prediction {i} is for {predictions[i]['expression']!r}, record {i} is {r.expression!r}")
        cue = parse_expression(r.expression)
        kind = "free" if cue is None else cue.kind
        groups.setdefault(kind, []).append(i)
        if kind in POSITIONAL_CUES:
            groups.setdefault("positional", []).append(i)
    return {kind: grounding_metrics([predictions[i]["pred_box"] for i in idx], [records[i].box for i in idx],
                                    [(records[i].height, records[i].width) for i in idx])
            for kind, idx in groups.items()}
