"""Datasets as in-memory tensors with a fixed, seeded, stratified train/validation split.

digits (bundled with scikit-learn), synthetic (for tests and benchmarks), imagefolder (your images), and
cifar10/cifar100 (torchvision's classes; `download = true` fetches them where there is internet).
"""

from __future__ import annotations

from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlsplit

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from tuner.config import TaskSection
from tuner.errors import TunerError

# torchvision's ImageNet weights expect inputs normalised with these (weights.transforms() says the same)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Data:
    x_train: torch.Tensor  # (N, C, H, W) float32, normalised
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


def _make_synthetic(task: TaskSection) -> tuple[np.ndarray, np.ndarray]:
    """Learnable random images: each class has its own mean pattern, plus noise. Seeded by split_seed."""
    rng = np.random.default_rng(task.split_seed)
    size = task.image_size
    patterns = rng.normal(0, 1, (task.num_classes, 3, size, size)).astype(np.float32)
    labels = rng.integers(0, task.num_classes, task.num_samples)
    noise = rng.normal(0, 2, (task.num_samples, 3, size, size)).astype(np.float32)
    return patterns[labels] + noise, labels.astype(np.int64)


def _folder_classes(root: Path) -> list[str]:
    if not root.is_dir():
        raise TunerError(f"task.data_dir: {str(root)!r} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise TunerError(f"task.data_dir: {str(root)!r} needs one sub-folder per class, with at least two "
                         f"classes; found {classes or 'none'}")
    return classes


def _read_folder(root: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """torchvision's ImageFolder, resized to size x size RGB, as arrays in [0, 1]."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    classes = _folder_classes(root)
    to_array = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True),
                           v2.ToDtype(torch.float32, scale=True)])
    folder = ImageFolder(str(root), transform=to_array)  # its default loader converts to RGB
    if len(folder) == 0:
        raise TunerError(f"task.data_dir: {str(root)!r} has class folders but no images")
    images = torch.stack([image for image, _ in folder]).numpy()
    return images, np.asarray(folder.targets, dtype=np.int64), classes


def _net_reason(exc: Exception) -> str:
    """'Name or service not known' rather than URLError's nested repr."""
    reason = getattr(exc, "reason", exc)  # URLError wraps the socket error
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def _load_cifar(task: TaskSection) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if task.dataset == "cifar10" else CIFAR100
    try:
        train = cls(root=task.data_dir, train=True, download=task.download)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted. You can use download=True"
        raise TunerError(f"task.data_dir: {task.dataset} not found under {task.data_dir!r}; set "
                         "task.download = true (needs internet) or put the extracted archive there") from None
    except (URLError, HTTPException, ConnectionError, TimeoutError) as exc:  # no network, a proxy, a firewall
        host = urlsplit(cls.url).hostname
        raise TunerError(f"task.download: cannot download {task.dataset} from {host} ({_net_reason(exc)}); "
                         f"download {cls.filename} on a machine with internet and put it in task.data_dir "
                         f"{task.data_dir!r}") from None
    images = train.data.astype(np.float32).transpose(0, 3, 1, 2) / 255.0  # (N, 32, 32, 3) uint8 -> NCHW
    return images, np.asarray(train.targets, dtype=np.int64)


def _split(x: np.ndarray, y: np.ndarray, task: TaskSection) -> tuple[np.ndarray, ...]:
    return train_test_split(x, y, test_size=task.val_fraction, random_state=task.split_seed, stratify=y)


def _normalise(x_tr: np.ndarray, x_va: np.ndarray, imagenet: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pretrained weights: ImageNet statistics; otherwise the training split's own, per channel."""
    if imagenet and x_tr.shape[1] == 3:
        mean = np.asarray(IMAGENET_MEAN, np.float32)[None, :, None, None]
        std = np.asarray(IMAGENET_STD, np.float32)[None, :, None, None]
    else:
        mean = x_tr.mean(axis=(0, 2, 3), keepdims=True)
        std = x_tr.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray((a - mean) / std, dtype=np.float32))  # noqa: E731
    return as_tensor(x_tr), as_tensor(x_va)


def load_data(task: TaskSection) -> Data:
    """Load the task's dataset and split it the same way in every worker and every trial."""
    if task.dataset == "imagefolder":
        root = Path(task.data_dir)
        if (root / "train").is_dir() and (root / "val").is_dir():  # the user's own split
            x_tr, y_tr, classes = _read_folder(root / "train", task.image_size)
            x_va, y_va, val_classes = _read_folder(root / "val", task.image_size)
            if val_classes != classes:
                raise TunerError(f"task.data_dir: train/ and val/ of {str(root)!r} have different classes")
        else:
            x, y, classes = _read_folder(root, task.image_size)
            x_tr, x_va, y_tr, y_va = _split(x, y, task)
        num_classes = len(classes)
    else:
        if task.dataset == "digits":
            x, y = _load_digits()
        elif task.dataset == "synthetic":
            x, y = _make_synthetic(task)
        else:
            x, y = _load_cifar(task)
        x_tr, x_va, y_tr, y_va = _split(x, y, task)
        num_classes = int(y.max()) + 1
    x_train, x_val = _normalise(x_tr, x_va, imagenet=task.weights != "none")
    return Data(x_train, torch.from_numpy(np.asarray(y_tr)), x_val, torch.from_numpy(np.asarray(y_va)),
                num_classes)
