"""The prepared-data cache: a dataset decoded once into uint8 files that numpy memory-maps.

CACHE/<dataset>-<key>/ holds images.npy (N, C, S, S) uint8, labels.npy, train.npy / val.npy / test.npy (indices)
and meta.json (classes, sizes, the training split's per-channel statistics, each file's byte size), written
last. The key hashes the source's fingerprint (its files' names, sizes and mtimes; the split; the sizes), so a
changed folder is prepared again under a new key.

Preparing takes a file lock, so eight workers starting together on one host prepare once and the others wait and
then use it. It streams: images are written into the memory-mapped file one by one, never held in memory
together. It builds in a temporary folder renamed into place at the end, so a crash leaves no half cache under
the key; a cache whose files do not match meta.json (truncated, missing, garbled header) is rebuilt, never
trained on.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuner.spec.config import TaskSection
from tuner.data.sources import Source, fingerprint, open_source

FORMAT = 1  # bump when the layout changes: old caches are then simply not found
SPLITS = ("train", "val", "test")
_log = logging.getLogger(__name__)


def cache_root() -> Path:
    """$TUNER_DATA_CACHE, else $XDG_CACHE_HOME/tuner/data, else ~/.cache/tuner/data."""
    if os.environ.get("TUNER_DATA_CACHE"):
        return Path(os.environ["TUNER_DATA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuner" / "data"


@dataclass(frozen=True)
class Prepared:
    """An opened cache: memory-mapped arrays (nothing is read until it is indexed)."""

    path: Path
    images: np.ndarray  # (N, C, S, S) uint8, memory-mapped
    labels: np.ndarray  # (N,) int64
    splits: dict[str, np.ndarray]  # split -> sorted indices into images
    classes: list[str]
    train_size: int  # side the model sees; images are stored at images.shape[-1] >= train_size
    mean: tuple[float, ...]  # per channel, of the training split, in 0..1
    std: tuple[float, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """What the model sees: (C, train_size, train_size)."""
        return (self.images.shape[1], self.train_size, self.train_size)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def nbytes(self, split: str) -> int:
        return len(self.splits[split]) * int(np.prod(self.images.shape[1:]))


def _key(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **fingerprint}, sort_keys=True).encode()).hexdigest()[:16]


def _files(folder: Path) -> list[Path]:
    return [folder / "images.npy", folder / "labels.npy"] + [folder / f"{s}.npy" for s in SPLITS]


def open_prepared(folder: Path) -> Prepared | None:
    """The cache in folder, or None if it is missing, incomplete or does not match its meta.json."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        for path in _files(folder):
            if path.stat().st_size != meta["bytes"][path.name]:
                _log.warning("prepared data %s: %s has the wrong size; preparing again", folder, path.name)
                return None
        arrays = {p.stem: np.load(p, mmap_mode="r") for p in _files(folder)}
        if arrays["images"].shape != tuple(meta["shape"]) or arrays["images"].dtype != np.uint8:
            return None
        small = hashlib.sha256(b"".join(np.ascontiguousarray(arrays[k]).tobytes()
                                        for k in ("labels", *SPLITS))).hexdigest()
        if small != meta["index_sha256"]:
            _log.warning("prepared data %s: labels or split indices are garbled; preparing again", folder)
            return None
    except (OSError, ValueError, KeyError) as exc:  # absent, half written, not JSON, not .npy
        if (folder / "meta.json").exists():
            _log.warning("prepared data %s is unreadable (%s); preparing again", folder, type(exc).__name__)
        return None
    return Prepared(folder, arrays["images"], np.array(arrays["labels"]),  # small: copied out of the file
                    {s: np.array(arrays[s]) for s in SPLITS}, meta["classes"], meta["train_size"],
                    tuple(meta["mean"]), tuple(meta["std"]))


def _build(source: Source, folder: Path, progress: Callable[[int, int], None] | None) -> None:
    """Stream every image into folder/images.npy (memory-mapped) and write the rest; meta.json last."""
    folder.mkdir(parents=True)
    n, c, s = len(source), source.channels, source.size
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8, shape=(n, c, s, s))
    train = set(source.splits["train"].tolist())
    total, squares = np.zeros(c), np.zeros(c)  # per-channel sums over the training split, in float64
    # PIL decodes and resizes with the GIL released: a few threads keep a core or two busy on a big folder.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, n, 256):
            chunk = range(start, min(n, start + 256))
            for i, image in zip(chunk, pool.map(source.read, chunk)):
                images[i] = image
                if i in train:
                    pixels = image.reshape(c, -1).astype(np.float64) / 255
                    total += pixels.mean(1)
                    squares += (pixels ** 2).mean(1)
            if progress:
                progress(chunk.stop, n)
    images.flush()
    del images
    np.save(folder / "labels.npy", source.labels)
    for split in SPLITS:
        np.save(folder / f"{split}.npy", source.splits[split].astype(np.int64))
    n_train = max(1, len(train))
    mean = total / n_train
    std = np.sqrt(np.maximum(squares / n_train - mean ** 2, 0)) + 1e-6
    index_sha = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in
                                        [source.labels] + [source.splits[s].astype(np.int64) for s in SPLITS]))
    meta = {"format": FORMAT, "source": source.fingerprint, "classes": source.classes, "shape": [n, c, s, s],
            "train_size": source.train_size, "mean": mean.tolist(), "std": std.tolist(),
            "counts": {split: len(source.splits[split]) for split in SPLITS},
            "bytes": {p.name: p.stat().st_size for p in _files(folder)}, "index_sha256": index_sha.hexdigest(),
            "prepared_by_pid": os.getpid(), "prepared_at": time.time()}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def prepare(task: TaskSection, progress: Callable[[int, int], None] | None = None) -> Prepared:
    """The task's prepared data, preparing it first if no valid cache has its key. Safe to call from many
    processes at once: one prepares, the others wait for the lock and then open its result."""
    root = cache_root()
    folder = root / f"{task.dataset}-{_key(fingerprint(task))}"
    found = open_prepared(folder)
    if found is not None:
        return found
    source = open_source(task)  # reads the dataset's index (and checks it): only when preparing
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        found = open_prepared(folder)  # another process may have prepared it while we waited
        if found is not None:
            return found
        _log.info("preparing %s (%d images at %d px) into %s", task.dataset, len(source), source.size, folder)
        shutil.rmtree(folder, ignore_errors=True)  # an invalid cache under this key
        building = root / f".{folder.name}.building-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        try:
            _build(source, building, progress)
            os.replace(building, folder)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    prepared = open_prepared(folder)
    if prepared is None:  # only if the disk lies to us
        raise OSError(f"the prepared data in {folder} does not read back")
    return prepared
