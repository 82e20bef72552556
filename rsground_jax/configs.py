"""Experiment configs: `ml_collections` files under `configs/`, each with `get_config()`, plus overrides.

`load_config("configs/demo.py", ["optim.lr=1e-3", "steps=200"])` imports the file, calls `get_config()`, and
applies `key.sub=value` overrides (values parsed as Python literals, checked against the existing type).
List elements are addressed by index (`stages.0.steps=50`); dicts in a value (`stages=[{...}]`) become
ConfigDicts. Unknown keys and bad values raise `ConfigError` naming the key.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import math
import os
import re
from typing import Any, Callable

import ml_collections

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A missing or malformed experiment config, or a bad override."""


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"rsground_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a config file is user code: report where it failed
        raise ConfigError(f"{path}: the config file failed to load ({type(e).__name__}: {e})") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: a config file must define get_config()")
    cfg = module.get_config()
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict, got {type(cfg).__name__}")
    for item in overrides:
        apply_override(cfg, item)
    return cfg


def apply_override(cfg: ml_collections.ConfigDict, item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip().removeprefix("--").removeprefix("config.")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    *parents, leaf = key.split(".")
    node = cfg
    for i, part in enumerate(parents):
        node = _child(node, part)
        if node is None:
            raise ConfigError(f"unknown config key {'.'.join(parents[: i + 1])!r} in override {item!r}")
    if isinstance(node, (list, tuple)):  # stages.0=...: replace one element of a list
        if not (leaf.isdigit() and int(leaf) < len(node)):
            raise ConfigError(f"override {item!r}: {leaf!r} is not an index of the {len(node)}-element list "
                              f"{'.'.join(parents)}")
    elif not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigError(f"unknown config key {key!r} in override {item!r}; known here: {known}")
    try:
        value = _config_dict(ast.literal_eval(raw))
    except (ValueError, SyntaxError):
        value = raw  # a bare string
    old = node[int(leaf)] if isinstance(node, (list, tuple)) else node[leaf]
    if old is not None and not isinstance(value, type(old)):
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
            value = type(old)(value)
        else:
            raise ConfigError(f"override {item!r}: {key} is a {type(old).__name__}, got {type(value).__name__}")
    try:
        if isinstance(node, tuple):
            raise TypeError(f"{'.'.join(parents)} is a tuple; override it whole")
        if isinstance(node, list):
            node[int(leaf)] = value
        else:
            node[leaf] = value
    except (TypeError, ValueError) as e:
        raise ConfigError(f"override {item!r}: {e}") from None


def plain_config(cfg: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON values (tuples become lists), as it is recorded in a workdir and a report."""
    return json.loads(json.dumps(cfg.to_dict(), default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o)))


def _child(node, part: str):
    """`node.part` for a ConfigDict, `node[int(part)]` for a list or tuple; None where there is none."""
    if isinstance(node, ml_collections.ConfigDict):
        return node[part] if part in node else None
    if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return None


def _config_dict(value):
    """Dicts inside an override value (e.g. a list of stages) become ConfigDicts, like the config file's."""
    if isinstance(value, dict):
        return ml_collections.ConfigDict({k: _config_dict(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_config_dict(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_config_dict(v) for v in value)
    return value


# ------------------------------------------------------------------------------ the experiment schema
#
# Every key an SFT experiment config may hold (`rsground sft`, train/experiment.py), with its type and range.
# A key not listed is refused: a typo would otherwise be a silent default. `resumable` keys may change on
# --resume (they act on what is still to come: more steps, other intervals, another export folder); any other
# difference from the run that started the workdir is refused, since the run could not honour it.


@dataclasses.dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    wanted: str  # said in the error, e.g. "a positive integer"
    check: Callable[[Any], bool] = lambda v: True
    required: bool = False
    resumable: bool = False


def _int(wanted, check, **kw):
    return Field((int,), wanted, check, **kw)


def _float(wanted, check, **kw):
    return Field((int, float), wanted, lambda v: math.isfinite(v) and check(v), **kw)


def _str(wanted="a string", check=lambda v: True, **kw):
    return Field((str,), wanted, check, **kw)


def _choice(*options, **kw):
    return Field((str,), f"one of {list(options)}", lambda v: v in options, **kw)


_MARKUP = re.compile(r"<\|[A-Za-z0-9_]+\|>")  # Qwen special tokens: the chat layout adds them itself
_POSITIVE = ("a positive integer", lambda v: v > 0)
_NON_NEGATIVE = ("an integer >= 0", lambda v: v >= 0)
_ANY_INT = ("an integer", lambda v: True)
_FRACTION = ("a number in [0, 1]", lambda v: 0 <= v <= 1)
_NAMES = Field((list, tuple), "a list of stage names", lambda v: all(isinstance(x, str) for x in v))
_BUCKETS = Field((list, tuple), "a list of positive integers",
                 lambda v: len(v) > 0 and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v))
# a name that is also a folder under the workdir: no separators, and not "." or ".." (which would leave it)
_FOLDER_NAME = _str("a name (letters, digits, _ . -, starting with a letter, digit or _)",
                    lambda v: bool(re.fullmatch(r"\w[\w.-]*", v)), required=True)
_INTERVALS = {"log_every": _int(*_POSITIVE, resumable=True), "checkpoint_every": _int(*_POSITIVE, resumable=True),
              "keep_checkpoints": _int(*_POSITIVE, resumable=True)}

EXPERIMENT_FIELDS: dict[str, Field] = {
    "seed": _int(*_ANY_INT, required=True),
    "workdir": _str("a folder path", lambda v: bool(v.strip()), required=True),
    "output": _str("a folder path, or '' for none", required=True, resumable=True),
    "init": _str("'tiny', 'base' or a model folder", lambda v: bool(v.strip()), required=True),
    "tiny_options": Field((ml_collections.ConfigDict, type(None)), "a dict of tiny() options"),
    "compute_dtype": _choice("float32", "bfloat16"),
    "remat": _choice("none", "full", "dots"),
    "tokenizer": _str("'small', 'qwen2.5', a tokenizer folder, or '' for init's own", required=True),
    "max_pixels": _int(*_POSITIVE, required=True),
    "template_system": _str("a string without <|...|> markup", lambda v: not _MARKUP.search(v), required=True),
    "template_question": _str("a string with {expression} and without <|...|> markup",
                              lambda v: "{expression}" in v and not _MARKUP.search(v), required=True),
    "answer_style": _choice("cot", "brief_cot", "box", required=True),
    "length_bucket": _int(*_POSITIVE, required=True),
    "eval_images": _int(*_NON_NEGATIVE, required=True, resumable=True),
    "max_new_tokens": _int(*_POSITIVE, resumable=True),
    "stages": Field((list, tuple), "a non-empty list of stages", lambda v: len(v) > 0, required=True),
    # a checkpoint holds whole arrays, so a resumed run may use another mesh (a preempted job on another slice)
    "mesh": Field((ml_collections.ConfigDict, type(None)),
                  "None (one device) or a dict of mesh sizes over data, fsdp and tensor: positive integers, at "
                  "most one -1 (the devices left)", lambda v: _mesh_ok(v), resumable=True),
    **_INTERVALS,
}
EXPERIMENT_FIELDS["checkpoint_dir"] = _str("'' (each stage's checkpoints under the workdir), or a folder or URL "
                                           "(gs://bucket/run) that holds them, one subfolder per stage",
                                           resumable=True)
# the same math by another kernel (`TextDecoder.attention`), so a resumed run may switch (e.g. onto a GPU)
EXPERIMENT_FIELDS["attention"] = _choice("xla", "dot_product_attention", resumable=True)
MESH_FIELD = EXPERIMENT_FIELDS["mesh"]

def _mesh_ok(sizes) -> bool:
    values = [sizes[k] for k in sizes.keys()]
    return (set(sizes.keys()) <= {"data", "fsdp", "tensor"} and all(isinstance(v, int) and not isinstance(v, bool)
                                                                     and (v > 0 or v == -1) for v in values)
            and values.count(-1) <= 1)


_STAGE_COMMON: dict[str, Field] = {
    "name": _FOLDER_NAME,
    "task": _choice("sft", "vision", "grpo"),
    "steps": _int(*_POSITIVE, required=True, resumable=True),
    "batch_size": _int(*_POSITIVE, required=True),
    "lr": _float("a positive number", lambda v: v > 0, required=True),
    "warmup_steps": _int(*_NON_NEGATIVE),
    "end_lr_fraction": _float(*_FRACTION),
    "synth": Field((ml_collections.ConfigDict, type(None)), "a dict with a preset and SynthConfig fields, or None"),
    "num_images": _int(*_POSITIVE),
    "data_root": _str("a dataset folder"),
    "data_format": _choice("auto", "dior_rsvg", "opt_rsvg", "rsvg_hr", "vrsbench"),
    "data_from": _str("the name of an earlier stage"),
    "replay": _NAMES,
    "seed": _int(*_ANY_INT),
    "data_seed": _int(*_ANY_INT),
    **_INTERVALS,
}
STAGE_FIELDS: dict[str, dict[str, Field]] = {
    "sft": {**_STAGE_COMMON,
            "warmup_steps": _int(*_NON_NEGATIVE, required=True),
            "freeze_vision": Field((bool,), "true or false"),
            "vision_lr_scale": _float("a positive number (freeze_vision freezes the tower)", lambda v: v > 0),
            "accum_steps": _int(*_POSITIVE),
            "leadin_fraction": _float(*_FRACTION),
            "question_variants": Field((str, list, tuple), "a name of QUESTION_VARIANTS or a list of questions"),
            "length_buckets": _BUCKETS},
    "vision": {**_STAGE_COMMON, "box_weight": _float("a number >= 0", lambda v: v >= 0)},
    # filled in below from the GRPO schema: a grpo stage takes `rsground grpo`'s training fields
}


def check_experiment(cfg: ml_collections.ConfigDict, source: str = "config") -> None:
    """Raise `ConfigError` naming `source` and the key for an unknown key, a missing one, a value of the wrong
    type or out of range, or stages that do not fit together (names, data sources, replay)."""
    _check_fields(cfg, EXPERIMENT_FIELDS, source, "")
    if cfg.init == "tiny" and not cfg.tokenizer:
        raise ConfigError(f"{source}: init='tiny' has no tokenizer of its own: set tokenizer (e.g. 'small')")
    names = []
    for i, st in enumerate(cfg.stages):
        where = f"stages.{i}"
        if not isinstance(st, ml_collections.ConfigDict):
            raise ConfigError(f"{source}: {where} must be a dict of stage settings, got {type(st).__name__}")
        task = st.get("task", "sft")
        if task not in STAGE_FIELDS:
            raise ConfigError(f"{source}: {where}.task is {task!r}, expected one of {sorted(STAGE_FIELDS)}")
        _check_fields(st, STAGE_FIELDS[task], source, where + ".")
        if task == "grpo":
            _check_grpo_parts(st, source, where + ".")
        if cfg.get("mesh") is not None and task == "vision":
            raise ConfigError(f"{source}: mesh is supported by sft and grpo stages so far; {where} ({st.name}) is a "
                              f"{task} stage (docs/sharding.md)")
        if st.name in names:
            raise ConfigError(f"{source}: {where}.name {st.name!r} is used by an earlier stage")
        own = [k for k in ("synth", "data_root", "data_from") if st.get(k) not in (None, "")]
        if len(own) != 1:
            raise ConfigError(f"{source}: {where} ({st.name}) needs exactly one data source of synth, data_root and "
                              f"data_from; it has {own or 'none'}")
        if own == ["synth"]:
            if st.get("num_images") is None:
                raise ConfigError(f"{source}: {where}.num_images is required with synth")
            _check_synth(st.synth, source, f"{where}.synth")
        for key in ("data_from", *(("replay",) if st.get("replay") else ())):
            for ref in ([st.get(key)] if key == "data_from" else list(st.replay)):
                if ref and ref not in names:
                    raise ConfigError(f"{source}: {where}.{key} names {ref!r}, which is not an earlier stage ({names})")
        names.append(st.name)


def _check_fields(node, fields: dict[str, Field], source: str, prefix: str) -> None:
    for key in node.keys():
        if key not in fields:
            raise ConfigError(f"{source}: unknown config key '{prefix}{key}'; known here: {sorted(fields)}")
    for key, f in fields.items():
        if key not in node or node[key] is None and type(None) not in f.types:
            if f.required:
                raise ConfigError(f"{source}: config key {prefix}{key} is missing; it must be {f.wanted}")
            continue
        value = node[key]
        ok = isinstance(value, f.types) and not (isinstance(value, bool) and bool not in f.types)
        if not ok or (value is not None and not f.check(value)):
            raise ConfigError(f"{source}: {prefix}{key} must be {f.wanted}, got {value!r}")


def _check_synth(spec, source: str, where: str) -> None:
    from .data.synthetic import PRESETS, SynthConfig

    fields = {f.name for f in dataclasses.fields(SynthConfig)}
    for key in spec.keys():
        if key != "preset" and key not in fields:
            raise ConfigError(f"{source}: unknown config key '{where}.{key}'; known here: {['preset', *sorted(fields)]}")
    if spec.get("preset") not in PRESETS:
        raise ConfigError(f"{source}: {where}.preset must be one of {sorted(PRESETS)}, got {spec.get('preset')!r}")
    try:
        synth_config(spec.to_dict())
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {where}: {e}") from None


def synth_config(spec: dict):
    """The SynthConfig of a stage's `synth` dict: its preset with the other keys replaced."""
    from .data.synthetic import PRESETS

    spec = dict(spec)
    base = PRESETS[spec.pop("preset")]
    return dataclasses.replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


# Keys whose value may differ on --resume (see above), as dotted paths with the stage index replaced by '*'.
RESUMABLE_KEYS = ({k for k, f in EXPERIMENT_FIELDS.items() if f.resumable}
                  | {f"stages.*.{k}" for k, f in _STAGE_COMMON.items() if f.resumable})


def _resumable(path: str) -> bool:
    """A resumable key, or a key inside one (`mesh.data`)."""
    parts = path.split(".")
    return any(".".join(parts[:n]) in RESUMABLE_KEYS for n in range(1, len(parts) + 1))


def config_differences(saved: dict, current: dict) -> list[str]:
    """The dotted keys whose values differ between two plain config dicts, except `RESUMABLE_KEYS`."""
    out = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{path}.{k}" if path else str(k))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}.{i}")
        elif a != b and not _resumable(re.sub(r"^stages\.\d+\.", "stages.*.", path)):
            out.append(f"{path}: {a!r} then, {b!r} now")

    walk(saved, current, "")
    return out


# ------------------------------------------------------------------------------------ the GRPO schema
#
# `rsground grpo` (rl/experiment.py): one stage of reinforcement fine-tuning from a model folder (a CoT-SFT
# export). The prompt template and pixel budget are the model folder's own (rsground_prompt.json), so the
# policy is prompted as it was trained.

_DATA_FIELDS: dict[str, Field] = {
    "synth": Field((ml_collections.ConfigDict, type(None)), "a dict with a preset and SynthConfig fields, or None"),
    "num_images": _int(*_POSITIVE),
    "data_root": _str("a dataset folder"),
    "data_format": _choice("auto", "dior_rsvg", "opt_rsvg", "rsvg_hr", "vrsbench"),
    "data_seed": _int(*_ANY_INT),
    "prompts": _int("an integer >= 0 (0: every training record; N: the first N, a fixed set)", lambda v: v >= 0),
}
_GRPO_SETTINGS: dict[str, Field] = {
    "num_generations": _int("an integer >= 2", lambda v: v >= 2),
    "num_iterations": _int(*_POSITIVE),
    "beta": _float("a number >= 0", lambda v: v >= 0),
    "epsilon": _float("a number in (0, 1)", lambda v: 0 < v < 1),
    "epsilon_high": Field((int, float, type(None)), "a positive number or None (= epsilon)",
                          lambda v: v is None or (math.isfinite(v) and v > 0)),
    "kl_estimator": _choice("k1", "k3"),
    "loss_agg_mode": _choice("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"),
    "scale_rewards": _choice("group", "batch", "none"),
    "temperature": _float("a positive number", lambda v: v > 0),
    "top_k": _int(*_NON_NEGATIVE),
    "top_p": _float("a number in (0, 1]", lambda v: 0 < v <= 1),
    "max_new_tokens": _int(*_POSITIVE),
    "dynamic_sampling": Field((bool,), "true or false"),
    "dynamic_sampling_oversample": _int("an integer >= 2", lambda v: v >= 2),
    "mask_truncated_completions": Field((bool,), "true or false"),
    "greedy_rollouts": _int("an integer >= 0, below num_generations", lambda v: v >= 0),
    "sft_coef": _float("a number >= 0", lambda v: v >= 0),
    "box_temperature": Field((int, float, type(None)), "a positive number, or None (= temperature)",
                             lambda v: v is None or (math.isfinite(v) and v > 0)),
}
_COHERENCE_FIELDS: dict[str, Field] = {
    "enabled": Field((bool,), "true or false", required=True),
    "kind": _str("a name of rl.rewards.COHERENCE"),
    "min_weight": _float(*_FRACTION),
}
GRPO_FIELDS: dict[str, Field] = {
    "seed": _int(*_ANY_INT, required=True),
    "workdir": _str("a folder path", lambda v: bool(v.strip()), required=True),
    "output": _str("a folder path, or '' for none", required=True, resumable=True),
    "init": _str("a model folder (a CoT-SFT export) or 'base'", lambda v: bool(v.strip()), required=True),
    "reference": _str("a model folder, or '' for init (the frozen KL reference)"),
    "tokenizer": _str("'small', 'qwen2.5', a tokenizer folder, or '' for init's own"),
    "compute_dtype": _choice("float32", "bfloat16"),
    "remat": _choice("none", "full", "dots"),
    "data": Field((ml_collections.ConfigDict,), "a dict: synth + num_images, or data_root", required=True),
    "steps": _int(*_POSITIVE, required=True, resumable=True),
    "batch_size": _int("a positive integer: completions per micro-batch, a multiple of grpo.num_generations",
                       lambda v: v > 0, required=True),
    "accum_steps": _int(*_POSITIVE),
    "lr": _float("a positive number", lambda v: v > 0, required=True),
    "warmup_steps": _int(*_NON_NEGATIVE),
    "end_lr_fraction": _float(*_FRACTION),
    "freeze_vision": Field((bool,), "true or false"),
    "clip_norm": Field((int, float, type(None)), "a positive number or None", lambda v: v is None or v > 0),
    "max_prompt_length": _int(*_POSITIVE, required=True),
    "grpo": Field((ml_collections.ConfigDict,), "a dict of GRPOConfig settings", required=True),
    "rewards": Field((ml_collections.ConfigDict,), "a dict of reward name -> weight", required=True),
    "reward_options": Field((ml_collections.ConfigDict,), "a dict of reward name -> options"),
    "coherence": Field((ml_collections.ConfigDict,), "a dict: enabled, kind, min_weight"),
    "eval_images": _int(*_NON_NEGATIVE, required=True, resumable=True),
    "mesh": MESH_FIELD,
    "checkpoint_dir": EXPERIMENT_FIELDS["checkpoint_dir"],
    "attention": EXPERIMENT_FIELDS["attention"],
    **_INTERVALS,
}
GRPO_RESUMABLE_KEYS = {k for k, f in GRPO_FIELDS.items() if f.resumable}
# An experiment's grpo stage: the stage fields plus GRPO's training ones; its init and reference are the model
# the earlier stages left, its data the stage's own.
STAGE_FIELDS["grpo"] = {**_STAGE_COMMON, **{k: GRPO_FIELDS[k] for k in (
    "accum_steps", "freeze_vision", "clip_norm", "max_prompt_length", "grpo", "rewards", "reward_options",
    "coherence")}}


def check_grpo_config(cfg: ml_collections.ConfigDict, source: str = "config") -> None:
    """Raise `ConfigError` naming `source` and the key for anything `rsground grpo` cannot run: unknown or
    missing keys, values out of range, a reward that does not exist, a batch that does not divide into groups."""
    _check_fields(cfg, GRPO_FIELDS, source, "")
    _check_fields(cfg.data, _DATA_FIELDS, source, "data.")
    own = [k for k in ("synth", "data_root") if cfg.data.get(k) not in (None, "")]
    if len(own) != 1:
        raise ConfigError(f"{source}: data needs exactly one source of synth and data_root; it has {own or 'none'}")
    if own == ["synth"]:
        if cfg.data.get("num_images") is None:
            raise ConfigError(f"{source}: data.num_images is required with synth")
        _check_synth(cfg.data.synth, source, "data.synth")
    _check_grpo_parts(cfg, source, "")


def _check_grpo_parts(node, source: str, prefix: str) -> None:
    """The GRPO settings, rewards and coherence of a GRPO config (prefix '') or an experiment's grpo stage."""
    _check_fields(node.grpo, _GRPO_SETTINGS, source, f"{prefix}grpo.")
    if node.get("coherence") is not None:
        _check_fields(node.coherence, _COHERENCE_FIELDS, source, f"{prefix}coherence.")
    try:
        g = grpo_settings(node)
    except ConfigError as e:
        raise ConfigError(f"{source}: {prefix}{e}") from None
    if node.batch_size % g.num_generations:
        raise ConfigError(f"{source}: {prefix}batch_size={node.batch_size} completions do not divide into groups of "
                          f"grpo.num_generations={g.num_generations}; use a multiple of {g.num_generations}")
    from .rl.rewards import COHERENCE, RewardConfigError, check_reward_weights

    try:
        check_reward_weights(node.rewards.to_dict(), (node.get("reward_options") or ml_collections.ConfigDict()).to_dict())
    except RewardConfigError as e:
        raise ConfigError(f"{source}: {prefix}rewards: {e}") from None
    if not node.rewards:
        raise ConfigError(f"{source}: {prefix}rewards is empty: give at least one reward name and its weight")
    kind = (node.get("coherence") or {}).get("kind", "target_pairwise_iou")
    if kind not in COHERENCE:
        raise ConfigError(f"{source}: {prefix}coherence.kind={kind!r} is not one of {sorted(COHERENCE)}")


def grpo_settings(cfg: ml_collections.ConfigDict):
    """The `GRPOConfig` of a GRPO experiment config's `grpo` dict."""
    from .rl.config import GRPOConfig, GRPOConfigError

    try:
        return GRPOConfig(**cfg.grpo.to_dict())
    except GRPOConfigError as e:
        raise ConfigError(str(e)) from None


def grpo_config_differences(saved: dict, current: dict) -> list[str]:
    """`config_differences` for GRPO configs: the keys that differ, except `GRPO_RESUMABLE_KEYS`."""
    return [d for d in config_differences(saved, current) if d.split(":")[0] not in GRPO_RESUMABLE_KEYS]


# ------------------------------------------------------------------------------------ the ablation schema
#
# `rsground ablate` (rl/ablation.py): the runner's own keys. The runs it makes are checked by the schemas above:
# `sft` as an `rsground sft` config, `grpo` with each variant's `set` as an `rsground grpo` config.

_VARIANT_FIELDS: dict[str, Field] = {
    "name": _FOLDER_NAME,  # each seed's run of the variant lives in <workdir>/seed<k>/<name>
    "label": _str("a label for the table", lambda v: bool(v.strip()), required=True),
    "rung": Field((bool,), "true or false (a rung of the ladder, compared with the rung before it)"),
    "against": Field((str, list, tuple), "the name of the row it is compared with (another variant, or 'cot_sft'), "
                     "or a list of names (the first for the table's Δ column, each in the table of steps)",
                     lambda v: isinstance(v, str) or (len(v) > 0 and all(isinstance(x, str) for x in v))),
    "set": Field((dict, ml_collections.ConfigDict), "a dict of grpo config key -> value ('grpo.temperature' sets "
                 "one key inside a dict setting)"),
}
# the table's keys: a rerun may change them, as they train nothing (`rl.ablation.ablation_differences`)
VARIANT_TABLE_KEYS = ("label", "rung", "against")
_VARIANT_KEYS = ", ".join(_VARIANT_FIELDS)

ABLATION_FIELDS: dict[str, Field] = {
    "workdir": _str("a folder path", lambda v: bool(v.strip()), required=True),
    "data": Field((ml_collections.ConfigDict,), "a dict: preset, num_images, data_seed", required=True),
    "eval_records": _int("a positive integer (test expressions of the split scored at most)", lambda v: v > 0,
                         required=True),
    "test_data": Field((ml_collections.ConfigDict, type(None)), "None or a dict: num_images, data_seed"),
    "sft": Field((ml_collections.ConfigDict,), "a dict: an `rsground sft` config", required=True),
    "grpo": Field((ml_collections.ConfigDict,), "a dict: an `rsground grpo` config", required=True),
    "variants": Field((list, tuple), f"a list of variants (dicts: {_VARIANT_KEYS})", required=True),
}
_ABLATION_DATA_FIELDS: dict[str, Field] = {
    "preset": _str("a preset of data.synthetic.PRESETS", required=True),
    "num_images": _int(*_POSITIVE, required=True),
    "data_seed": _int(*_ANY_INT, required=True),
}
_ABLATION_TEST_FIELDS: dict[str, Field] = {
    "num_images": _int("an integer >= 0 (0: the benchmark's own test split)", lambda v: v >= 0, required=True),
    "data_seed": _int(*_ANY_INT, required=True),
}


def check_ablation_fields(cfg: ml_collections.ConfigDict, source: str = "config") -> None:
    """Raise `ConfigError` naming `source` and the key for an unknown, missing or malformed key of the ablation
    runner's own (the table above), its data, its test set or a variant."""
    from .data.synthetic import PRESETS

    _check_fields(cfg, ABLATION_FIELDS, source, "")
    _check_fields(cfg.data, _ABLATION_DATA_FIELDS, source, "data.")
    if cfg.data.preset not in PRESETS:
        raise ConfigError(f"{source}: data.preset must be one of {sorted(PRESETS)}, got {cfg.data.preset!r}")
    if cfg.get("test_data") is not None:
        _check_fields(cfg.test_data, _ABLATION_TEST_FIELDS, source, "test_data.")
    for i, v in enumerate(cfg.variants):
        if not isinstance(v, (dict, ml_collections.ConfigDict)):
            raise ConfigError(f"{source}: variants.{i} must be a dict ({_VARIANT_KEYS}), got {v!r}")
        _check_fields(v, _VARIANT_FIELDS, source, f"variants.{i}.")
