"""transformers image-text-to-text family (LLaVA-1.5, Qwen2-VL, SmolVLM, BLIP-2): the paper's "vlm+llm" kind.

One code path for every architecture: ``AutoProcessor`` + ``AutoModelForImageTextToText`` (transformers 5
maps llava, qwen2_vl, smolvlm, idefics3 and blip-2 there), the processor's chat template when it has one,
and greedy ``generate`` for a free-text answer. When the person gives candidate labels, or the question
lists options ("Is this a cat or a dog?"), every label is scored instead by the length-normalised
log-likelihood of the label as the assistant's answer; ``label_scores`` is the softmax of those scores.

What differs between architectures is data, in :data:`ARCHITECTURES`: a model class where the Auto class
is not the right entry point, the plain prompt used when a processor has no chat template, and the modules
kept full precision by default. With ``quantize`` on (the default) the model loads nf4 through
``BitsAndBytesConfig`` (float32 compute on CPU, bf16 on CUDA) and the card lists the linear layers that
stayed full precision (``lm_head`` at least).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from PIL import Image

from backends.base import Backend, BackendError, ModelReply
from backends.devices import resolve_placement
from backends.labels import labels_from_question
from backends.messages import vqa_prompt
from backends.quantize import (
    QUANT_TYPE,
    bnb_config,
    count_4bit_layers,
    cpu_incompatible_linear_names,
    full_precision_linear_names,
    memory_footprint_bytes,
    summarize_names,
)

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ArchSpec:
    """Per-architecture facts (keyed by ``config.model_type``)."""

    #: transformers class name to load with; None means ``AutoModelForImageTextToText``.
    model_class: str | None = None
    #: Prompt when the processor has no chat template; ``{image_token}`` and ``{question}`` are filled in.
    prompt: str = "{image_token}{question}"
    #: Module-name patterns kept full precision in 4-bit; None keeps transformers' defaults (``lm_head``).
    skip_modules: tuple[str, ...] | None = None
    #: Whether the plain prompt gets the shared answer instruction (``backends.messages.vqa_prompt``).
    instruction: bool = True


#: Architectures the family knows; any other image-text-to-text model uses :data:`DEFAULT_ARCH`.
ARCHITECTURES: dict[str, ArchSpec] = {
    "llava": ArchSpec(prompt="USER: {image_token}\n{question} ASSISTANT:"),
    "qwen2_vl": ArchSpec(
        prompt="<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "smolvlm": ArchSpec(prompt="<|im_start|>User:{image_token}{question}<end_of_utterance>\nAssistant:"),
    "idefics3": ArchSpec(prompt="<|begin_of_text|>User:{image_token}{question}<end_of_utterance>\nAssistant:"),
    # BLIP-2's processor inserts the query-token placeholders itself; OPT has no chat template.
    "blip-2": ArchSpec(
        model_class="Blip2ForConditionalGeneration", prompt="Question: {question} Answer:", instruction=False
    ),
}
DEFAULT_ARCH = ArchSpec()


def _skeleton(model_class: Any, config: Any) -> Any:
    """The model built on the ``meta`` device (no memory, no weights): its layer names and shapes."""
    import torch

    with torch.device("meta"):
        if hasattr(model_class, "from_config"):  # an Auto class
            return model_class.from_config(config)
        return model_class(config)


def softmax_ranking(scores: Sequence[float], labels: Sequence[str]) -> list[tuple[str, float]]:
    """Softmax of per-label scores, sorted best first (the postprocess step, testable without a model)."""
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (len(labels),):
        raise ValueError(f"{values.shape} scores for {len(labels)} labels")
    probs = np.exp(values - values.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    return [(labels[i], float(probs[i])) for i in order]


class HFVisionBackend(Backend):
    """A transformers image-text-to-text model answering in free text or ranking labels.

    Options (preset keys, besides the base ones ``model_id``, ``quantize``, ``device``, ``cost``,
    ``licence``):

    - ``model_id``: hub id or local folder (``"llava-hf/llava-1.5-7b-hf"``,
      ``"Qwen/Qwen2-VL-2B-Instruct"``, ``"HuggingFaceTB/SmolVLM-256M-Instruct"``, ``"Salesforce/blip2-opt-2.7b"``).
    - ``max_new_tokens``: longest free-text answer (default 32).
    - ``system_prompt``: an optional system turn (chat-template models only).
    - ``prompt_template``: a plain prompt with ``{image_token}`` and ``{question}`` to use instead of the
      chat template (the question then already carries the shared instruction).
    - ``skip_modules``: module-name patterns kept full precision in 4-bit (``lm_head`` always is), e.g.
      ``["vision_tower", "multi_modal_projector"]``.
    - ``score_batch_size``: labels scored per forward pass (default 4).
    - ``processor_kwargs``: passed to ``AutoProcessor.from_pretrained``; e.g. for Qwen2-VL
      ``{"size": {"shortest_edge": 3136, "longest_edge": 1003520}}`` caps the image at about 1M pixels
      (Qwen's processor reads these two as pixel counts), i.e. at most 1280 image tokens.
    - ``revision``, ``cache_dir``: passed to ``from_pretrained``.
    """

    kind = "vlm+llm"
    family = "hf_vision"

    def __init__(
        self,
        name: str,
        *,
        model_id: str,
        max_new_tokens: int = 32,
        system_prompt: str | None = None,
        prompt_template: str | None = None,
        skip_modules: Sequence[str] | None = None,
        score_batch_size: int = 4,
        processor_kwargs: Mapping[str, Any] | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        **base: Any,
    ) -> None:
        super().__init__(name, model_id=model_id, **base)
        self.model_id = model_id
        self.max_new_tokens = int(max_new_tokens)
        self.system_prompt = system_prompt
        self.prompt_template = prompt_template
        self.skip_modules = list(skip_modules) if skip_modules is not None else None
        self.score_batch_size = max(1, int(score_batch_size))
        self.processor_kwargs = dict(processor_kwargs or {})
        self.revision = revision
        self.cache_dir = cache_dir
        self.arch = DEFAULT_ARCH
        self._model: Any = None
        self._processor: Any = None
        self._device = "cpu"
        self._dtype: "torch.dtype | None" = None
        self._accepts_logits_to_keep = False

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        import transformers

        placement = resolve_placement(self.requested_device)
        hub = {"revision": self.revision, "cache_dir": self.cache_dir}
        try:
            config = transformers.AutoConfig.from_pretrained(self.model_id, **hub)
        except (OSError, ValueError) as exc:
            raise BackendError(
                f"could not find model {self.model_id}: {str(exc).splitlines()[0][:300]} "
                "(not cached and the hub is unreachable, or not a model folder)"
            ) from exc
        self.arch = ARCHITECTURES.get(config.model_type, DEFAULT_ARCH)
        model_class = (
            getattr(transformers, self.arch.model_class)
            if self.arch.model_class
            else transformers.AutoModelForImageTextToText
        )
        kwargs: dict[str, Any] = {"dtype": placement.compute_dtype, "device_map": {"": placement.device}, **hub}
        if self.quantize:
            skips = self.skip_modules if self.skip_modules is not None else self.arch.skip_modules
            if not placement.is_cuda:
                incompatible = [re.escape(n) for n in cpu_incompatible_linear_names(_skeleton(model_class, config))]
                skips = [*(skips or []), *incompatible] if incompatible else skips
            kwargs["quantization_config"] = bnb_config(placement, skip_modules=skips)
        # The processor first: it is cheap, and a broken one should fail before gigabytes of weights load.
        self._processor = transformers.AutoProcessor.from_pretrained(self.model_id, **hub, **self.processor_kwargs)
        model = model_class.from_pretrained(self.model_id, **kwargs)
        model.eval()
        self._model = model
        self._device = placement.device
        self._dtype = placement.compute_dtype
        self._accepts_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        quantized = count_4bit_layers(model)
        self.info.device = placement.device
        self.info.quantization = (
            f"{QUANT_TYPE} (bitsandbytes), {quantized} linear layers, compute {placement.compute_dtype_name}"
            if quantized
            else f"none ({placement.compute_dtype_name})"
        )
        self.info.full_precision_layers = summarize_names(full_precision_linear_names(model)) if quantized else []
        self.info.memory_bytes = memory_footprint_bytes(model)
        if quantized and not placement.is_cuda:
            self._warm_up()

    def _warm_up(self) -> None:
        """One forward pass while the load lock is held: bitsandbytes repacks each 4-bit weight for its
        CPU kernel on the layer's first call, in place, which must not race between two questions."""
        import torch

        inputs = self._inputs(Image.new("RGB", (64, 64), (128, 128, 128)), self.build_prompt("warm up"))
        extra = {"logits_to_keep": 1} if self._accepts_logits_to_keep else {}
        with torch.inference_mode():
            self._model(**inputs, use_cache=False, **extra)

    # ---------------------------------------------------------------- prompting
    @property
    def tokenizer(self) -> Any:
        return getattr(self._processor, "tokenizer", self._processor)

    def build_prompt(self, question: str, labels: Sequence[str] | None = None, image: Image.Image | None = None) -> str:
        """The text the processor receives.

        With a chat template (and no ``prompt_template`` option): the shared VQA prompt of
        :func:`backends.messages.vqa_prompt` (one user turn: the image, the question and the instruction
        that every generative family uses, the options listed when there are labels), rendered with the
        generation prompt. Otherwise the architecture's plain prompt, with that instruction when the
        architecture takes one (BLIP-2 does not: it was trained on ``Question: ... Answer:``).
        """
        if self.prompt_template is None and getattr(self._processor, "chat_template", None):
            prompt = vqa_prompt(question, image or Image.new("RGB", (1, 1)), labels, system=self.system_prompt)
            return self._processor.apply_chat_template(
                prompt.to_hf_messages(), add_generation_prompt=True, tokenize=False
            )
        text = question.strip()
        if self.arch.instruction:
            text = vqa_prompt(text, None, labels).messages[-1].text
        template = self.prompt_template or self.arch.prompt
        image_token = getattr(self._processor, "image_token", "") or ""
        return template.format(image_token=image_token, question=text)

    def _inputs(self, image: Image.Image, prompt: str) -> dict[str, "torch.Tensor"]:
        """Processor output on the model's device; floating tensors in the compute dtype."""
        batch = self._processor(images=image.convert("RGB"), text=prompt, return_tensors="pt")
        return {
            key: value.to(self._device, dtype=self._dtype) if value.is_floating_point() else value.to(self._device)
            for key, value in batch.items()
            if hasattr(value, "to")
        }

    def _pad_id(self) -> int:
        tokenizer = self.tokenizer
        for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    # ---------------------------------------------------------------- answering
    def _answer(self, image: Image.Image, question: str, labels: list[str] | None) -> ModelReply:
        if self._model is None:
            raise BackendError(f"{self.name} is not loaded")
        candidates = labels or labels_from_question(question)
        prompt = self.build_prompt(question, candidates, image)
        inputs = self._inputs(image, prompt)
        if candidates:
            ranked = softmax_ranking(self.label_log_likelihoods(inputs, prompt, candidates), candidates)
            return ModelReply(text=ranked[0][0], label_scores=ranked)
        return ModelReply(text=self._generate(inputs))

    def _generate(self, inputs: dict[str, "torch.Tensor"]) -> str:
        import torch

        with torch.inference_mode():
            output = self._model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=self._pad_id()
            )
        prompt_ids = inputs["input_ids"]
        length = prompt_ids.shape[1]
        # Decoder-only models return prompt + answer; some encoder-decoder setups return the answer only.
        if output.shape[1] >= length and torch.equal(output[:, :length].to(prompt_ids.device), prompt_ids):
            output = output[:, length:]
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)[0].strip()

    def answer_token_ids(self, prompt: str, label: str) -> list[int]:
        """Token ids of ``label`` as the answer that follows ``prompt`` (tokenised in context, so a
        leading space merges the way the model saw it in training)."""
        separator = "" if not prompt or prompt[-1].isspace() else " "
        tokenizer = self.tokenizer
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(prompt + separator + label, add_special_tokens=False)["input_ids"]
        common = 0
        for a, b in zip(prompt_ids, full_ids):
            if a != b:
                break
            common += 1
        ids = list(full_ids[common:])
        return ids or list(tokenizer(label, add_special_tokens=False)["input_ids"])

    def label_log_likelihoods(
        self, inputs: dict[str, "torch.Tensor"], prompt: str, labels: Sequence[str]
    ) -> list[float]:
        """Mean log-probability per token of each label as the answer to the processed prompt ``inputs``
        (batch of one). Labels are scored ``score_batch_size`` at a time, right-padded."""
        label_ids = [self.answer_token_ids(prompt, label) for label in labels]
        scores: list[float] = []
        for start in range(0, len(labels), self.score_batch_size):
            scores.extend(self._score_batch(inputs, label_ids[start : start + self.score_batch_size]))
        return scores

    def _score_batch(self, inputs: dict[str, "torch.Tensor"], label_ids: list[list[int]]) -> list[float]:
        import torch

        prompt_ids = inputs["input_ids"]
        prompt_len = prompt_ids.shape[1]
        n = len(label_ids)
        width = max(len(ids) for ids in label_ids)
        total = prompt_len + width
        batch: dict[str, torch.Tensor] = {}
        for key, value in inputs.items():
            per_token = value.ndim == 2 and value.shape == prompt_ids.shape and not value.is_floating_point()
            if per_token:
                batch[key] = torch.zeros((n, total), dtype=value.dtype, device=value.device)
                batch[key][:, :prompt_len] = value
            else:  # image tensors: one copy per row (dim 0 is the batch, or the patch list for Qwen2-VL)
                batch[key] = value.repeat(n, *([1] * (value.ndim - 1)))
        batch["input_ids"].fill_(self._pad_id())
        batch["input_ids"][:, :prompt_len] = prompt_ids
        if "attention_mask" not in batch:
            batch["attention_mask"] = torch.zeros((n, total), dtype=torch.long, device=prompt_ids.device)
            batch["attention_mask"][:, :prompt_len] = 1
        for row, ids in enumerate(label_ids):
            batch["input_ids"][row, prompt_len : prompt_len + len(ids)] = torch.tensor(ids, device=prompt_ids.device)
            batch["attention_mask"][row, prompt_len : prompt_len + len(ids)] = 1
        window = width + 1  # logits at positions prompt_len - 1 ... total - 1 predict the label tokens
        extra = {"logits_to_keep": window} if self._accepts_logits_to_keep else {}
        with torch.inference_mode():
            logits = self._model(**batch, use_cache=False, **extra).logits
        log_probs = torch.log_softmax(logits[:, -window:, :].float(), dim=-1)
        scores = []
        for row, ids in enumerate(label_ids):
            targets = torch.tensor(ids, device=log_probs.device)
            picked = log_probs[row, torch.arange(len(ids), device=log_probs.device), targets]
            scores.append(float(picked.mean()))
        return scores
