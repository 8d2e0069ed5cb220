"""Datasets as tensors: a fixed, seeded, stratified train/validation split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from tuner.config import TaskSection


@dataclass(frozen=True)
class Data:
    x_train: torch.Tensor  # (N, C, H, W) float32, normalised with the training set's statistics
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device) -> "Data":
        return Data(self.x_train.to(device), self.y_train.to(device), self.x_val.to(device),
                    self.y_val.to(device), self.num_classes)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 real images, no download."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # pixel values are 0..16
    return images[:, None, :, :], digits.target.astype(np.int64)


def load_data(task: TaskSection) -> Data:
    """Load the task's dataset and split it the same way in every worker and every trial."""
    x, y = _load_digits()
    x_tr, x_va, y_tr, y_va = train_test_split(
        x, y, test_size=task.val_fraction, random_state=task.split_seed, stratify=y
    )
    mean, std = x_tr.mean(), x_tr.std()
    to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return Data(
        x_train=to_tensor((x_tr - mean) / std),
        y_train=to_tensor(y_tr),
        x_val=to_tensor((x_va - mean) / std),
        y_val=to_tensor(y_va),
        num_classes=int(y.max()) + 1,
    )
