"""Checks on the launching host that the data, weights and plug-ins a study names are there, before anything is
stored.

Cheap looks only (folders, file names), no image is decoded. Where only the workers can see the paths
(a cluster mount), `launch-study --no-check` skips them and the workers report a bad path instead.
"""

from __future__ import annotations

from pathlib import Path

from tuner.spec.sections import TaskSection
from tuner.errors import TunerError
from tuner.spec.plugins import is_plugin, load_plugin

_HINT = "on this host; pass --no-check if only the workers can see it"


def _fail(field: str, value: str, problem: str) -> TunerError:
    return TunerError(f"task.{field}: {value!r} {problem} {_HINT}")


def _class_folders(root: Path, value: str) -> list[Path]:
    if not root.is_dir():
        raise _fail("data_dir", value, "is not a directory")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise _fail("data_dir", value, f"needs one sub-folder per class (at least two), found {len(classes)}")
    return classes


def _check_imagefolder(value: str) -> None:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(value)
    splits = [root / "train", root / "val"]
    for folder in splits if all(s.is_dir() for s in splits) else [root]:
        classes = _class_folders(folder, str(folder))
        if not any(f.suffix.lower() in IMG_EXTENSIONS for f in classes[0].iterdir()):
            raise _fail("data_dir", str(classes[0]), "has no image files")


def _check_cifar(dataset: str, value: str) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100

    folder = (CIFAR10 if dataset == "cifar10" else CIFAR100).base_folder  # what torchvision extracts to
    if not (Path(value) / folder).is_dir():
        raise _fail("data_dir", value, f"has no {folder}/ (the extracted archive; task.download = true "
                    "fetches it)")


def check_task_paths(task: TaskSection) -> None:
    """One TunerError naming the field and value if the task's data or weights are not where it says."""
    if task.weights not in ("none", "imagenet") and not Path(task.weights).is_file():
        raise _fail("weights", task.weights, "is not a file")
    if task.teacher and not Path(task.teacher).is_file():
        raise _fail("teacher", task.teacher, "is not a file")
    for field in ("model", "dataset"):  # imported once here, so a misspelt name is one line before any storing
        if is_plugin(getattr(task, field)):
            load_plugin(getattr(task, field), field)
    if task.dataset == "imagefolder":
        _check_imagefolder(task.data_dir)
    elif task.dataset in ("cifar10", "cifar100") and not task.download:
        _check_cifar(task.dataset, task.data_dir)
