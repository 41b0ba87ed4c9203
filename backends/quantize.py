"""4-bit (nf4) quantization with bitsandbytes, shared by every family that can use it.

Two routes, one vocabulary:

* transformers models load through :func:`bnb_config` (a ``BitsAndBytesConfig``) and ``from_pretrained``;
* models transformers does not build (open_clip) are quantized by hand with
  :func:`quantize_linear_layers`, which swaps ``nn.Linear`` for ``bnb.nn.Linear4bit``.

Either way :func:`full_precision_linear_names` says afterwards which linear projections stayed full
precision, and :func:`memory_footprint_bytes` what the weights cost (4-bit statistics included).

Facts this module relies on (docs/models.md): bitsandbytes >= 0.47 quantizes on CPU; nf4 with float32
compute is the fast choice on CPU, bf16 (fp16 before Ampere) compute on CUDA (that choice comes from
:class:`backends.devices.Placement`); ``nn.MultiheadAttention`` does not call its ``out_proj`` as a module
(it reads the weight tensor), so those layers must stay full precision; open_clip reads its working
dtype from ``resblocks[0].mlp.c_fc`` and honours an ``int8_original_dtype`` attribute there, which is why
every replaced layer records the dtype it had.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily so that importing this module stays cheap
    import torch
    from torch import nn

    from backends.devices import Placement

#: The 4-bit scheme every backend uses unless told otherwise.
QUANT_TYPE = "nf4"
#: Quantize the per-block scales too (QLoRA's "double quantization"): about 0.4 bit per weight saved.
DOUBLE_QUANT = True
#: Attribute open_clip (and bitsandbytes' own int8 path) reads to learn a quantized layer's working dtype.
ORIGINAL_DTYPE_ATTR = "int8_original_dtype"
#: bitsandbytes' 4-bit block size (weights per scale). Its CPU kernels (the AVX512-BF16 packed path)
#: also need ``in_features`` divisible by it and ``out_features`` by :data:`CPU_ROW_BLOCK`; layers
#: that are not are left full precision on CPU instead of failing at the first forward pass.
BLOCKSIZE = 64
CPU_ROW_BLOCK = 32
#: Raw projection weights that some attention modules hold as parameters instead of ``nn.Linear``.
_RAW_PROJECTION_PARAMS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


@dataclass(frozen=True)
class QuantReport:
    """What :func:`quantize_linear_layers` did: module names replaced, and linear weights left alone."""

    replaced: list[str] = field(default_factory=list)
    kept_full_precision: list[str] = field(default_factory=list)
    quant_type: str = QUANT_TYPE

    @property
    def quantization(self) -> str:
        """The label a backend card shows, e.g. ``"nf4 (bitsandbytes), 24 linear layers"``."""
        if not self.replaced:
            return "none"
        return f"{self.quant_type} (bitsandbytes), {len(self.replaced)} linear layers"


def bnb_config(
    placement: Placement,
    *,
    skip_modules: Sequence[str] | None = None,
    quant_type: str = QUANT_TYPE,
    double_quant: bool = DOUBLE_QUANT,
) -> Any:
    """A transformers ``BitsAndBytesConfig`` for 4-bit loading on ``placement``.

    ``skip_modules`` become ``llm_int8_skip_modules`` (transformers' patterns: a module-name prefix, a
    regex or a suffix). Passing a list replaces transformers' default skips, so ``lm_head`` is added back
    here: the output head stays full precision in both cases.
    """
    from transformers import BitsAndBytesConfig

    skips = None
    if skip_modules is not None:
        skips = list(dict.fromkeys([*skip_modules, "lm_head"]))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_compute_dtype=placement.compute_dtype,
        bnb_4bit_use_double_quant=double_quant,
        llm_int8_skip_modules=skips,
    )


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """transformers' skip-pattern rule: a pattern matches a module name from its start up to a module
    boundary (``"layer.1"`` matches ``"layer.1.attn"``, not ``"layer.11"``; regexes allowed), or as a suffix
    (``"out_proj"`` matches ``"transformer.resblocks.0.attn.out_proj"``)."""
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    return any(name.endswith(pattern) or re.match(rf"(?:{pattern}){boundary}", name) for pattern in patterns)


def _is_4bit(module: nn.Module) -> bool:
    import bitsandbytes as bnb

    return isinstance(module, bnb.nn.Linear4bit)


def cpu_kernel_compatible(linear: nn.Linear) -> bool:
    """Whether bitsandbytes' CPU 4-bit kernels accept this layer's shape (see :data:`BLOCKSIZE`)."""
    return linear.in_features % BLOCKSIZE == 0 and linear.out_features % CPU_ROW_BLOCK == 0


def cpu_incompatible_linear_names(module: nn.Module) -> list[str]:
    """Names of ``nn.Linear`` layers of ``module`` that 4-bit would break on CPU. Works on a model built
    on the ``meta`` device, so a skip list can be made before any weights are loaded."""
    from torch import nn

    return [
        name
        for name, child in module.named_modules()
        if isinstance(child, nn.Linear) and not _is_4bit(child) and not cpu_kernel_compatible(child)
    ]


def _attention_owned_linears(module: nn.Module) -> set[str]:
    """Names of ``nn.Linear`` children that their parent reads as raw tensors (``nn.MultiheadAttention``
    passes ``out_proj.weight`` to a functional kernel), so swapping them would break the forward pass."""
    from torch import nn

    owned: set[str] = set()
    for name, child in module.named_modules():
        if isinstance(child, nn.MultiheadAttention):
            for sub_name, sub in child.named_modules():
                if sub_name and isinstance(sub, nn.Linear):
                    owned.add(f"{name}.{sub_name}" if name else sub_name)
    return owned


def quantize_linear_layers(
    module: nn.Module,
    compute_dtype: torch.dtype,
    *,
    skip: Sequence[str] = (),
    device: str = "cpu",
    quant_type: str = QUANT_TYPE,
    double_quant: bool = DOUBLE_QUANT,
) -> QuantReport:
    """Replace every eligible ``nn.Linear`` of ``module`` (in place) with a ``bnb.nn.Linear4bit``.

    Eligible: not matched by ``skip`` (see :func:`name_matches`), not owned by an ``nn.MultiheadAttention``,
    not already 4-bit, and (on CPU) of a shape the CPU kernels take (:func:`cpu_kernel_compatible`).
    Each new layer keeps the bias, computes in ``compute_dtype``, is quantized on
    ``device``, and records its original weight dtype as ``int8_original_dtype`` (open_clip's dtype
    lookup reads it; without it ``encode_text`` fails with "mixed dtype (CPU)").
    """
    import bitsandbytes as bnb
    from torch import nn

    owned = _attention_owned_linears(module)
    targets: list[tuple[str, nn.Linear]] = [
        (name, child)
        for name, child in module.named_modules()
        if isinstance(child, nn.Linear)
        and not _is_4bit(child)
        and name not in owned
        and not name_matches(name, skip)
        and (not device.startswith("cpu") or cpu_kernel_compatible(child))
    ]
    replaced: list[str] = []
    for name, linear in targets:
        original_dtype = linear.weight.dtype
        new = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=double_quant,
            quant_type=quant_type,
            device="meta",
        )
        new.weight = bnb.nn.Params4bit(
            linear.weight.data.detach(),
            requires_grad=False,
            compress_statistics=double_quant,
            quant_type=quant_type,
            blocksize=BLOCKSIZE,
            module=new,
        )
        if linear.bias is not None:
            new.bias = nn.Parameter(linear.bias.data.detach(), requires_grad=False)
        new.to(device)  # bitsandbytes quantizes on the first move to a real device
        setattr(new, ORIGINAL_DTYPE_ATTR, original_dtype)
        new.train(linear.training)
        parent_name, _, child_name = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child_name, new)
        replaced.append(name)
    kept = full_precision_linear_names(module)
    return QuantReport(replaced=replaced, kept_full_precision=kept, quant_type=quant_type)


def full_precision_linear_names(module: nn.Module) -> list[str]:
    """Linear projections of ``module`` that are not 4-bit: plain ``nn.Linear`` layers (an attention
    module's ``out_proj``, an ``lm_head``, anything skipped) and raw projection weights such as
    ``nn.MultiheadAttention.in_proj_weight``, each by its dotted name."""
    from torch import nn

    names: list[str] = []
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear) and not _is_4bit(child):
            names.append(name)
        for param_name in _RAW_PROJECTION_PARAMS:
            if isinstance(getattr(child, param_name, None), nn.Parameter):
                names.append(f"{name}.{param_name}" if name else param_name)
    return names


def summarize_names(names: Sequence[str]) -> list[str]:
    """Collapse layer indices for a readable card: 24 ``...resblocks.N.attn.out_proj`` entries become
    ``"...resblocks.*.attn.out_proj (x24)"``. Order of first appearance is kept."""
    counts: Counter[str] = Counter()
    order: list[str] = []
    for name in names:
        key = re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "*", name)
        if key not in counts:
            order.append(key)
        counts[key] += 1
    return [key if counts[key] == 1 else f"{key} (x{counts[key]})" for key in order]


def count_4bit_layers(module: nn.Module) -> int:
    """How many ``bnb.nn.Linear4bit`` layers ``module`` holds."""
    return sum(1 for child in module.modules() if _is_4bit(child))


def memory_footprint_bytes(module: nn.Module) -> int:
    """Bytes the weights take: parameters and buffers, plus the 4-bit layers' quantization statistics
    (per-block scales, nested scales and code books), which bitsandbytes keeps outside the parameters."""
    from backends.devices import module_memory_bytes

    total = module_memory_bytes(module)
    for child in module.modules():
        if not _is_4bit(child):
            continue
        state = getattr(child.weight, "quant_state", None)
        total += _quant_state_bytes(state)
    return total


def _quant_state_bytes(state: Any) -> int:
    import torch

    if state is None:
        return 0
    total = 0
    for attr in ("absmax", "code", "offset"):
        value = getattr(state, attr, None)
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    nested = getattr(state, "state2", None)
    return total + (_quant_state_bytes(nested) if nested is not None else 0)
