"""Where a model runs and in which dtype: one place that decides, so every family agrees."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" | "cuda" | "cuda:N"
    compute_dtype_name: str  # "float32" on CPU (bf16 is slower there, see MODELS.md), "bfloat16" on CUDA

    @property
    def compute_dtype(self):  # -> torch.dtype
        import torch

        return getattr(torch, self.compute_dtype_name)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken CUDA install means "no CUDA" here
        return False


def resolve_placement(requested: str = "auto") -> Placement:
    """``auto`` means CUDA when present, else CPU."""
    device = requested
    if requested == "auto":
        device = "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda"):
        return Placement(device=device, compute_dtype_name="bfloat16")
    return Placement(device="cpu", compute_dtype_name="float32")


def module_memory_bytes(module) -> int:
    """Bytes held by a torch module's parameters and buffers (what the weights cost in memory)."""
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        total += tensor.numel() * tensor.element_size()
    return total
