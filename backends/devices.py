"""Where a model runs and in which dtype: one place that decides, so every family agrees."""

from __future__ import annotations

from dataclasses import dataclass

#: The first CUDA compute capability with native bfloat16 arithmetic (Ampere: A100, A10G, L4, RTX 30xx and
#: later, H100). Older GPUs (T4 = 7.5, V100 = 7.0, the common free Space hardware) only emulate bf16, which
#: is several times slower than their fp16 tensor cores.
BF16_MIN_CAPABILITY: tuple[int, int] = (8, 0)


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" | "cuda" | "cuda:N"
    #: "float32" on CPU (bf16 is slower there, see docs/models.md); on CUDA see :func:`compute_dtype_for`.
    compute_dtype_name: str

    @property
    def compute_dtype(self):  # -> torch.dtype
        import torch

        return getattr(torch, self.compute_dtype_name)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def compute_dtype_for(device: str, capability: tuple[int, int] | None) -> str:
    """The compute dtype name for ``device``: a pure function of the GPU's compute capability.

    float32 on CPU; on CUDA bfloat16 from :data:`BF16_MIN_CAPABILITY` up, float16 below it. An unknown
    capability (the query failed) gets float16, which every CUDA GPU computes natively.
    """
    if not device.startswith("cuda"):
        return "float32"
    if capability is not None and tuple(capability) >= BF16_MIN_CAPABILITY:
        return "bfloat16"
    return "float16"


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def cuda_capability(device: str = "cuda") -> tuple[int, int] | None:
    """``(major, minor)`` of the CUDA device, or None when it cannot be read."""
    try:
        import torch

        major, minor = torch.cuda.get_device_capability(device)
        return int(major), int(minor)
    except Exception:
        return None


def resolve_placement(requested: str = "auto") -> Placement:
    """``auto`` means CUDA when present, else CPU; the dtype follows :func:`compute_dtype_for`."""
    device = requested
    if requested == "auto":
        device = "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda"):
        return Placement(device=device, compute_dtype_name=compute_dtype_for(device, cuda_capability(device)))
    return Placement(device="cpu", compute_dtype_name="float32")


def module_memory_bytes(module) -> int:
    """Bytes held by a torch module's parameters and buffers (what the weights cost in memory)."""
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        total += tensor.numel() * tensor.element_size()
    return total
