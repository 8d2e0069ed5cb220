"""Batches of prepared data on the training device: resident (copied there once, as uint8) or streamed.

Resident when the train and val splits fit the memory budget (`[task] resident_memory_gb`; 0 means half of the
GPU's free memory, or a quarter of the available RAM on the CPU). Otherwise streamed: a background thread reads
each batch's rows from the memory-mapped cache (page cache, not the process's own memory), pins them on CUDA and
copies them without blocking, a few batches ahead, so the process holds a few batches whatever the dataset's size.

Either way the batch arrives as uint8 and is augmented and normalised on the device (tuner/data/augment.py); the
same indices and generator give bit-identical batches both ways.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from tuner.spec.config import TaskSection
from tuner.data.augment import Augment
from tuner.data.cache import Prepared, prepare

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # pretrained backbones' statistics
PREFETCH = 3  # batches read ahead by the streaming thread
# Images per forward pass when evaluating (no gradients): large on a GPU for speed; on the CPU smaller, because
# the activations of a 1024-image batch dominate a CPU worker's peak memory.
EVAL_BATCH = {"cuda": 1024, "cpu": 256}
_log = logging.getLogger(__name__)


def memory_budget(task: TaskSection, device: torch.device) -> int:
    """Bytes of resident data allowed on `device`."""
    if task.resident_memory_gb > 0:
        return int(task.resident_memory_gb * 2**30)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemAvailable")))
        return available * 1024 // 4
    except (OSError, StopIteration):  # not Linux: assume a modest machine
        return 2 * 2**30


def _stream(images: np.ndarray, batches: list[np.ndarray], device: torch.device) -> Iterator[torch.Tensor]:
    """uint8 batches of rows `batches[k]` of the memory-mapped `images`, read ahead in a thread into a fixed
    ring of buffers (pinned on CUDA): the process's memory stays the same whatever the dataset's size."""
    if not batches:
        return
    ahead: queue.Queue = queue.Queue(maxsize=PREFETCH)  # bounded: the reader waits for training to catch up
    # A slot is refilled PREFETCH + 2 batches later: by then the consumer has augmented (copied) it, and on
    # CUDA the reader also waits for that slot's host-to-device copy to finish.
    shape = (max(len(b) for b in batches), *images.shape[1:])
    ring = [torch.empty(shape, dtype=torch.uint8, pin_memory=device.type == "cuda") for _ in range(PREFETCH + 2)]
    copied: list[torch.cuda.Event | None] = [None] * len(ring)
    stop = threading.Event()

    def read() -> None:
        try:
            for k, idx in enumerate(batches):
                if stop.is_set():
                    return
                slot = k % len(ring)
                if copied[slot] is not None:
                    copied[slot].synchronize()
                buffer = ring[slot][:len(idx)]
                sorted_idx = np.sort(idx)  # read in file order, then put the rows back in batch order
                # mode="clip": the indices are valid, and numpy then writes into `out` without a temporary
                np.take(images, sorted_idx, axis=0, out=buffer.numpy(), mode="clip")
                buffer.copy_(buffer[torch.from_numpy(np.searchsorted(sorted_idx, idx))])
                ahead.put((slot, buffer))
            ahead.put(None)
        except BaseException as exc:  # an unreadable cache file: raise it in the training thread
            ahead.put(exc)

    reader = threading.Thread(target=read, name="tuner-data-stream", daemon=True)
    reader.start()
    try:
        while (item := ahead.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            slot, buffer = item
            if device.type == "cuda":
                batch = buffer.to(device, non_blocking=True)
                copied[slot] = torch.cuda.Event()
                copied[slot].record()
                yield batch
            else:
                yield buffer  # the consumer augments it into a new tensor before it asks for the next
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue, then let it end
            try:
                ahead.get_nowait()
            except queue.Empty:
                reader.join(0.05)


class Batches:
    """The train/val/test batches of one prepared dataset on one device."""

    def __init__(self, prepared: Prepared, record: dict, device: torch.device, augment: Augment,
                 resident: bool):
        self.prepared, self.device, self.augment, self.resident = prepared, device, augment, resident
        self.record = record  # data_record(): what trials trained on
        self.labels = torch.from_numpy(prepared.labels).to(device)
        self.train_index = prepared.splits["train"]
        self._on_device: dict[str, torch.Tensor] = {}
        if resident:
            for split in ("train", "val"):  # copied once, as uint8; test is scored once, so it streams
                rows = np.ascontiguousarray(prepared.images[prepared.splits[split]])
                self._on_device[split] = torch.from_numpy(rows).to(device)

    @property
    def num_train(self) -> int:
        return len(self.train_index)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.prepared.image_shape

    @property
    def num_classes(self) -> int:
        return self.prepared.num_classes

    def _uint8(self, split: str, positions: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """uint8 batches for positions within `split` (one tensor of positions per batch)."""
        if split in self._on_device:
            data = self._on_device[split]
            for pos in positions:
                yield data[pos.to(self.device)]
        else:
            index = self.prepared.splits[split]
            yield from _stream(self.prepared.images, [index[pos.numpy()] for pos in positions], self.device)

    def train(self, order: torch.Tensor, batch_size: int, generator: torch.Generator
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Augmented training batches in `order` (a permutation of range(num_train), on the CPU). A last batch of
        one image joins the one before: batch norm cannot train on one value per channel (a backbone's last
        stages at a small image size are 1x1), which failed every trial whose batch size left one over."""
        positions = list(order.split(batch_size))
        if len(positions) > 1 and len(positions[-1]) == 1:
            positions[-2:] = [torch.cat(positions[-2:])]
        labels = self.labels[torch.from_numpy(self.train_index).to(self.device)]
        for pos, images in zip(positions, self._uint8("train", positions)):
            yield self.augment.train(images, generator), labels[pos.to(self.device)]

    def evaluate(self, split: str = "val", batch_size: int | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split's images in order, centre-cropped and normalised, with their labels."""
        batch_size = batch_size or EVAL_BATCH.get(self.device.type, 256)
        index = self.prepared.splits[split]
        positions = list(torch.arange(len(index)).split(batch_size))
        labels = self.labels[torch.from_numpy(index).to(self.device)]
        for pos, images in zip(positions, self._uint8(split, positions)):
            yield self.augment.eval(images), labels[pos.to(self.device)]


def open_batches(task: TaskSection, device: torch.device, *, resident: bool | None = None) -> Batches:
    """Prepare (or find) the task's cache and serve it on `device`; resident if it fits the budget."""
    prepared = prepare(task)
    if resident is None:
        need = prepared.nbytes("train") + prepared.nbytes("val")
        resident = need <= memory_budget(task, device)
        _log.info("data: %s, %.1f MB of train+val %s", prepared.path.name, need / 2**20,
                  "resident on " + str(device) if resident else "streamed from the memory-mapped cache")
    record = data_record(prepared, task)
    p = record["preprocessing"]
    augment = Augment(task.augment, p["stored_size"], p["train_size"], p["mean"], p["std"],
                      channels_last=device.type == "cuda")  # every model here is a convnet
    return Batches(prepared, record, device, augment, resident)


def data_record(prepared: Prepared, task: TaskSection) -> dict:
    """What a trial trained on, stored with it (user attribute `data`): the prepared data's key, the class names
    and the preprocessing. `tuner export` writes it into the file; `tuner evaluate` refuses data that changed."""
    imagenet = task.weights != "none" and prepared.images.shape[1] == 3
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else (prepared.mean, prepared.std)
    return {"key": prepared.path.name, "classes": list(prepared.classes),
            "preprocessing": {"channels": int(prepared.images.shape[1]), "stored_size": int(prepared.images.shape[-1]),
                              "train_size": prepared.train_size, "mean": list(mean), "std": list(std)}}
