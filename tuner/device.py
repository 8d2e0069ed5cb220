"""Which torch device a worker trains on."""

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
