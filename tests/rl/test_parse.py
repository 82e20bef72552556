"""The on-device answer parser equals the host reference `parse_box` (and `format_ok`) on 10,000 generated
completions, well-formed and malformed, through the real tokenizers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsground_jax.data.tokenizer import load_qwen_tokenizer, load_small_tokenizer
from rsground_jax.rl import format_ok, parse_box
from rsground_jax.data.answers import TokenBytes, reduce_bytes
from rsground_jax.rl.rewards import parse_completions

WS = [" ", "", "", "  ", "\n", "\t", " \n ", "\r\n"]


def _number(rng) -> str:
    kind = rng.integers(30)
    if kind == 0:
        return "-" + str(rng.integers(0, 500))
    if kind == 1:
        return f"{rng.integers(0, 500)}.{rng.integers(0, 1000)}"
    if kind == 2:
        return "".join(rng.choice(list("0123456789"), int(rng.integers(7, 45))))  # many digits
    if kind == 3:
        return rng.choice(["12.", ".5", "1.2.3", "1e3", "0x1f", "", "½", "٣"])
    if kind == 4:
        return "0" * int(rng.integers(1, 4)) + str(rng.integers(0, 99))
    return str(rng.integers(0, 1000))


def _box(rng) -> str:
    n = int(rng.choice([4, 4, 4, 4, 3, 5]))
    nums = [rng.choice(WS) + _number(rng) + rng.choice(WS) for _ in range(n)]
    sep = "," if rng.random() > 0.05 else rng.choice([";", " ", ",,"])
    inner = sep.join(nums)
    left, right = ("[", "]") if rng.random() > 0.08 else tuple(rng.choice(["(", ")", "", "[[", "]]"], 2))
    return rng.choice(WS) + left + inner + right + rng.choice(WS)


def _text(rng) -> str:
    think = rng.choice(["<think>The storage tank is at the lower left.</think>", "<think>x</think>", "",
                        "<think>no close", "</think>", "<think></think>", "<think><think>a</think>"])
    answer = "<answer>" + _box(rng) + "</answer>"
    r = rng.random()
    if r < 0.06:
        answer = answer.replace("</answer>", "")  # never closed
    elif r < 0.12:
        answer = answer.replace("<answer>", "")
    elif r < 0.2:
        answer = answer + rng.choice(WS) + "<answer>" + _box(rng) + "</answer>"  # two answers
    elif r < 0.25:
        answer = answer.replace("</answer>", " done</answer>")  # text after the box, inside
    elif r < 0.3:
        answer = answer + rng.choice([" The end.", "</answer>", "<answer>", " [1, 2, 3, 4]"])  # after the block
    elif r < 0.34:
        answer = "<answer>" + answer
    elif r < 0.37:
        answer = answer.replace("<answer>", "<answer >")
    text = rng.choice(WS) + think + rng.choice(WS) + answer + rng.choice(WS)
    if rng.random() < 0.1:  # cut anywhere
        text = text[: int(rng.integers(0, len(text) + 1))]
    if rng.random() < 0.03:
        text = "".join(rng.choice(list("<>/[],.0123456789 answerthik\n~é"), int(rng.integers(0, 60))))
    return text


def _check(tokenizer, texts, rng):
    tb = TokenBytes.from_tokenizer(tokenizer)
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    T = max(map(len, ids)) + 1
    tokens = np.full((len(ids), T), 0, np.int32)
    lengths = np.zeros(len(ids), np.int32)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, x in enumerate(ids):
        if rng.random() < 0.3:  # an end token, and padding past the length, as the sampler writes them
            x = x + [eos]
        tokens[i, : len(x)] = x
        lengths[i] = len(x) if rng.random() > 0.1 else int(rng.integers(0, len(x) + 1))  # a truncated completion
    fn = jax.jit(parse_completions)
    out = jax.device_get(fn(jnp.asarray(tokens), jnp.asarray(lengths), jax.tree.map(jnp.asarray, tb.tables())))
    found = formatted = 0
    for i in range(len(ids)):
        text = tokenizer.decode(tokens[i, : lengths[i]], skip_special_tokens=True)
        ref = parse_box(text)
        assert bool(out["has_box"][i]) == (ref is not None), (text, ref)
        if ref is not None:
            found += 1
            with np.errstate(over="ignore"):  # a number past float32's range is inf on both sides
                want = np.asarray(ref, np.float32)
            np.testing.assert_allclose(out["box"][i], want, rtol=1e-5, err_msg=text)
        assert bool(out["format"][i]) == format_ok(text), text
        formatted += format_ok(text)
    assert formatted > len(texts) // 20
    return found


def test_device_parser_equals_parse_box_on_10000_cases():
    rng = np.random.default_rng(20261206)
    texts = [_text(rng) for _ in range(10_000)]
    small, qwen = load_small_tokenizer(), load_qwen_tokenizer()
    found = _check(small, texts[:8000], rng) + _check(qwen, texts[8000:], rng)
    assert 2000 < found < 8000  # both outcomes are well represented


def test_parse_box_reference():
    assert parse_box("<think>a</think><answer>[1, 2, 3, 4]</answer>") == (1.0, 2.0, 3.0, 4.0)
    assert parse_box("<answer>\n [ 1.5 ,2,\t3, 4 ]\n</answer> trailing") == (1.5, 2.0, 3.0, 4.0)
    assert parse_box("<answer>[1,2,3,4]</answer><answer>[5,6,7,8]</answer>") == (5.0, 6.0, 7.0, 8.0)
    for bad in ["<answer>[1,2,3]</answer>", "<answer>[1,2,3,4,5]</answer>", "<answer>[-1,2,3,4]</answer>",
                "<answer>[1,2,3,4]", "[1,2,3,4]", "<answer>[1,2,3,4] ok</answer>", "<answer>[1.,2,3,4]</answer>",
                "<answer>[1,2,3,4]</answer>x</answer>", None, 5, "<answer>[1,\u00a02,3,4]</answer>"]:
        assert parse_box(bad) is None, bad
    assert format_ok(" <think>a</think>\n<answer>[1,2,3,4]</answer>\n")
    assert not format_ok("<think>a</think>b<answer>[1,2,3,4]</answer>")
    assert not format_ok("<answer>[1,2,3,4]</answer>")


@pytest.mark.parametrize("raw,reduced", [(b"  \n\t", b" "), (b"////////", b"/~/"), (b"\xc3\xa9x", b"~"),
                                         (b"<answer>", b"<answer>"), (b"1111", b"1111")])
def test_reduced_token_bytes(raw, reduced):
    assert reduce_bytes(raw) == reduced
