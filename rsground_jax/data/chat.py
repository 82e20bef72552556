"""The Qwen2.5-VL chat layout, tokenized, with the assistant loss mask.

Layout (Qwen2.5-VL's chat template for one image followed by text):

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|image_pad|> x N<|vision_end|>{question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>

`N` = `ImageProcessor.num_image_tokens(h, w)`. The SFT sequence ends at the assistant's `<|im_end|>`
(the template's trailing newline is not a target and is left out). An RL prompt ends after
`<|im_start|>assistant\\n`, where generation starts.

Tokenization: the prompt is tokenized with a single `<|image_pad|>` and that token is expanded to N
copies afterwards (special tokens are atomic, so this equals tokenizing the full text; a test checks it),
and the answer is tokenized on its own and followed by the `<|im_end|>` id (the prompt ends with a
newline, which Qwen's pre-tokenizer always splits after, so this too equals tokenizing the whole text).

Loss mask, **aligned to labels**: `loss_mask[t] = 1` when token `t` is a target, i.e. the logits at
position `t - 1` are trained to predict `input_ids[t]`. The targets are the answer tokens and the closing
`<|im_end|>`. A step computes `logp = log_softmax(logits[:, :-1])`, picks `input_ids[:, 1:]` and weights by
`loss_mask[:, 1:]`; `loss_mask[:, 0]` is always 0.
"""

from __future__ import annotations

import dataclasses
import itertools
import zlib
from typing import Sequence

import numpy as np

from rsground_jax.data.tokenizer import SpecialTokens, special_token_ids
from rsground_jax.models.processor import ImageProcessor

DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_QUESTION = (
    'Locate "{expression}" in the image. First think about where it is inside <think> </think>, '
    "then give its bounding box [x1, y1, x2, y2] in pixels inside <answer> </answer>."
)
# The base model's plain grounding question (no reasoning asked; configs/base_pretrain.py).
BOX_QUESTION = 'Locate "{expression}" and give its box [x1, y1, x2, y2].'


MAX_VARIANT_CHARS = 170  # about 85 tokens of the packaged tokenizer


def box_question_variants() -> tuple[str, ...]:
    """Other phrasings of the plain grounding question, from 6 to about 85 tokens, for training a base model
    whose box reading does not hang on one prompt at one distance from the image.

    Why: a tiny model pretrained on BOX_QUESTION alone reads the box only after exactly that text. Appending
    "Be precise." takes it from 94 % Pr@0.5 to 0 on one-object scenes, so a later recipe that asks in other
    words (the reasoning question, a user's own) starts from a model that cannot ground (docs/base_model.md).
    Each variant is an opener naming the expression, optional context sentences before and after it, and a
    closing request for the box; every combination once, in a fixed order.
    """
    openers = ('Locate "{expression}".', 'Find "{expression}".', 'Where is "{expression}"?',
               'Look for "{expression}" in this aerial image.', 'In the image, find "{expression}".',
               'The expression is "{expression}".')
    before = ("", "An aerial image. ", "This is an overhead image of the ground. ",
              "The image is a top-down view; several objects may share a category. ")
    after = ("", " Its position and size matter.", " Coordinates are pixels from the top left.")
    closers = (" Give its box [x1, y1, x2, y2].", " Answer with [x1, y1, x2, y2].",
               " Reply with its bounding box [x1, y1, x2, y2] in pixels, nothing else.", "")
    combos = (f"{b}{o}{a}{c}" for o, b, a, c in itertools.product(openers, before, after, closers))
    return tuple(q for q in combos if q != BOX_QUESTION and len(q) <= MAX_VARIANT_CHARS)


_LEADINS_FIXED = ("Sure.", "Here is the box.", "Found it.", "Answer:", "Here it is:", "The box:", "In pixels:", "Okay.")
_LEADINS_WITH_EXPRESSION = ("{E}.", "{E}:", "The box of {E}:", "This is {E}.", "I see {E}.", "Located {E}.",
                            "{E}, in pixels:")


def box_answer(box_text: str, expression: str, index: int, leadin_fraction: float) -> str:
    """A plain-box answer that, for a `leadin_fraction` of records, starts with one or two lead-in sentences
    ("Sure.", "The box of the first airplane from the right:") and a newline before the box; no reasoning.
    The draw is fixed per (record index, expression).

    Why: a base pretrained only on answers that begin with the box reads a box only right after the assistant
    turn's start, so CoT-SFT spends its steps teaching it to read one after the reasoning (docs/base_model.md,
    session 10). Real Qwen2.5-VL has seen boxes after text."""
    if leadin_fraction <= 0:  # the bare box, without seeding a generator per record
        return box_text
    rng = np.random.default_rng([index, zlib.crc32(expression.encode())])
    if not rng.random() < leadin_fraction:
        return box_text
    e = expression.strip().rstrip(".")
    e = e[:1].lower() + e[1:]
    parts = []
    for _ in range(int(rng.integers(1, 3))):
        if rng.random() < 0.6:
            t = _LEADINS_WITH_EXPRESSION[int(rng.integers(len(_LEADINS_WITH_EXPRESSION)))]
        else:
            t = _LEADINS_FIXED[int(rng.integers(len(_LEADINS_FIXED)))]
        t = t.replace("{E}", e)
        parts.append(t[:1].upper() + t[1:])
    return " ".join(parts) + "\n" + box_text


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """System prompt (None: no system turn) and the user question around the expression."""

    system: str | None = DEFAULT_SYSTEM
    question: str = DEFAULT_QUESTION
    # Further phrasings, for training only: an SFT plan gives each record one of `questions` (drawn with
    # its seed, fixed across epochs). Prompts for generation use `question`.
    question_variants: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "question_variants", tuple(self.question_variants))
        for q in self.questions:
            if "{expression}" not in q:
                raise ValueError(f"ChatTemplate question must contain '{{expression}}', got {q!r}")

    @property
    def questions(self) -> tuple[str, ...]:
        """`question` first, then the variants."""
        return (self.question, *self.question_variants)

    def prompt_text(self, expression: str, variant: int = 0) -> str:
        """The prompt with a single `<|image_pad|>`, ending where the assistant starts; `variant` indexes
        `questions`."""
        system = f"<|im_start|>system\n{self.system}<|im_end|>\n" if self.system is not None else ""
        question = self.questions[variant].format(expression=expression)
        return f"{system}<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"


def prompt_spec(template: ChatTemplate, max_pixels: int, answer_style: str) -> dict:
    """How a model is prompted, as a model directory's rsground_prompt.json holds it."""
    return {"system": template.system, "question": template.question, "max_pixels": int(max_pixels),
            "answer_style": answer_style}


def prompt_from_spec(spec: dict):
    """(ChatTemplate, ImageProcessor, answer style) of a `prompt_spec` dict."""
    return (ChatTemplate(system=spec["system"], question=spec["question"]),
            ImageProcessor(max_pixels=spec["max_pixels"]), spec["answer_style"])


@dataclasses.dataclass(frozen=True)
class EncodedChat:
    """Token ids with ONE `<|image_pad|>` placeholder at `image_pos`; `target_start` = first target index."""

    ids: np.ndarray  # int32
    image_pos: int
    target_start: int  # == len(ids) for a prompt

    def length(self, num_image_tokens: int) -> int:
        return len(self.ids) - 1 + num_image_tokens


class ChatEncoder:
    """Tokenizes prompts and SFT conversations for one tokenizer and template."""

    def __init__(self, tokenizer, template: ChatTemplate = ChatTemplate()):
        self.tokenizer = tokenizer
        self.template = template
        self.specials: SpecialTokens = special_token_ids(tokenizer)

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _placeholder(self, ids: list[int]) -> int:
        pos = [i for i, t in enumerate(ids) if t == self.specials.image_pad]
        if len(pos) != 1:
            raise ValueError(f"expected exactly one <|image_pad|> in the prompt, found {len(pos)}: the expression or template contains the token")
        return pos[0]

    def encode_prompts(self, expressions: Sequence[str], variants: Sequence[int] | None = None) -> list[EncodedChat]:
        """`variants`: per expression, the index into `template.questions` (None: the main question)."""
        variants = [0] * len(expressions) if variants is None else list(variants)
        if len(variants) != len(expressions):
            raise ValueError(f"{len(expressions)} expressions but {len(variants)} question variants")
        out = []
        for ids in self._encode([self.template.prompt_text(e, v) for e, v in zip(expressions, variants)]):
            out.append(EncodedChat(np.asarray(ids, np.int32), self._placeholder(ids), len(ids)))
        return out

    def encode_sft(self, expressions: Sequence[str], answers: Sequence[str],
                   variants: Sequence[int] | None = None) -> list[EncodedChat]:
        if len(expressions) != len(answers):
            raise ValueError(f"{len(expressions)} expressions but {len(answers)} answers")
        prompts = self.encode_prompts(expressions, variants)
        out = []
        for p, a in zip(prompts, self.encode_targets(answers)):
            out.append(EncodedChat(np.concatenate([p.ids, a]), p.image_pos, len(p.ids)))
        return out

    def encode_targets(self, answers: Sequence[str]) -> list[np.ndarray]:
        """The assistant turn after a prompt: each answer's ids and <|im_end|> (int32)."""
        end = np.asarray([self.specials.im_end], np.int32)
        return [np.concatenate([np.asarray(a, np.int32), end]) for a in self._encode(answers)]


def expand_image_tokens(chat: EncodedChat, num_image_tokens: int, image_pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, loss_mask) with the placeholder expanded to `num_image_tokens` copies; int32 both."""
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    p = chat.image_pos
    ids = np.concatenate([chat.ids[:p], np.full(num_image_tokens, image_pad, np.int32), chat.ids[p + 1 :]])
    mask = np.zeros(len(ids), np.int32)
    mask[chat.target_start - 1 + num_image_tokens :] = 1
    return ids, mask
