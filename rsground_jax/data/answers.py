"""The answer grammar (numpy only): the reference box parser and format check that evaluation and the GRPO
rewards share, and the per-token tables the on-device parser (`rl.rewards.parse_completions`) reads.
`rsground_jax.rl.parse_box` and `rsground_jax.rl.format_ok` are these functions.

Grammar (whitespace is ASCII: space, tab, newline, carriage return, vertical tab, form feed):
  * the answer block: the last `</answer>` of the text and the last `<answer>` before it; its content is
    `ws* [ ws* N ws* , ws* N ws* , ws* N ws* , ws* N ws* ] ws*`, N a non-negative decimal number
    `[0-9]+(.[0-9]+)?`. Anything else in the content (a sign, a fifth number, words, a second tag) means no
    box. Text after the last `</answer>` does not matter; a text cut before its `</answer>` has no box.
  * the format: the text, less leading and trailing whitespace, is `<think>T</think> ws* <answer>B</answer>`
    with exactly one of each tag and a box in B.

Both are defined on the decoded completion (`tokenizer.decode(ids, skip_special_tokens=True)`), and the
device parser reproduces them from token ids through `TokenBytes`: each token's bytes, reduced to what the
grammar can see (every byte the grammar does not name becomes one "other" byte, and runs of "other" bytes or
of whitespace inside a token shrink to one, which changes no answer), padded to the longest token.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from rsground_jax.errors import UserError

WHITESPACE = " \t\n\r\x0b\x0c"
OPEN, CLOSE = "<answer>", "</answer>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_WS = "[ \\t\\n\\r\\x0b\\x0c]*"
_NUM = "([0-9]+(?:\\.[0-9]+)?)"
_BOX = re.compile(_WS + "\\[" + f"{_WS},{_WS}".join([_WS + _NUM] * 3 + [_NUM + _WS]) + "\\]" + _WS)

# Bytes the grammar names; every other byte reads as OTHER.
GRAMMAR_BYTES = frozenset(b"0123456789.,[]<>/" + b"answerthik" + WHITESPACE.encode())
OTHER = ord("~")
SPACE = ord(" ")
TAG_REACH = len(CLOSE) - 1


class TokenizerGrammarError(UserError, ValueError):
    """A tokenizer whose tokens the on-device answer parser cannot read."""


def parse_box(text) -> tuple[float, float, float, float] | None:
    """(x1, y1, x2, y2) of the last answer block when it holds exactly a box (see the module docstring), else
    None. Never raises: anything that is not such a text gives None. Values are floats (a number too large
    for a float64 gives inf)."""
    try:
        if not isinstance(text, str):
            return None
        close = text.rfind(CLOSE)
        if close < 0:
            return None
        start = text.rfind(OPEN, 0, close)
        if start < 0:
            return None
        m = _BOX.fullmatch(text, start + len(OPEN), close)
        return None if m is None else tuple(float(g) for g in m.groups())
    except Exception:  # noqa: BLE001 - the contract: a reward parser never stops a run
        return None


def format_ok(text) -> bool:
    """True when the text is `<think>...</think> <answer>[x1, y1, x2, y2]</answer>`, up to surrounding
    whitespace, with one tag of each kind and a box by `parse_box`."""
    if not isinstance(text, str):
        return False
    t = text.strip(WHITESPACE)
    if any(t.count(tag) != 1 for tag in (THINK_OPEN, THINK_CLOSE, OPEN, CLOSE)):
        return False
    if not (t.startswith(THINK_OPEN) and t.endswith(CLOSE)):
        return False
    think_close, answer_open = t.find(THINK_CLOSE), t.find(OPEN)
    if not think_close < answer_open:
        return False
    if t[think_close + len(THINK_CLOSE):answer_open].strip(WHITESPACE):
        return False
    return parse_box(t) is not None


def reduce_bytes(data: bytes) -> bytes:
    """A token's bytes as the grammar sees them: unnamed bytes as OTHER (letters too far from a '<', a '>'
    or the token's ends to belong to a tag as well), whitespace as a space, runs of OTHER
    or of spaces as one, and a run of four or more of another non-digit byte c as `c OTHER c` (no tag holds a
    doubled byte and no number a doubled non-digit, so only the run's two ends can take part in a match)."""
    mapped = [SPACE if chr(b) in WHITESPACE else b if b in GRAMMAR_BYTES else OTHER for b in data]
    # A tag's letters lie within TAG_REACH bytes of its '<' or '>', or, for a tag split between tokens, of the
    # token's start or end: other letters can take part in no match.
    anchors = [0, len(mapped) - 1] + [i for i, b in enumerate(mapped) if b in b"<>"]
    mapped = [OTHER if chr(b).isalpha() and min(abs(i - a) for a in anchors) > TAG_REACH else b
              for i, b in enumerate(mapped)]
    out = bytearray()
    i = 0
    while i < len(mapped):
        b, j = mapped[i], i
        while j < len(mapped) and mapped[j] == b:
            j += 1
        run = j - i
        if b in (OTHER, SPACE):
            out.append(b)
        elif run >= 4 and not chr(b).isdigit():
            out += bytes((b, OTHER, b))
        else:
            out += bytes([b] * run)
        i = j
    return bytes(out)


def _byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's `bytes_to_unicode`) inverted: symbol -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, codes)}


def token_bytes(tokenizer, token_id: int, decoder: dict[str, int], special: set[int]) -> bytes:
    """The bytes token `token_id` adds to `decode(ids, skip_special_tokens=True)`."""
    if token_id in special:
        return b""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if piece is None:
        return b""
    if all(ch in decoder for ch in piece):
        return bytes(decoder[ch] for ch in piece)
    return tokenizer.decode([token_id], skip_special_tokens=True).encode("utf-8")  # an added text token


@dataclasses.dataclass(frozen=True)
class TokenBytes:
    """table [vocab, width] uint8: each token's reduced bytes, 0-padded (0 is never a reduced byte)."""

    table: np.ndarray

    @property
    def width(self) -> int:
        return self.table.shape[1]

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int | None = None) -> "TokenBytes":
        """The table of a byte-level BPE tokenizer (Qwen's, the project's small one) for ids below
        `vocab_size` (default: the tokenizer's size; ids past the tokenizer, padding of a model's embedding
        table, read as nothing)."""
        decoder = _byte_decoder()
        special = set(tokenizer.all_special_ids)
        n = len(tokenizer)
        rows = [reduce_bytes(token_bytes(tokenizer, i, decoder, special)) for i in range(n)]
        width = max(1, max(map(len, rows)))
        table = np.zeros((max(n, vocab_size or n), width), np.uint8)
        for i, r in enumerate(rows):
            table[i, :len(r)] = np.frombuffer(r, np.uint8)
        return cls(table)

    def bracket_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(ids of the tokens whose last bracket is '[', ids of those whose last bracket is ']'): the tokens
        that open and close a box `[x1, y1, x2, y2]` (the small tokenizer writes '>[' and ']</')."""
        tb = self.table
        cols = np.arange(tb.shape[1])
        last_open = np.max(np.where(tb == ord("["), cols, -1), axis=1)
        last_close = np.max(np.where(tb == ord("]"), cols, -1), axis=1)
        return (tuple(int(i) for i in np.flatnonzero(last_open > last_close)),
                tuple(int(i) for i in np.flatnonzero(last_close > last_open)))

    def tables(self) -> dict[str, np.ndarray]:
        """Everything the on-device parser reads, per token id (`rewards.parse_completions`):

          bytes [V, W]          the reduced bytes
          nonws_prefix [V, W+1] non-whitespace bytes among the first j
          token_word [V]        packed (`TOKEN_FIELDS`): the byte count, the digit a one-digit token writes,
                                the offsets of the first and last non-whitespace byte, their count
          tag_word [V, S, 2]    packed (`TAG_FIELDS`, `TAG_FIELDS_2`), for each state S of the tag matcher before
                                the token: its state after it, and per tag the completions inside the token and
                                the offsets of their '>' (the first and the last `<answer>`, the last of the others)
          box_next [V, Q]       the box-content automaton's state after the whole token, from each state
          box_bytes [Q, 256]    the same automaton byte by byte (for tokens the content covers in part)

        The matcher and the automaton are lifted from bytes to tokens here, so the device steps through a
        completion token by token. Tokens that write a digit must write nothing else (true of Qwen's and the
        small tokenizer's split rule, which isolates every digit): a digit's place in its number then follows
        from the automaton's state before the token.
        """
        tb = self.table
        V, W = tb.shape
        lens = (tb > 0).sum(1).astype(np.int32)
        is_digit = (tb >= ord("0")) & (tb <= ord("9"))
        if np.any(is_digit.any(1) & (lens != 1)):
            bad = int(np.flatnonzero(is_digit.any(1) & (lens != 1))[0])
            raise TokenizerGrammarError(
                f"token {bad} writes a digit together with other bytes ({bytes(tb[bad])!r}): the on-device answer "
                "parser needs a tokenizer that writes one digit per token (Qwen's pre-tokenizer rule)")
        digit = np.where(is_digit[:, 0] & (lens == 1), tb[:, 0].astype(np.int32) - ord("0"), -1).astype(np.int8)
        solid = (tb > 0) & (tb != SPACE)
        nonws_prefix = np.concatenate([np.zeros((V, 1), np.int32), np.cumsum(solid, 1)], 1).astype(np.int8)
        first_solid = np.where(solid.any(1), solid.argmax(1), -1).astype(np.int8)
        last_solid = np.where(solid.any(1), W - 1 - solid[:, ::-1].argmax(1), -1).astype(np.int8)

        trans, emits = tag_automaton()
        S = trans.shape[0]
        tag_next = np.zeros((V, S), np.uint8)
        tag_count = np.zeros((V, S, len(TAGS)), np.uint8)
        tag_first = np.full((V, S, len(TAGS)), -1, np.int8)
        tag_last = np.full((V, S, len(TAGS)), -1, np.int8)
        for s0 in range(S):
            state = np.full(V, s0, np.int64)
            for j in range(W):
                b = tb[:, j].astype(np.int64)
                live = b > 0
                emit = np.where(live, emits[state, b], -1)
                for i in range(len(TAGS)):
                    hit = emit == i
                    tag_first[hit & (tag_count[:, s0, i] == 0), s0, i] = j
                    tag_last[hit, s0, i] = j
                    tag_count[hit, s0, i] += 1
                state = np.where(live, trans[state, b], state)
            tag_next[:, s0] = state

        box_bytes = box_automaton()
        Q = box_bytes.shape[0]
        box_next = np.zeros((V, Q), np.uint8)
        for q0 in range(Q):
            state = np.full(V, q0, np.int64)
            for j in range(W):
                b = tb[:, j].astype(np.int64)
                state = np.where(b > 0, box_bytes[state, b], state)
            box_next[:, q0] = state
        return {"bytes": tb, "nonws_prefix": nonws_prefix, "box_next": box_next, "box_bytes": box_bytes.astype(np.uint8),
                **packed_fields(lens, digit, first_solid, last_solid, nonws_prefix[:, -1], tag_next, tag_count,
                                tag_first, tag_last)}


TAGS = (OPEN, CLOSE, THINK_OPEN, THINK_CLOSE)


def tag_automaton() -> tuple[np.ndarray, np.ndarray]:
    """The matcher of the four tags, byte by byte: (next state [S, 256], tag completed [S, 256] or -1). States are
    the tags' proper prefixes ('' first); no tag holds a '<' past its first byte, so after a mismatch the match
    can only restart at a '<'."""
    prefixes = sorted({t[:i] for t in TAGS for i in range(len(t))}, key=lambda p: (len(p), p))
    index = {p: i for i, p in enumerate(prefixes)}
    trans = np.zeros((len(prefixes), 256), np.int64)
    emits = np.full((len(prefixes), 256), -1, np.int64)
    for p, s in index.items():
        for b in range(1, 256):
            cand = p + chr(b)
            if cand in TAGS:
                emits[s, b] = TAGS.index(cand)
                trans[s, b] = index[""]
            elif cand in index:
                trans[s, b] = index[cand]
            else:
                trans[s, b] = index["<"] if b == ord("<") else index[""]
    return trans, emits


# The box content `ws* [ ws* N ws* , ... N ws* ] ws*` as an automaton over (phase, k): k numbers written so far.
BOX_PHASES = ("pre", "num_start", "int", "dot", "frac", "after", "done", "fail")


def box_state(phase: str, k: int = 0) -> int:
    return BOX_PHASES.index(phase) * 4 + k


def box_automaton() -> np.ndarray:
    """[Q = 32, 256] next state of the box-content automaton (`box_state`); 'fail' is absorbing."""
    fail = box_state("fail")
    t = np.full((32, 256), fail, np.int64)
    ws, digits = [SPACE], [ord(c) for c in "0123456789"]
    for k in range(4):
        def s(phase, kk=k):
            return box_state(phase, kk)
        for b in ws:
            for phase in ("pre", "num_start", "done"):
                t[s(phase), b] = s(phase)
            for phase in ("int", "frac", "after"):
                t[s(phase), b] = s("after")
        t[s("pre"), ord("[")] = s("num_start")
        for d in digits:
            t[s("num_start"), d] = s("int")
            t[s("int"), d] = s("int")
            t[s("dot"), d] = s("frac")
            t[s("frac"), d] = s("frac")
        t[s("int"), ord(".")] = s("dot")
        for phase in ("int", "frac", "after"):
            if k < 3:
                t[s(phase), ord(",")] = s("num_start", k + 1)
            else:
                t[s(phase), ord("]")] = s("done")
    t[:, 0] = np.arange(32)  # padding leaves the state alone
    return t


# Bit layout of the packed per-token words (`packed_fields`), read by `rewards.parse_completions`: one gather per
# token fetches everything the parser needs about it.
TOKEN_FIELDS = (("len", 6), ("digit", 4), ("is_digit", 1), ("first_solid", 6), ("last_solid", 6), ("solid", 6))
TAG_FIELDS = (("next", 5), ("open_count", 2), ("open_first", 5), ("open_last", 5), ("close_count", 2),
              ("close_last", 5), ("think_open_count", 2), ("think_open_last", 5))
TAG_FIELDS_2 = (("think_close_count", 2), ("think_close_last", 5))


def _pack(fields, values: dict) -> np.ndarray:
    word, shift = 0, 0
    for name, bits in fields:
        v = values[name].astype(np.int64)
        assert v.min() >= 0 and v.max() < 2**bits, (name, v.min(), v.max())
        word = word + (v << shift)
        shift += bits
    assert shift <= 32
    return word.astype(np.uint32)


def unpack_offsets(fields) -> dict[str, tuple[int, int]]:
    """name -> (shift, bits) of a packed layout."""
    out, shift = {}, 0
    for name, bits in fields:
        out[name] = (shift, bits)
        shift += bits
    return out


def packed_fields(lens, digit, first_solid, last_solid, solid, tag_next, tag_count, tag_first, tag_last) -> dict:
    """The tables as packed uint32 words: `token_word` [V] and `tag_word` [V, S, 2] (tag offsets stored
    plus one, 0 meaning none; counts capped at 3)."""
    token = _pack(TOKEN_FIELDS, {"len": lens, "digit": np.maximum(digit, 0), "is_digit": (digit >= 0),
                                 "first_solid": first_solid + 1, "last_solid": last_solid + 1, "solid": solid})
    o, c, to, tc = (TAGS.index(t) for t in (OPEN, CLOSE, THINK_OPEN, THINK_CLOSE))
    cnt = np.minimum(tag_count, 3)
    w1 = _pack(TAG_FIELDS, {"next": tag_next, "open_count": cnt[..., o], "open_first": tag_first[..., o] + 1,
                            "open_last": tag_last[..., o] + 1, "close_count": cnt[..., c],
                            "close_last": tag_last[..., c] + 1, "think_open_count": cnt[..., to],
                            "think_open_last": tag_last[..., to] + 1})
    w2 = _pack(TAG_FIELDS_2, {"think_close_count": cnt[..., tc], "think_close_last": tag_last[..., tc] + 1})
    return {"token_word": token, "tag_word": np.stack([w1, w2], -1)}
