"""Export the best trial's final weights with everything needed to use the model from the file alone:
architecture params, class names and the preprocessing (sizes, normalisation)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from tuner.store.checkpoint import save_atomic
from tuner.spec.config import StudyConfig, parse_config
from tuner.data.augment import Augment
from tuner.data.cache import prepare
from tuner.data.loader import data_record
from tuner.errors import TunerError
from tuner.engine.models import build_model
from tuner.fleet.lineage import lineage_number
from tuner.fleet.pbt import schedule
from tuner.spec.space import HParams, hparams_from_params
from tuner.fleet.study import best_frozen_trial, checkpoint_place, complete_trial, stored_config


def export_best(storage: optuna.storages.RDBStorage, name: str, out: Path, number: int | None = None
                ) -> dict[str, Any]:
    """Write {model, hparams, config, trial, value, epoch, num_classes, image_shape, classes, preprocessing}
    of the best trial (or of COMPLETE trial `number`: a study with several objectives has no single best) to
    `out` (atomically)."""
    config = stored_config(storage, name)
    trial = best_frozen_trial(storage, name) if number is None else complete_trial(storage, name, number)
    checkpoints = checkpoint_place(storage, name).trial(lineage_number(trial))
    state = checkpoints.load_latest()
    if state is None:
        raise TunerError(f"no checkpoint of trial {trial.number} under {checkpoints.path}: this host does not see "
                         "the folder its worker wrote to (set TUNER_CHECKPOINT_DIR to where it is mounted here)")
    # what the trial trained on, as its worker recorded it: no data needed here, and a folder changed since
    # cannot change the export (trials from before the record: the prepared data as it is now)
    record = trial.user_attrs.get("data") or data_record(prepare(config.task), config.task)
    hp = hparams_from_params(config.space, trial.params)
    payload = {"model": state["model"], "hparams": dataclasses.asdict(hp), "config": config.to_dict(),
               "trial": trial.number, "value": trial.values[0], "epoch": state["epoch"],
               "num_classes": trial.user_attrs.get("num_classes"), "image_shape": trial.user_attrs.get("image_shape"),
               "classes": list(record["classes"]), "preprocessing": record["preprocessing"]}
    if config.pruner.get("type") == "pbt":  # the params of each segment the exported weights trained through
        payload["schedule"] = schedule(trial, storage.get_all_trials(storage.get_study_id_from_name(name)))
    try:
        save_atomic(payload, out)
    except OSError as exc:  # a folder, a missing or read-only directory: the user's path, one line
        raise TunerError(f"cannot write {out}: {exc.strerror or exc}") from None
    return payload


@dataclass
class Exported:
    """An exported model, ready to use: `predict(images)` takes raw images and returns class indices."""

    model: nn.Module  # in eval mode, on the CPU
    config: StudyConfig
    hparams: HParams
    classes: list[str]
    preprocessing: dict[str, Any]

    def preprocess(self, images: Any) -> torch.Tensor:
        """Raw images -> the normalised float batch the model was validated on (the same resize and centre
        crop as the prepared cache, then the centre crop and normalisation of evaluation)."""
        from PIL import Image

        from tuner.data.sources import fit_image

        p = self.preprocessing
        if isinstance(images, Image.Image):  # one image
            images = [images]
        if isinstance(images, torch.Tensor):  # uint8 (N, C, H, W), torchvision's layout
            images = [Image.fromarray(x.permute(1, 2, 0).squeeze(-1).numpy()) for x in images]
        elif isinstance(images, np.ndarray):  # uint8 (N, H, W) or (N, H, W, C), as PIL gives them
            if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
                images = images.transpose(0, 2, 3, 1)  # (N, C, H, W), as a dataset loader returns them
            images = [Image.fromarray(x.squeeze(-1) if x.ndim == 3 and x.shape[-1] == 1 else x) for x in images]
        elif not all(isinstance(image, Image.Image) for image in images):
            raise TypeError("predict() takes a PIL image, a list of PIL images, or a uint8 array/tensor of images")
        batch = np.stack([fit_image(image, p["stored_size"], p["channels"]) for image in images])
        # evaluation's own centre crop and normalisation, as the validation batches had them
        return Augment("none", p["stored_size"], p["train_size"], p["mean"], p["std"]).eval(torch.from_numpy(batch))

    @torch.no_grad()
    def predict(self, images: Any) -> torch.Tensor:
        """Class indices (an int64 tensor, one per image; `classes[i]` names them) for a PIL image, a list of
        them, or a uint8 array (N, H, W[, C]) / tensor (N, C, H, W) of images."""
        return self.model(self.preprocess(images)).argmax(1)


def load_exported(path: Path) -> Exported:
    """Rebuild the exported model (in eval mode) from a file written by export_best."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = parse_config(payload["config"], f"exported config in {path}")
    hp = HParams(**payload["hparams"])
    # The export holds every weight: build without pretrained weights, then load them all.
    model = build_model(config.task.model, "none", hp, tuple(payload["image_shape"]), payload["num_classes"])
    model.load_state_dict(payload["model"])
    return Exported(model.eval(), config, hp, payload["classes"], payload["preprocessing"])
