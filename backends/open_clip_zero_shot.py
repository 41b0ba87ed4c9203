"""open_clip zero-shot family (CLIP, SigLIP): the paper's "vlm" kind.

Ranks candidate labels by image-text similarity. The candidates are, in order of preference: the labels
the person gave, the options the question lists ("Is this a cat or a dog?"), or the 1000 ImageNet classes
with open_clip's prompt templates (their text embeddings are computed once per backend, on first need).

Weights come through open_clip's own factory, so every source it knows works unchanged:
``model_name="ViT-B-32", pretrained="laion2b_s34b_b79k"`` (a tag, from the hub or its cache),
``pretrained="/path/to/open_clip_model.safetensors"`` (a local checkpoint for a built-in architecture),
``model_name="local-dir:/path"`` (a folder with ``open_clip_config.json`` and weights) or
``model_name="hf-hub:org/repo"``. With ``quantize`` on (the default) the MLP linear layers are converted to
nf4 by hand (:func:`backends.quantize.quantize_linear_layers`); ``nn.MultiheadAttention`` projections stay
full precision and the card lists them.

Two things the weights were trained with, which the model must be built and scored with:

- QuickGELU: OpenAI's CLIP weights (and some others) were trained with it, but a built-in architecture
  name (``"ViT-L-14-336"``) builds plain GELU and open_clip only warns. When open_clip's pretrained
  registry marks the tag ``quick_gelu`` the model is built with ``force_quick_gelu`` (the same as the
  ``-quickgelu`` model name), whatever the preset wrote.
- Scoring: CLIP's contrastive loss is a softmax over candidates, so CLIP scores are a softmax; SigLIP
  was trained with an independent sigmoid per image-text pair, so models with a ``logit_bias`` report
  ``sigmoid(logit_scale * cos + logit_bias)`` per label. Those do not sum to 1: every label low means
  "none of these".
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from backends.base import Backend, BackendError, ModelReply
from backends.devices import resolve_placement
from backends.labels import labels_from_question
from backends.quantize import QuantReport, memory_footprint_bytes, quantize_linear_layers, summarize_names

if TYPE_CHECKING:
    import torch

#: open_clip ``precision`` for each compute dtype a :class:`~backends.devices.Placement` may ask for.
PRECISION_BY_DTYPE: dict[str, str] = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
#: Named prompt-template sets (attribute names in ``open_clip.zero_shot_metadata``).
TEMPLATE_SETS: dict[str, str] = {"simple": "SIMPLE_IMAGENET_TEMPLATES", "openai": "OPENAI_IMAGENET_TEMPLATES"}
#: Text embeddings of user labels kept per backend (labels repeat across an eval run).
LABEL_CACHE_SIZE = 4096

Template = Callable[[str], str]


def check_template_spec(spec: str | Sequence[str]) -> str | tuple[str, ...]:
    """Validate a template option without importing open_clip: a set name from :data:`TEMPLATE_SETS`,
    one ``"{}"`` format string, or a non-empty list of them. Returns it in hashable form."""
    if isinstance(spec, str):
        if spec in TEMPLATE_SETS or "{}" in spec:
            return spec
        raise ValueError(f"unknown template set {spec!r}; use one of {sorted(TEMPLATE_SETS)} or a '{{}}' string")
    templates = tuple(str(t) for t in spec)
    if not templates or not all("{}" in t for t in templates):
        raise ValueError("label templates must be a non-empty list of strings containing '{}'")
    return templates


def resolve_templates(spec: str | Sequence[str]) -> list[Template]:
    """A template set by name (``"simple"``: 7 prompts, ``"openai"``: 80) or a list of ``"{}"`` format
    strings such as ``["a photo of a {}."]``, as callables ``label -> prompt``."""
    checked = check_template_spec(spec)
    if isinstance(checked, str) and checked in TEMPLATE_SETS:
        from open_clip import zero_shot_metadata

        return list(getattr(zero_shot_metadata, TEMPLATE_SETS[checked]))
    return [t.format for t in ((checked,) if isinstance(checked, str) else checked)]


def pretrained_uses_quick_gelu(model_name: str, pretrained: str | None) -> bool:
    """Whether open_clip's pretrained registry says the ``pretrained`` tag of ``model_name`` was trained
    with QuickGELU (``open_clip.pretrained.get_pretrained_cfg``; e.g. ``ViT-L-14-336`` / ``openai``).
    False for checkpoint files and ``local-dir:`` / ``hf-hub:`` names, whose own config says it."""
    if not pretrained or model_name.startswith(("local-dir:", "hf-hub:")):
        return False
    from open_clip.pretrained import get_pretrained_cfg

    return bool(get_pretrained_cfg(model_name.replace("/", "-"), pretrained).get("quick_gelu", False))


def rank_labels(
    logits: np.ndarray, labels: Sequence[str], top_k: int | None = None, *, independent: bool = False
) -> list[tuple[str, float]]:
    """Scores for ``logits`` (one per label), sorted best first, cut to ``top_k`` when given.

    The postprocess step alone, testable without a model. By default a softmax (probabilities over all
    ``labels``: CLIP); ``independent=True`` gives a sigmoid per label (SigLIP, whose logits include its
    bias): each is P(this label matches), and they need not sum to 1.
    """
    values = np.asarray(logits, dtype=np.float64).reshape(-1)
    if values.shape[0] != len(labels):
        raise ValueError(f"{values.shape[0]} scores for {len(labels)} labels")
    if independent:
        probs = 0.5 * (1.0 + np.tanh(0.5 * values))  # the sigmoid, without overflow for large |logits|
    else:
        probs = np.exp(values - values.max())
        probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return [(labels[i], float(probs[i])) for i in order]


class OpenClipBackend(Backend):
    """Zero-shot image classification with an open_clip model.

    Options (preset keys, besides the base ones ``quantize``, ``device``, ``cost``, ``licence``):

    - ``model_name``: open_clip architecture (``"ViT-B-32"``, ``"ViT-L-14-336"``, ``"ViT-B-16-SigLIP"``) or
      ``"local-dir:PATH"`` / ``"hf-hub:ORG/REPO"``.
    - ``pretrained``: weights tag (``"laion2b_s34b_b79k"``, ``"openai"``, ``"webli"``) or a checkpoint file;
      ignored with a ``local-dir:``/``hf-hub:`` model name.
    - ``require_pretrained``: refuse to run on randomly initialised weights (default True).
    - ``label_templates``: prompts for labels given or parsed from the question (default
      ``["a photo of a {}."]``); ``imagenet_templates``: ``"simple"`` (default, 7 prompts) or ``"openai"`` (80).
    - ``imagenet_top_k``: how many ImageNet classes the answer lists (default 5).
    - ``skip_modules``: module-name patterns kept full precision when quantizing.
    - ``text_batch_size``: prompts encoded per forward pass when building label embeddings.
    """

    kind = "vlm"
    family = "open_clip"

    def __init__(
        self,
        name: str,
        *,
        model_name: str = "ViT-B-32",
        pretrained: str | None = "laion2b_s34b_b79k",
        require_pretrained: bool = True,
        label_templates: str | Sequence[str] = ("a photo of a {}.",),
        imagenet_templates: str | Sequence[str] = "simple",
        imagenet_top_k: int = 5,
        skip_modules: Sequence[str] = (),
        text_batch_size: int = 256,
        cache_dir: str | None = None,
        model_id: str = "",
        **base: Any,
    ) -> None:
        schema_name = model_name.startswith(("local-dir:", "hf-hub:"))
        default_id = model_name if schema_name or not pretrained else f"{model_name}/{pretrained}"
        super().__init__(name, model_id=model_id or default_id, **base)
        self.model_name = model_name
        self.pretrained = None if schema_name else pretrained
        self.require_pretrained = require_pretrained
        # Checked now, resolved at load time (named sets live in open_clip, imported only then).
        self._template_specs = {
            "label": check_template_spec(label_templates),
            "imagenet": check_template_spec(imagenet_templates),
        }
        self.label_templates: list[Template] = []
        self.imagenet_templates: list[Template] = []
        self.imagenet_top_k = int(imagenet_top_k)
        self.skip_modules = list(skip_modules)
        self.text_batch_size = int(text_batch_size)
        self.cache_dir = cache_dir
        self.quant_report: QuantReport | None = None
        self._model: Any = None
        self._preprocess: Callable[[Image.Image], torch.Tensor] | None = None
        self._tokenizer: Any = None
        self._input_dtype: torch.dtype | None = None
        self._device = "cpu"
        self._imagenet: torch.Tensor | None = None
        self._imagenet_lock = threading.Lock()
        self._label_cache: dict[str, torch.Tensor] = {}
        self._label_lock = threading.Lock()
        #: Set at load: built with QuickGELU because the weights were trained with it.
        self.quick_gelu = False

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        import open_clip

        self.label_templates = resolve_templates(self._template_specs["label"])
        self.imagenet_templates = resolve_templates(self._template_specs["imagenet"])
        placement = resolve_placement(self.requested_device)
        precision = PRECISION_BY_DTYPE[placement.compute_dtype_name]
        self.quick_gelu = pretrained_uses_quick_gelu(self.model_name, self.pretrained)
        # Built on the CPU first: quantization then moves only 4-bit weights to the accelerator.
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name,
                pretrained=self.pretrained,
                precision=precision,
                device="cpu",
                cache_dir=self.cache_dir,
                require_pretrained=self.require_pretrained,
                force_quick_gelu=self.quick_gelu,
            )
        except (RuntimeError, OSError, ValueError) as exc:
            raise BackendError(
                f"could not build open_clip model {self.info.model_id}: {str(exc).splitlines()[0][:300]} "
                "(weights are not cached and the hub is unreachable, or the name/tag is wrong)"
            ) from exc
        model.eval()
        if self.quantize:
            report = quantize_linear_layers(
                model, placement.compute_dtype, skip=self.skip_modules, device=placement.device
            )
            self.quant_report = report
            self.info.quantization = f"{report.quantization}, compute {placement.compute_dtype_name}"
            self.info.full_precision_layers = summarize_names(report.kept_full_precision)
        else:
            self.info.quantization = f"none ({placement.compute_dtype_name})"
            self.info.full_precision_layers = []
        model.to(placement.device)
        self._model = model
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(self.model_name, cache_dir=self.cache_dir)
        self._input_dtype = placement.compute_dtype
        self._device = placement.device
        self.info.device = placement.device
        self.info.memory_bytes = memory_footprint_bytes(model)
        if self.quantize and not placement.is_cuda:
            self._warm_up()

    def _warm_up(self) -> None:
        """Encode one image and one prompt while the load lock is held: bitsandbytes repacks each 4-bit
        weight for its CPU kernel on the layer's first call, in place, which must not race between
        two questions."""
        import torch

        size = self._model.visual.image_size
        height, width = size if isinstance(size, (tuple, list)) else (size, size)
        pixels = torch.zeros((1, 3, height, width), device=self._device, dtype=self._input_dtype)
        with torch.inference_mode():
            self._model.encode_image(pixels)
            self._model.encode_text(self._tokenizer(["warm up"]).to(self._device))

    def _require_model(self) -> Any:
        if not self.load():
            raise BackendError(self.info.error or f"{self.name} is not loaded")
        return self._model

    # ---------------------------------------------------------------- embeddings
    def _image_features(self, image: Image.Image) -> torch.Tensor:
        import torch

        model = self._require_model()
        assert self._preprocess is not None
        pixels = self._preprocess(image.convert("RGB")).unsqueeze(0).to(self._device, dtype=self._input_dtype)
        with torch.inference_mode():
            features = model.encode_image(pixels)
        return torch.nn.functional.normalize(features.float(), dim=-1)  # in float32, also for bf16 models

    def embed_image(self, image: Image.Image) -> np.ndarray:
        """The L2-normalised image embedding (float32, shape ``(embed_dim,)``), for the router."""
        return self._image_features(image)[0].cpu().numpy().astype(np.float32)

    def _encode_prompts(self, labels: Sequence[str], templates: Sequence[Template]) -> torch.Tensor:
        """One unit vector per label: the mean of its normalised prompt embeddings, re-normalised.
        Shape ``(len(labels), embed_dim)``, float32."""
        import torch

        model = self._require_model()
        texts = [template(label) for label in labels for template in templates]
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.text_batch_size):
                tokens = self._tokenizer(texts[start : start + self.text_batch_size]).to(self._device)
                chunks.append(model.encode_text(tokens).float())
        per_prompt = torch.nn.functional.normalize(torch.cat(chunks), dim=-1).reshape(len(labels), len(templates), -1)
        return torch.nn.functional.normalize(per_prompt.mean(dim=1), dim=-1)

    def label_embeddings(self, labels: Sequence[str]) -> torch.Tensor:
        """Text embeddings of user labels with ``label_templates``, shape ``(len(labels), embed_dim)``;
        cached per backend (bounded, cleared when full)."""
        import torch

        with self._label_lock:
            known = {label: self._label_cache[label] for label in labels if label in self._label_cache}
        missing = [label for label in dict.fromkeys(labels) if label not in known]
        if missing:
            encoded = dict(zip(missing, self._encode_prompts(missing, self.label_templates), strict=True))
            known.update(encoded)
            with self._label_lock:
                if len(self._label_cache) + len(encoded) > LABEL_CACHE_SIZE:
                    self._label_cache.clear()
                self._label_cache.update(encoded)
        return torch.stack([known[label] for label in labels])

    def imagenet_embeddings(self) -> torch.Tensor:
        """Text embeddings of the 1000 ImageNet classes, built once per backend on first use."""
        if self._imagenet is None:
            with self._imagenet_lock:
                if self._imagenet is None:
                    from open_clip import IMAGENET_CLASSNAMES

                    self._imagenet = self._encode_prompts(list(IMAGENET_CLASSNAMES), self.imagenet_templates)
        return self._imagenet

    # ---------------------------------------------------------------- answering
    @property
    def sigmoid_scores(self) -> bool:
        """Whether labels are scored with independent sigmoids: the model has a ``logit_bias`` (SigLIP)."""
        return getattr(self._model, "logit_bias", None) is not None

    def _logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> np.ndarray:
        """``logit_scale * cos`` per label, plus ``logit_bias`` for SigLIP models."""
        scale = float(self._model.logit_scale.detach().float().exp().reshape(-1)[0])
        similarity = image_features[0].to(text_features.device) @ text_features.T
        logits = (scale * similarity).cpu().numpy()
        if self.sigmoid_scores:
            logits = logits + float(self._model.logit_bias.detach().float().reshape(-1)[0])
        return logits

    def _answer(self, image: Image.Image, question: str, labels: list[str] | None) -> ModelReply:
        candidates = labels or labels_from_question(question)
        image_features = self._image_features(image)
        independent = self.sigmoid_scores
        if candidates:
            logits = self._logits(image_features, self.label_embeddings(candidates))
            ranked = rank_labels(logits, candidates, independent=independent)
        else:
            from open_clip import IMAGENET_CLASSNAMES

            logits = self._logits(image_features, self.imagenet_embeddings())
            ranked = rank_labels(logits, list(IMAGENET_CLASSNAMES), top_k=self.imagenet_top_k, independent=independent)
        return ModelReply(text=ranked[0][0], label_scores=ranked)
