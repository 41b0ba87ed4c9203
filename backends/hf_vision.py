"""transformers image-text-to-text family (LLaVA-1.5, Qwen2-VL, SmolVLM, BLIP-2): the paper's "vlm+llm" kind.

One code path for every architecture: ``AutoProcessor`` + ``AutoModelForImageTextToText`` (transformers 5
maps llava, qwen2_vl, smolvlm, idefics3 and blip-2 there), the processor's chat template when it has one,
and greedy ``generate`` for a free-text answer. When the person gives candidate labels, or the question
lists options ("Is this a cat or a dog?"), every label is scored instead by log P(label, then the model's
end-of-answer token | image, prompt): the image and prompt run once with a KV cache and every label
continues that cache; ``label_scores`` normalises those log-likelihoods over the labels, so each score is
P(label) given that the answer is one of them (:func:`backends.labels.label_probabilities`).

What differs between architectures is data, in :data:`ARCHITECTURES`: a model class where the Auto class
is not the right entry point, the plain prompt used when a processor has no chat template, the token that
ends an answer, the modules kept 16-bit in 4-bit (the vision tower and projector, as LLaVA's own 4-bit
loader does, so comparing a VLM with a VLM+LLM is not also comparing quantisations), image-processor
options (Qwen2-VL's pixel cap, SmolVLM's tiling on CPU) and LLaVA-1.5's pad-to-square. With ``quantize``
on (the default) the model loads nf4 through ``BitsAndBytesConfig`` (compute dtype from
:func:`backends.devices.resolve_placement`) and the card lists what stayed full precision.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from backends.base import Backend, BackendError, ModelReply
from backends.devices import resolve_placement
from backends.labels import continuation_log_likelihoods, label_probabilities, labels_from_question
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


#: Qwen2-VL's default pixel cap here: 1280 visual tokens of 28x28 pixels (Qwen's model card suggests this
#: range); the hub's ``max_pixels`` (12.8M pixels, 16384 tokens) is far too many for a 2B model in 4-bit.
QWEN2_VL_MAX_PIXELS = 1280 * 28 * 28
#: SmolVLM / Idefics3 on CPU: one tile instead of the hub's 2048 px long side split into 4x4 tiles plus an
#: overview (about 1,088 image tokens, which made each label question take minutes on 2 cores).
SMOLVLM_CPU_PROCESSOR: Mapping[str, Any] = {"do_image_splitting": False}


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
    #: The text that ends an answer (scored after every label); None: the tokenizer's end-of-sequence token.
    answer_end: str | None = None
    #: Pad the image to a square in the image processor's mean colour first (LLaVA-1.5's training
    #: preprocessing; its hub processor would centre-crop and lose the edges of a wide photo).
    pad_to_square: bool = False
    #: Image-processor options given unless the preset sets them (and, below, on CPU only).
    processor_defaults: Mapping[str, Any] = field(default_factory=dict)
    cpu_processor_defaults: Mapping[str, Any] = field(default_factory=dict)
    #: The image processor reads ``min_pixels``/``max_pixels`` and lets them override ``size`` (Qwen2-VL):
    #: a preset's ``size = {shortest_edge, longest_edge}`` is passed as those two.
    pixel_count_size: bool = False


#: Architectures the family knows; any other image-text-to-text model uses :data:`DEFAULT_ARCH`.
#: Module names are transformers 5's (``model.vision_tower``; 4.x had ``vision_tower`` at the top).
ARCHITECTURES: dict[str, ArchSpec] = {
    "llava": ArchSpec(
        prompt="USER: {image_token}\n{question} ASSISTANT:",
        skip_modules=("model.vision_tower", "model.multi_modal_projector"),
        pad_to_square=True,
    ),
    "qwen2_vl": ArchSpec(
        prompt="<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n"
        "<|im_start|>assistant\n",
        skip_modules=("model.visual",),  # the ViT and its patch merger (the projector)
        answer_end="<|im_end|>",
        processor_defaults={"max_pixels": QWEN2_VL_MAX_PIXELS},
        pixel_count_size=True,
    ),
    "smolvlm": ArchSpec(
        prompt="<|im_start|>User:{image_token}{question}<end_of_utterance>\nAssistant:",
        answer_end="<end_of_utterance>",
        cpu_processor_defaults=SMOLVLM_CPU_PROCESSOR,
    ),
    "idefics3": ArchSpec(  # SmolVLM-256M/500M ship as idefics3
        prompt="<|begin_of_text|>User:{image_token}{question}<end_of_utterance>\nAssistant:",
        answer_end="<end_of_utterance>",
        cpu_processor_defaults=SMOLVLM_CPU_PROCESSOR,
    ),
    # BLIP-2's processor inserts the query-token placeholders itself; OPT has no chat template, and BLIP-2
    # trained it to end an answer with a newline.
    "blip-2": ArchSpec(
        model_class="Blip2ForConditionalGeneration",
        prompt="Question: {question} Answer:",
        instruction=False,
        answer_end="\n",
    ),
}
DEFAULT_ARCH = ArchSpec()


def processor_options(arch: ArchSpec, requested: Mapping[str, Any], *, on_cpu: bool) -> dict[str, Any]:
    """The keyword arguments for ``AutoProcessor.from_pretrained``: the architecture's defaults (its CPU
    ones on CPU) under what the preset asked for. For Qwen2-VL a ``size`` with ``shortest_edge`` /
    ``longest_edge`` becomes ``min_pixels`` / ``max_pixels``: the hub config's ``max_pixels`` would
    otherwise override it (``Qwen2VLImageProcessor.__init__``)."""
    options = {**arch.processor_defaults, **(arch.cpu_processor_defaults if on_cpu else {})}
    asked = dict(requested)
    size = asked.get("size")
    if arch.pixel_count_size and isinstance(size, Mapping):
        asked.pop("size")
        if "longest_edge" in size:
            asked.setdefault("max_pixels", int(size["longest_edge"]))
        if "shortest_edge" in size:
            asked.setdefault("min_pixels", int(size["shortest_edge"]))
    options.update(asked)
    return options


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """The image centred on a square canvas of ``fill`` (LLaVA's ``expand2square``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image.convert("RGB"), ((side - width) // 2, (side - height) // 2))
    return canvas


def group_full_precision(names: Sequence[str], roots: Sequence[str]) -> list[str]:
    """The card's list of full-precision linear layers: one line per kept module (a root with layers
    under it: ``"model.vision_tower (all 144 linear layers)"``), the rest with indices collapsed."""
    lines: list[str] = []
    grouped: set[str] = set()
    for root in dict.fromkeys(roots):
        members = [name for name in names if name.startswith(f"{root}.") and name not in grouped]
        if members:
            lines.append(f"{root} (all {len(members)} linear layers)")
            grouped.update(members)
    return lines + summarize_names([name for name in names if name not in grouped])


def _skeleton(model_class: Any, config: Any) -> Any:
    """The model built on the ``meta`` device (no memory, no weights): its layer names and shapes."""
    import torch

    with torch.device("meta"):
        if hasattr(model_class, "from_config"):  # an Auto class
            return model_class.from_config(config)
        return model_class(config)


def softmax_ranking(scores: Sequence[float], labels: Sequence[str]) -> list[tuple[str, float]]:
    """Softmax of per-label scores, sorted best first (the postprocess step, testable without a model)."""
    return label_probabilities(labels, scores)


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
    - ``skip_modules``: module-name patterns kept full precision in 4-bit (``lm_head`` always is); replaces
      the architecture's list (LLaVA: ``["model.vision_tower", "model.multi_modal_projector"]``, Qwen2-VL:
      ``["model.visual"]``).
    - ``score_batch_size``: labels continued from the cached prompt per forward pass (default 4).
    - ``processor_kwargs``: passed to ``AutoProcessor.from_pretrained`` over the architecture's defaults
      (:func:`processor_options`); e.g. for Qwen2-VL ``{"min_pixels": 200704, "max_pixels": 1003520}``
      (pixel counts: 256 to 1280 image tokens), for SmolVLM ``{"size": {"longest_edge": 512},
      "do_image_splitting": False}`` (one 512 px tile; the default on CPU turns splitting off).
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
        self._dtype: torch.dtype | None = None
        self._accepts_logits_to_keep = False
        #: What the processor was given (architecture defaults + ``processor_kwargs``), set at load.
        self.processor_options: dict[str, Any] = {}
        self._answer_end = ""
        self._continuation: Any = None
        self._pad_fill: tuple[int, int, int] | None = None

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
        skips = self.skip_modules if self.skip_modules is not None else self.arch.skip_modules
        if self.quantize:
            if not placement.is_cuda:
                incompatible = [re.escape(n) for n in cpu_incompatible_linear_names(_skeleton(model_class, config))]
                skips = [*(skips or []), *incompatible] if incompatible else skips
            kwargs["quantization_config"] = bnb_config(placement, skip_modules=skips)
        # The processor first: it is cheap, and a broken one should fail before gigabytes of weights load.
        self.processor_options = processor_options(self.arch, self.processor_kwargs, on_cpu=not placement.is_cuda)
        self._processor = transformers.AutoProcessor.from_pretrained(self.model_id, **hub, **self.processor_options)
        model = model_class.from_pretrained(self.model_id, **kwargs)
        model.eval()
        self._model = model
        self._device = placement.device
        self._dtype = placement.compute_dtype
        parameters = inspect.signature(model.forward).parameters
        self._accepts_logits_to_keep = "logits_to_keep" in parameters
        # BLIP-2's forward needs pixel_values on every call; its language model continues the cache alone.
        self._continuation = model if "cache" in parameters else model.language_model
        self._answer_end = self._answer_end_text()
        if self.arch.pad_to_square:
            mean = getattr(getattr(self._processor, "image_processor", None), "image_mean", None) or (0.5, 0.5, 0.5)
            self._pad_fill = tuple(int(channel * 255) for channel in mean)  # LLaVA's own rule
        quantized = count_4bit_layers(model)
        self.info.device = placement.device
        self.info.quantization = (
            f"{QUANT_TYPE} (bitsandbytes), {quantized} linear layers, compute {placement.compute_dtype_name}"
            if quantized
            else f"none ({placement.compute_dtype_name})"
        )
        self.info.full_precision_layers = (
            group_full_precision(full_precision_linear_names(model), skips or ()) if quantized else []
        )
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

    def _answer_end_text(self) -> str:
        """The text that ends an answer: the architecture's end-of-turn token when the tokenizer has it,
        else the tokenizer's end-of-sequence token (``""`` when it has none)."""
        tokenizer = self.tokenizer
        end = self.arch.answer_end
        if end is not None and (end.isspace() or end in tokenizer.get_vocab()):
            return end
        return tokenizer.eos_token or ""

    def _inputs(self, image: Image.Image, prompt: str) -> dict[str, torch.Tensor]:
        """Processor output on the model's device; floating tensors in the compute dtype. LLaVA-1.5's
        image is padded to a square first (see :attr:`ArchSpec.pad_to_square`)."""
        image = image.convert("RGB")
        if self._pad_fill is not None:
            image = pad_to_square(image, self._pad_fill)
        batch = self._processor(images=image, text=prompt, return_tensors="pt")
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
            ranked = label_probabilities(candidates, self.label_log_likelihoods(inputs, prompt, candidates))
            return ModelReply(text=ranked[0][0], label_scores=ranked)
        return ModelReply(text=self._generate(inputs))

    def _generate(self, inputs: dict[str, torch.Tensor]) -> str:
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
        """Token ids of ``label`` as the whole answer that follows ``prompt``: the label, then the token
        that ends an answer (tokenised in context, so a leading space merges the way the model saw it)."""
        separator = "" if not prompt or prompt[-1].isspace() else " "
        tokenizer = self.tokenizer
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(prompt + separator + label + self._answer_end, add_special_tokens=False)["input_ids"]
        common = 0
        for a, b in zip(prompt_ids, full_ids, strict=False):
            if a != b:
                break
            common += 1
        ids = list(full_ids[common:])
        return ids or list(tokenizer(label + self._answer_end, add_special_tokens=False)["input_ids"])

    def label_log_likelihoods(
        self, inputs: dict[str, torch.Tensor], prompt: str, labels: Sequence[str]
    ) -> list[float]:
        """log P(label, then the end of the answer | image, prompt) for each label: the sum of the
        log-probabilities of :meth:`answer_token_ids`.

        The processed prompt ``inputs`` (batch of one: image and prompt) runs once with ``use_cache=True``;
        the labels then continue copies of that cache, ``score_batch_size`` at a time, so the image is
        encoded once per question whatever the number of labels.
        """
        import torch

        label_ids = [self.answer_token_ids(prompt, label) for label in labels]
        extra = {"logits_to_keep": 1} if self._accepts_logits_to_keep else {}
        with torch.inference_mode():
            prefix = self._model(**inputs, use_cache=True, **extra)
            first = torch.log_softmax(prefix.logits[0, -1].float(), dim=-1).cpu()
            return continuation_log_likelihoods(
                self._continue, _cache_of(prefix), first, label_ids, self._pad_id(), self.score_batch_size
            )

    def _continue(self, input_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """Logits of ``input_ids`` after ``cache`` (no image: it is in the cache already)."""
        return self._continuation(input_ids=input_ids.to(self._device), cache=cache, use_cache=True).logits


def _cache_of(output: Any) -> Any:
    """The KV cache of a forward pass (BLIP-2 keeps it on its language model's output)."""
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(getattr(output, "language_model_outputs", None), "cache", None)
    if cache is None:
        raise BackendError("the model returned no KV cache for label scoring")
    return cache
