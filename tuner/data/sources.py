"""Where a dataset's images come from, before they are prepared into the cache (tuner/data/cache.py).

A Source says which images form train, val and test, and yields each one as uint8 (C, S, S) at the stored size,
one at a time, so a folder of any size is never decoded into memory at once. Its `fingerprint` is what the cache
key covers: the source itself, its files' names/sizes/mtimes, and the split settings.

digits (bundled with scikit-learn), synthetic (for tests and benchmarks), imagefolder (your images: one folder
per class, or train/ val/ [test/] holding those), cifar10/cifar100 (torchvision's classes; `download = true`
fetches them where there is internet; the official test set is the test split).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlsplit

import numpy as np

from tuner.spec.config import TaskSection
from tuner.errors import TunerError
from tuner.spec.plugins import is_plugin, load_plugin

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
PAD_CROP_MAX_PX = 64  # px: at or below this, augmentation pads and crops; above, it takes random resized crops
LARGE_IMAGE_MARGIN = 8 / 7  # stored size of large images: 256 px for a 224 px training size, as ImageNet does


def stored_size(train_size: int) -> int:
    """The side the cache stores: the training size, plus a crop margin for large images."""
    return train_size if train_size <= PAD_CROP_MAX_PX else round(train_size * LARGE_IMAGE_MARGIN)


@dataclass
class Source:
    classes: list[str]
    channels: int
    train_size: int  # the side the model sees
    splits: dict[str, np.ndarray]  # split name -> indices into the items
    labels: np.ndarray  # int64, one per item
    read: Callable[[int], np.ndarray]  # item index -> uint8 (C, S, S) at the stored size
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return stored_size(self.train_size)

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, order: np.ndarray) -> Iterator[np.ndarray]:
        for i in order:
            yield self.read(int(i))


def _seeded_splits(labels: np.ndarray, task: TaskSection, test_given: bool) -> dict[str, np.ndarray]:
    """Stratified, seeded: test first (unless the data has its own), then val from the rest."""
    from sklearn.model_selection import train_test_split

    everything = np.arange(len(labels))
    if test_given or task.test_fraction == 0:
        rest, test = everything, np.zeros(0, np.int64)
    else:
        rest, test = train_test_split(everything, test_size=task.test_fraction, random_state=task.split_seed,
                                      stratify=labels)
    train, val = train_test_split(rest, test_size=task.val_fraction, random_state=task.split_seed,
                                  stratify=labels[rest])
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _array_source(images: np.ndarray, labels: np.ndarray, task: TaskSection, classes: list[str],
                  test: tuple[np.ndarray, np.ndarray] | None = None) -> Source:
    """Datasets that arrive as uint8 arrays (N, C, H, W) at their own size; an own test set is appended."""
    splits = _seeded_splits(labels, task, test_given=test is not None)
    if test is not None:
        splits["test"] = np.arange(len(labels), len(labels) + len(test[1]))
        images, labels = np.concatenate([images, test[0]]), np.concatenate([labels, test[1]])
    return Source(classes=classes, channels=images.shape[1], train_size=images.shape[2], splits=splits,
                  labels=labels.astype(np.int64), read=lambda i: images[i])


def _digits(task: TaskSection) -> Source:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 real images, no download."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # pixel values are 0..16
    return _array_source(images, digits.target, task, [str(d) for d in range(10)])


def _synthetic(task: TaskSection) -> Source:
    """Learnable random images: each class has its own mean pattern, plus noise. Seeded by split_seed."""
    rng = np.random.default_rng(task.split_seed)
    size = stored_size(task.image_size)  # drawn at the stored size: large ones have a crop margin, like photos
    patterns = rng.normal(0, 1, (task.num_classes, 3, size, size)).astype(np.float32)
    labels = rng.integers(0, task.num_classes, task.num_samples)

    def read(i: int) -> np.ndarray:  # noise drawn per image from its own seed: any image, in any order
        noise = np.random.default_rng([task.split_seed, i]).normal(0, 2, (3, size, size))
        return np.clip(128 + 20 * (patterns[labels[i]] + noise), 0, 255).astype(np.uint8)

    splits = _seeded_splits(labels, task, test_given=False)
    return Source(classes=[str(c) for c in range(task.num_classes)], channels=3, train_size=task.image_size,
                  splits=splits, labels=labels.astype(np.int64), read=read)


def _net_reason(exc: Exception) -> str:
    """'Name or service not known' rather than URLError's nested repr."""
    reason = getattr(exc, "reason", exc)  # URLError wraps the socket error
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def _cifar(task: TaskSection) -> Source:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if task.dataset == "cifar10" else CIFAR100
    try:
        train = cls(root=task.data_dir, train=True, download=task.download)
        test = cls(root=task.data_dir, train=False, download=task.download)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted. You can use download=True"
        raise TunerError(f"task.data_dir: {task.dataset} not found under {task.data_dir!r}; set "
                         "task.download = true (needs internet) or put the extracted archive there") from None
    except (URLError, HTTPException, ConnectionError, TimeoutError) as exc:  # no network, a proxy, a firewall
        host = urlsplit(cls.url).hostname
        raise TunerError(f"task.download: cannot download {task.dataset} from {host} ({_net_reason(exc)}); "
                         f"download {cls.filename} on a machine with internet and put it in task.data_dir "
                         f"{task.data_dir!r}") from None
    nchw = lambda d: np.ascontiguousarray(d.data.transpose(0, 3, 1, 2))  # noqa: E731  (N, 32, 32, 3) uint8
    return _array_source(nchw(train), np.asarray(train.targets), task, list(train.classes),
                         test=(nchw(test), np.asarray(test.targets, np.int64)))


def _class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise TunerError(f"task.data_dir: {str(root)!r} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise TunerError(f"task.data_dir: {str(root)!r} needs one sub-folder per class, with at least two "
                         f"classes; found {classes or 'none'}")
    return classes


def _image_files(root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    return files, labels


def _files_fingerprint(root: Path, kind: str) -> dict[str, Any]:
    """Names, sizes and mtimes of every file under root: a changed folder gets a new cache key."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            digest.update(f"{os.path.relpath(os.path.join(dirpath, name), root)}\0{st.st_size}\0{st.st_mtime_ns}\n"
                          .encode())
    return {"dataset": kind, "root": str(root.resolve()), "files": digest.hexdigest()}


def fit_image(image: Any, size: int, channels: int) -> np.ndarray:
    """A PIL image converted, its shorter side resized to `size` and centre-cropped: uint8 (C, size, size).
    The one preprocessing of stored images, used again by an exported model's predict()."""
    from PIL import Image, ImageOps

    image = ImageOps.fit(image.convert("RGB" if channels == 3 else "L"), (size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _read_image(path: Path, size: int, channels: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return fit_image(image, size, channels)
    except OSError as exc:
        raise TunerError(f"task.data_dir: cannot read image {str(path)!r} ({exc})") from None


def _imagefolder(task: TaskSection) -> Source:
    root = Path(task.data_dir)
    own_split = (root / "train").is_dir() and (root / "val").is_dir()
    parts = ["train", "val"] + (["test"] if (root / "test").is_dir() else []) if own_split else [""]
    classes = _class_folders(root / parts[0])
    files: list[Path] = []
    labels: list[int] = []
    splits: dict[str, np.ndarray] = {}
    for part in parts:
        if part and _class_folders(root / part) != classes:
            raise TunerError(f"task.data_dir: {part}/ of {str(root)!r} has other classes than train/")
        found, found_labels = _image_files(root / part, classes)
        if not found:
            raise TunerError(f"task.data_dir: {str(root / part)!r} has class folders but no images")
        splits[part] = np.arange(len(files), len(files) + len(found))
        files += found
        labels += found_labels
    labels_array = np.asarray(labels, np.int64)
    if not own_split:
        splits = _seeded_splits(labels_array, task, test_given=False)
    splits.setdefault("test", np.zeros(0, np.int64))  # train/ and val/ without test/: no held-out test split
    channels = 3
    size = stored_size(task.image_size)
    return Source(classes=classes, channels=channels, train_size=task.image_size, splits=splits,
                  labels=labels_array, read=lambda i: _read_image(files[i], size, channels))


NATIVE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32}  # datasets whose images have one size
CIFAR_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}  # torchvision's base_folder


def _own(task: TaskSection) -> Source:
    """A dataset of the user's own: `load(task)` returns uint8 arrays (see tuner/spec/plugins.py)."""
    where = f"task.dataset {task.dataset!r}"
    try:
        loaded = load_plugin(task.dataset, "dataset")(task)
    except TunerError:
        raise
    except Exception as exc:  # the user's loader failed: its message, one line (tuner prepare shows it first)
        raise TunerError(f"{where}: load(task) raised {type(exc).__name__}: {exc}") from None
    if not isinstance(loaded, dict) or not {"images", "labels", "classes"} <= set(loaded):
        raise TunerError(f"{where} must return a dict with images, labels and classes")
    images, labels = np.asarray(loaded["images"]), np.asarray(loaded["labels"])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise TunerError(f"{where}: images must be uint8 (N, C, S, S), got {images.dtype} {images.shape}")
    classes = [str(c) for c in loaded["classes"]]
    if len(labels) != len(images) or labels.min() < 0 or labels.max() >= len(classes):
        raise TunerError(f"{where}: labels must be one per image, in 0..{len(classes) - 1}; got {len(labels)} "
                         f"labels for {len(images)} images, in {labels.min()}..{labels.max()}")
    test = None
    if "test_images" in loaded:
        test = (np.asarray(loaded["test_images"], dtype=np.uint8), np.asarray(loaded["test_labels"]))
    source = _array_source(images, labels, task, classes, test)
    if source.size != images.shape[-1]:  # large images: stored with a crop margin, like a folder's
        from PIL import Image

        array_read, channels = source.read, images.shape[1]
        source.read = lambda i: fit_image(Image.fromarray(array_read(i).transpose(1, 2, 0).squeeze(-1)),
                                          source.size, channels)
    return source


def _own_fingerprint(task: TaskSection) -> dict[str, Any]:
    """The loader's module file (its content) and its "version"-free inputs: the task's data_dir files if set.
    A loader whose data changes elsewhere says so by its module changing, or by a new data_dir."""
    module = importlib.import_module(task.dataset.partition(":")[0])
    source = Path(module.__file__).read_bytes() if getattr(module, "__file__", None) else b""
    found = {"dataset": task.dataset, "module_sha": hashlib.sha256(source).hexdigest()[:16]}
    if task.data_dir:
        found["files"] = _files_fingerprint(Path(task.data_dir), "own")
    return found


def fingerprint(task: TaskSection) -> dict[str, Any]:
    """What the prepared cache of this task depends on, computed without decoding anything (a folder's file
    list is stat()ed), so a worker with a prepared cache opens it in milliseconds."""
    if is_plugin(task.dataset):
        found = _own_fingerprint(task)
    elif task.dataset == "imagefolder":
        found = _files_fingerprint(Path(task.data_dir), "imagefolder")
    elif task.dataset in CIFAR_FOLDER:
        found = _files_fingerprint(Path(task.data_dir) / CIFAR_FOLDER[task.dataset], task.dataset)
    elif task.dataset == "synthetic":
        found = {"dataset": "synthetic", "classes": task.num_classes, "n": task.num_samples}
    else:
        found = {"dataset": task.dataset}
    train_size = NATIVE_SIZE.get(task.dataset, task.image_size)  # a dataset of your own: task.image_size
    return {**found, "val_fraction": task.val_fraction, "test_fraction": task.test_fraction,
            "split_seed": task.split_seed, "train_size": train_size, "stored_size": stored_size(train_size)}


def open_source(task: TaskSection) -> Source:
    """The task's dataset as a Source; raises TunerError (one line) when it is missing or unreadable."""
    builtin = {"digits": _digits, "synthetic": _synthetic, "imagefolder": _imagefolder,
               "cifar10": _cifar, "cifar100": _cifar}
    source = _own(task) if is_plugin(task.dataset) else builtin[task.dataset](task)
    source.fingerprint = fingerprint(task)
    return source
