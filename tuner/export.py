"""Export the best trial's final weights with everything needed to rebuild and use the model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from tuner.checkpoint import save_atomic
from tuner.config import StudyConfig, parse_config
from tuner.errors import TunerError
from tuner.models import build_model
from tuner.objective import lineage_number
from tuner.space import HParams, hparams_from_params
from tuner.study import best_frozen_trial, checkpoint_place, load_config


def export_best(storage: optuna.storages.RDBStorage, name: str, out: Path) -> dict[str, Any]:
    """Write {model, hparams, config, trial, value, epoch, num_classes, image_shape} to `out` (atomically)."""
    config = load_config(storage, name)
    trial = best_frozen_trial(storage, name)
    checkpoints = checkpoint_place(storage, name).trial(lineage_number(trial))
    state = checkpoints.load_latest()
    if state is None:
        raise TunerError(f"no checkpoint of trial {trial.number} under {checkpoints.path}: this host does not see "
                         "the folder its worker wrote to (set TUNER_CHECKPOINT_DIR to where it is mounted here)")
    model_state = state["model"]
    hp = hparams_from_params(config.space, trial.params)
    payload = {"model": model_state, "hparams": dataclasses.asdict(hp), "config": config.to_dict(),
               "trial": trial.number, "value": trial.value, "epoch": state["epoch"],
               "num_classes": trial.user_attrs.get("num_classes"), "image_shape": trial.user_attrs.get("image_shape")}
    try:
        save_atomic(payload, out)
    except OSError as exc:  # a folder, a missing or read-only directory: the user's path, one line
        raise TunerError(f"cannot write {out}: {exc.strerror or exc}") from None
    return payload


def load_exported(path: Path) -> tuple[nn.Module, StudyConfig, HParams]:
    """Rebuild the exported model (in eval mode) from a file written by export_best."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = parse_config(payload["config"], f"exported config in {path}")
    hp = HParams(**payload["hparams"])
    # The export holds every weight: build without pretrained weights, then load them all.
    model = build_model(config.task.model, "none", hp, tuple(payload["image_shape"]), payload["num_classes"])
    model.load_state_dict(payload["model"])
    return model.eval(), config, hp
