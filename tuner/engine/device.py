"""Which torch device a worker trains on, and how (precision, speed settings, out-of-memory errors)."""

from __future__ import annotations

import torch

from tuner.errors import TunerError


def pick_device(gpu: int | None, cpu: bool) -> torch.device:
    """--cpu forces the CPU; --gpu N pins GPU N (an error if absent); neither: GPU 0 if any, else CPU."""
    if cpu:
        return torch.device("cpu")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpu is None:
        return torch.device("cuda:0") if available else torch.device("cpu")
    if gpu < 0 or gpu >= available:
        have = f"GPUs 0..{available - 1}" if available else "no CUDA GPU"
        raise TunerError(f"--gpu {gpu}: no such GPU (this machine has {have})")
    torch.cuda.set_device(gpu)
    return torch.device(f"cuda:{gpu}")


def setup_device(device: torch.device) -> None:
    """Process-wide speed settings for training on `device`."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # fixed input shapes (one image size, one batch size): let cuDNN pick the fastest kernels once
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls/convs on tensor cores where fp32 remains
        torch.backends.cudnn.allow_tf32 = True


def resolve_precision(precision: str, device: torch.device) -> str:
    """`[task] precision` on this device: auto is bf16 on a GPU that supports it (Ampere and newer), else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator refusing an allocation (a RuntimeError there)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))
