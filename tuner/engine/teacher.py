"""The teacher of knowledge distillation: a model `tuner export` wrote, run beside the student on its batches.

The student's batches are normalised with the student's statistics; the teacher was trained with its own (in
its export). One affine map per channel turns the one into the other, so any exported model of the same input
size and channels can teach, whatever data it was normalised on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from tuner.errors import TunerError
from tuner.engine.export import load_exported
from tuner.engine.train import autocast


def load_teacher(path: str, record: dict, device: torch.device, precision: str
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits of the teacher at `path` for a batch of the student's data (`record`: its classes and
    preprocessing, tuner.data.loader.data_record)."""
    try:
        exported = load_exported(Path(path))
    except TunerError as exc:  # a valid export whose own model module cannot be imported here
        raise TunerError(f"task.teacher: {path!r}: {exc}") from None
    except Exception as exc:  # unreadable, not a torch file, not an export: the user's path, one line
        raise TunerError(f"task.teacher: {path!r} is not a model file `tuner export` wrote "
                         f"({type(exc).__name__}: {exc})") from None
    if list(exported.classes) != list(record["classes"]):
        raise TunerError(f"task.teacher: {path!r} predicts the classes {_short(exported.classes)}, the study's "
                         f"data has {_short(record['classes'])}")
    preprocessing = record["preprocessing"]
    theirs = exported.preprocessing
    for key in ("channels", "train_size"):
        if theirs[key] != preprocessing[key]:
            raise TunerError(f"task.teacher: {path!r} takes {key} {theirs[key]}, the study's data has "
                             f"{preprocessing[key]}")
    model = exported.model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    def per_channel(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, device=device).view(1, -1, 1, 1)

    # student-normalised x -> pixels/255 -> teacher-normalised: x * scale + shift
    scale = per_channel(preprocessing["std"]) / per_channel(theirs["std"])
    shift = (per_channel(preprocessing["mean"]) - per_channel(theirs["mean"])) / per_channel(theirs["std"])

    @torch.no_grad()
    def teach(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model(x * scale + shift)

    return teach


def _short(classes: list[str]) -> str:
    return f"{len(classes)}: {', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}"
