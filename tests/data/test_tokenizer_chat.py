"""Tokenizers (real Qwen vocabulary, the project's small one) and the chat layout with its loss mask."""

from __future__ import annotations

import numpy as np
import pytest

from rsground_jax.data.chat import ChatEncoder, ChatTemplate, expand_image_tokens
from rsground_jax.data.tokenizer import (
    SMALL_TOKENIZER_DIR,
    build_small_tokenizer,
    load_small_tokenizer,
    load_tokenizer,
    special_token_ids,
)

ANSWER = "<think>The image is 812x812 pixels. 'upper left' means x 0-271, y 0-271.</think><answer>[102, 203, 305, 406]</answer>"


def test_qwen_vocabulary_special_ids_and_digits(qwen_tokenizer):
    tok = qwen_tokenizer
    assert tok.encode("<|image_pad|>", add_special_tokens=False) == [151655]
    s = special_token_ids(tok)
    assert (s.pad, s.im_start, s.im_end, s.vision_start, s.vision_end, s.image_pad, s.video_pad) == (151643, 151644, 151645, 151652, 151653, 151655, 151656)
    # Qwen2.5-VL has no <think> token: it is plain text there.
    assert s.think_start is None and len(tok.encode("<think>", add_special_tokens=False)) > 1
    ids = tok.encode("[1024, 37]", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids) == ["[", "1", "0", "2", "4", ",", "Ġ", "3", "7", "]"]
    assert tok.decode(tok.encode(ANSWER, add_special_tokens=False)) == ANSWER


def test_qwen3_flavour_keeps_think_tokens():
    s = special_token_ids(load_tokenizer("qwen3"))
    assert (s.think_start, s.think_end) == (151667, 151668)
    assert s.image_pad == 151655


def test_small_tokenizer_is_hf_format_with_its_own_specials(small_tokenizer):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    assert sorted(p.name for p in SMALL_TOKENIZER_DIR.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    for loaded in (AutoTokenizer.from_pretrained(SMALL_TOKENIZER_DIR), PreTrainedTokenizerFast.from_pretrained(SMALL_TOKENIZER_DIR)):
        assert loaded.encode(ANSWER) == small_tokenizer.encode(ANSWER)
    s = special_token_ids(small_tokenizer)
    assert s.vocab_size == len(small_tokenizer) < 4096
    ids = {s.pad, s.im_start, s.im_end, s.vision_start, s.vision_end, s.image_pad, s.video_pad, s.think_start, s.think_end}
    assert None not in ids and len(ids) == 9 and max(ids) < s.vocab_size
    assert small_tokenizer.eos_token == "<|im_end|>" and small_tokenizer.pad_token_id == s.pad
    toks = small_tokenizer.convert_ids_to_tokens(small_tokenizer.encode("[1024, 37]"))
    assert [t for t in toks if t.isdigit()] == ["1", "0", "2", "4", "3", "7"]
    # The synthetic texts are short; anything else still encodes (byte level) and decodes back.
    assert len(small_tokenizer.encode(ANSWER)) < 60
    other = "Le réservoir à gauche du navire — 東京 🚢"
    assert small_tokenizer.decode(small_tokenizer.encode(other)) == other
    # <think> is atomic but not "special": skip_special_tokens keeps it (reward parsing sees it).
    assert small_tokenizer.decode(small_tokenizer.encode("<think>a</think><|im_end|>"), skip_special_tokens=True) == "<think>a</think>"


def test_build_small_tokenizer(tmp_path):
    tok = build_small_tokenizer(tmp_path / "tok", ["the ship in the upper left [12, 34, 56, 78]"] * 20, vocab_size=300)
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    s = special_token_ids(tok)
    assert s.image_pad == 5 and s.pad == 0 and s.think_start is not None
    assert load_tokenizer(str(tmp_path / "tok")).encode("the ship") == tok.encode("the ship")


def test_special_token_ids_rejects_a_tokenizer_without_them(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match=r"does not encode '<\|endoftext\|>' as one token"):
        special_token_ids(PreTrainedTokenizerFast(tokenizer_object=t))


@pytest.mark.parametrize("which", ["small", "qwen"])
def test_chat_tokens_equal_tokenizing_the_whole_text(which, small_tokenizer, qwen_tokenizer):
    tok = small_tokenizer if which == "small" else qwen_tokenizer
    enc = ChatEncoder(tok)
    expr = "the second storage tank from the top"
    (chat,) = enc.encode_sft([expr], [ANSWER])
    n = 37
    ids, mask = expand_image_tokens(chat, n, enc.specials.image_pad)
    full = enc.template.prompt_text(expr).replace("<|image_pad|>", "<|image_pad|>" * n) + ANSWER + "<|im_end|>"
    assert ids.tolist() == tok.encode(full, add_special_tokens=False)
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    # Loss mask aligned to labels: exactly the answer and the closing <|im_end|>.
    assert tok.decode(ids[mask == 1]) == ANSWER + "<|im_end|>"
    first = int(np.argmax(mask))
    assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")
    assert mask[first:].all() and not mask[:first].any()
    assert (ids == enc.specials.image_pad).sum() == n
    assert chat.length(n) == len(ids)
    (prompt,) = enc.encode_prompts([expr])
    pids, pmask = expand_image_tokens(prompt, n, enc.specials.image_pad)
    assert pids.tolist() == ids[:first].tolist() and not pmask.any()


def test_chat_layout_is_qwen2_5_vl():
    text = ChatTemplate().prompt_text("the ship")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")
    assert text.endswith('<|im_end|>\n<|im_start|>assistant\n') and '"the ship"' in text
    assert ChatTemplate(system=None).prompt_text("x").startswith("<|im_start|>user\n")
    with pytest.raises(ValueError, match="must contain"):
        ChatTemplate(question="no placeholder")


def test_expression_containing_the_image_token_is_rejected(small_tokenizer):
    with pytest.raises(ValueError, match="exactly one <\\|image_pad\\|>"):
        ChatEncoder(small_tokenizer).encode_prompts(["the <|image_pad|> ship"])


def test_shipped_small_tokenizer_matches_a_rebuild(tmp_path):
    """The shipped copy is what `build_small_tokenizer(default_small_corpus())` produces today, so CoT
    phrasing changes cannot silently leave the shipped vocabulary stale."""
    from rsground_jax.data.tokenizer import default_small_corpus

    build_small_tokenizer(tmp_path / "tok", default_small_corpus(400))
    rebuilt = load_small_tokenizer(tmp_path / "tok")
    shipped = load_small_tokenizer()
    assert rebuilt.get_vocab() == shipped.get_vocab()


def _transformers_twin(name: str):
    """The same tokenizer as transformers loads it (the reference for `TextTokenizer`)."""
    import json

    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from rsground_jax.data.tokenizer import QWEN25_LAST_ADDED_ID, qwen_tokenizer_dir
    from rsground_jax.models.model_dir import BASE_MODEL_DIR

    if name == "small":
        return AutoTokenizer.from_pretrained(SMALL_TOKENIZER_DIR)
    if name == "base model":
        return AutoTokenizer.from_pretrained(BASE_MODEL_DIR)
    data = json.loads((qwen_tokenizer_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    if name == "qwen2.5":
        data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] <= QWEN25_LAST_ADDED_ID]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("name", ["small", "base model", "qwen2.5", "qwen3"])
def test_text_tokenizer_gives_transformers_results(name, rng):
    """`TextTokenizer` (the `tokenizers` library alone) against transformers' tokenizer of the same files, on
    texts drawn afresh from words, digits, boxes, specials, <think> tags, accents, CJK, emoji and whitespace:
    ids (one text, a batch), decoding with and without the specials, tokens, special ids, sizes."""
    from rsground_jax.models.model_dir import BASE_MODEL_DIR

    ours = load_tokenizer({"base model": str(BASE_MODEL_DIR)}.get(name, name))
    ref = _transformers_twin(name)
    pieces = ["the", " ship", " storage tank", " left", " of", "Le réservoir", " 東京", " 🚢", "  ", "\n", "\t",
              "<think>", "</think>", "<answer>", "<|im_end|>", "<|im_start|>", "<|image_pad|>", "<|endoftext|>",
              " don't", " .", " ,", "'s", "[", "]", ", "]
    texts = []
    for _ in range(40):
        parts = [pieces[i] if rng.random() < 0.7 else str(rng.integers(0, 10 ** int(rng.integers(1, 5))))
                 for i in rng.integers(0, len(pieces), size=int(rng.integers(1, 25)))]
        texts.append("".join(parts))
    assert len(ours) == len(ref) and ours.all_special_ids == ref.all_special_ids
    assert (ours.eos_token, ours.eos_token_id, ours.pad_token, ours.pad_token_id) == (
        ref.eos_token, ref.eos_token_id, ref.pad_token, ref.pad_token_id)
    assert ours(texts, add_special_tokens=False)["input_ids"] == ref(texts, add_special_tokens=False)["input_ids"]
    for text in texts:
        ids = ref.encode(text, add_special_tokens=False)
        assert ours.encode(text, add_special_tokens=False) == ids and ours.encode(text) == ref.encode(text), text
        assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), (text, skip)
    some = [int(i) for i in rng.integers(0, len(ref), size=200)]
    assert ours.convert_ids_to_tokens(some) == ref.convert_ids_to_tokens(some)
    assert ours.batch_decode([some[:50], some[50:]], skip_special_tokens=True) == ref.batch_decode(
        [some[:50], some[50:]], skip_special_tokens=True)
    if name != "qwen3":  # 151k entries twice: the smaller vocabularies show the same thing
        assert ours.get_vocab() == ref.get_vocab()


def test_text_tokenizer_saves_a_folder_transformers_loads(tmp_path, small_tokenizer):
    from transformers import AutoTokenizer

    small_tokenizer.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again.encode(ANSWER) == small_tokenizer.encode(ANSWER)
    assert again.all_special_ids == small_tokenizer.all_special_ids
    assert load_tokenizer(str(tmp_path / "tok")).get_vocab() == small_tokenizer.get_vocab()


@pytest.mark.parametrize("forced", [False, True], ids=["bpe", "bpe-forced"])
def test_text_tokenizer_cleans_up_spaces_as_transformers_does(tmp_path, small_tokenizer, rng, forced):
    """A folder whose tokenizer_config.json asks for `clean_up_tokenization_spaces` (older releases do): decoding
    gives what transformers' tokenizer of the same folder gives. transformers 5 ignores the request for a BPE
    model (this one) unless the config forces it, and then drops the spaces before punctuation and contractions."""
    import json

    from transformers import AutoTokenizer

    small_tokenizer.save_pretrained(tmp_path / "tok")
    config_file = tmp_path / "tok" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["clean_up_tokenization_spaces"] = True
    if forced:
        config["clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"] = True
    config_file.write_text(json.dumps(config))
    ours, ref = load_tokenizer(str(tmp_path / "tok")), AutoTokenizer.from_pretrained(tmp_path / "tok")
    pieces = [" the", " ship", " .", " ,", " ?", " !", " 's", " n't", " 'm", " 've", " 're", " do", " not", "[", "]"]
    cleaned = 0
    for _ in range(40):
        text = "".join(pieces[i] for i in rng.integers(0, len(pieces), size=int(rng.integers(1, 20))))
        ids = ref.encode(text, add_special_tokens=False)
        got = ours.decode(ids, skip_special_tokens=True)
        assert got == ref.decode(ids, skip_special_tokens=True), text
        cleaned += got != ref.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert (cleaned > 10) if forced else (cleaned == 0)  # the clean-up acted on these texts, or was ignored
