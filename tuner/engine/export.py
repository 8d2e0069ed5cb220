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
from tuner.fleet.imported import no_weights_here


def export_best(storage: optuna.storages.RDBStorage, name: str, out: Path, number: int | None = None
                ) -> dict[str, Any]:
    """Write {model, hparams, config, trial, value, epoch, num_classes, image_shape, classes, preprocessing}
    of the best trial (or of COMPLETE trial `number`: a study with several objectives has no single best) to
    `out` (atomically)."""
    config = stored_config(storage, name)
    trial = best_frozen_trial(storage, name) if number is None else complete_trial(storage, name, number)
    if no_weights_here(trial):
        raise TunerError(f"study {name!r}: {no_weights_here(trial)}")
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
        from tuner.data.sources import fit_image

        p = self.preprocessing
        pictures = _as_pil_images(images, self.config.task.dataset, (p["channels"], p["stored_size"]))
        batch = np.stack([fit_image(image, p["stored_size"], p["channels"]) for image in pictures])
        # evaluation's own centre crop and normalisation, as the validation batches had them
        return Augment("none", p["stored_size"], p["train_size"], p["mean"], p["std"]).eval(torch.from_numpy(batch))

    @torch.no_grad()
    def predict(self, images: Any) -> torch.Tensor:
        """Class indices (an int64 tensor, one per image; `classes[i]` names them). Takes images as they are
        stored: a PIL image or a path (or a list of them), or uint8 pixels 0-255 as a numpy array or torch tensor,
        (N, H, W), (N, H, W, C) or (N, C, H, W), one (H, W) image, or flat rows of H*W*C pixels. A float array is refused (its scale is a guess), as is a uint8
        one whose values stop at 1 or 16 (not 0-255 images) — except for a digits export, which takes
        scikit-learn's digits as load_digits() gives them (0-16, `.images` or `.data`) and scales them itself."""
        return self.model(self.preprocess(images)).argmax(1)


DIGITS_MAX = 16  # scikit-learn's digits: pixel values 0..16 (tuner.data.sources scales them to 0..255)


def _as_pil_images(images: Any, dataset: str, stored: tuple[int, int]) -> list:
    """What predict() accepts, as PIL images; anything that would silently be wrong is one clear error.
    `stored`: (channels, side) of the images the model was trained on, to read one image or flat rows."""
    from PIL import Image

    if isinstance(images, (Image.Image, str, Path)):
        images = [images]
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
        if images.ndim == 3 and images.shape[0] in (1, 3):  # one (C, H, W) image
            images = images[None]
        if images.ndim == 4 and images.shape[1] in (1, 3):  # torchvision's (N, C, H, W)
            images = images.transpose(0, 2, 3, 1)
    if isinstance(images, np.ndarray):
        return [Image.fromarray(x.squeeze(-1) if x.ndim == 3 and x.shape[-1] == 1 else x)
                for x in _batch(_pixels(images, dataset), stored)]
    out = []
    for image in images:
        if isinstance(image, (str, Path)):
            with Image.open(image) as opened:
                image = opened.copy()
        if not isinstance(image, Image.Image):
            raise TypeError("predict() takes PIL images, image paths, or uint8 arrays/tensors of 0-255 pixels; got "
                            f"a list holding {type(image).__name__}")
        out.append(image)
    return out


def _batch(images: np.ndarray, stored: tuple[int, int]) -> np.ndarray:
    """(N, H, W[, C]) from one image or flat rows: a 2-D array is one (H, W) image, unless its rows are flat images
    of the trained size (load_digits().data); a 1-D array is one flat image. Anything else is one clear error."""
    channels, side = stored
    flat = channels * side * side
    if images.ndim == 1 and images.size == flat:
        return images.reshape((1, side, side, channels) if channels > 1 else (1, side, side))
    if images.ndim == 2 and images.shape[1] == flat and images.shape != (side, side):
        return images.reshape((-1, side, side, channels) if channels > 1 else (-1, side, side))
    if images.ndim == 2:
        return images[None]
    if images.ndim not in (3, 4):
        raise ValueError(f"predict() takes images shaped (N, H, W), (N, H, W, C), (N, C, H, W), one (H, W) image "
                         f"or flat rows of {flat} pixels; got shape {images.shape}")
    return images


def _pixels(images: np.ndarray, dataset: str) -> np.ndarray:
    """uint8 pixels 0-255, from what the caller passed (any shape; _batch reads it)."""
    if dataset == "digits" and images.size and images.min() >= 0 and 1 < images.max() <= DIGITS_MAX:
        return np.round(images.astype(np.float64) * (255 / DIGITS_MAX)).astype(np.uint8)
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # (N, C, H, W), as a dataset loader returns them
    if images.dtype != np.uint8:
        raise TypeError(f"predict() takes uint8 pixels 0-255, got a {images.dtype} array: convert it as your images "
                        "were stored (e.g. (x * 255).round().astype('uint8') for 0-1 floats)")
    if images.size and images.max() <= DIGITS_MAX:
        raise ValueError(f"predict() takes 0-255 images, but these uint8 pixels stop at {images.max()}: scale them "
                         "to 0-255 first")
    return images


def load_exported(path: Path) -> Exported:
    """Rebuild the exported model (in eval mode) from a file written by export_best."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = parse_config(payload["config"], f"exported config in {path}")
    hp = HParams(**payload["hparams"])
    # The export holds every weight: build without pretrained weights, then load them all.
    model = build_model(config.task.model, "none", hp, tuple(payload["image_shape"]), payload["num_classes"])
    model.load_state_dict(payload["model"])
    return Exported(model.eval(), config, hp, payload["classes"], payload["preprocessing"])
