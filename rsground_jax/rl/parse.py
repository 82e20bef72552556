"""The answer grammar on the host (numpy only): the reference box parser and format check, and the per-token
byte table the on-device parser (`rewards.parse_completions`) reads.

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
