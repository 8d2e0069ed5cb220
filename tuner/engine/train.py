"""Plain PyTorch training: fit() knows nothing about Optuna.

The objective passes an ``on_epoch_end`` callback (report / checkpoint / prune) and a ``should_stop``
predicate (signals); resuming takes the state dict that ``snapshot()`` produced. Batches come from
tuner/data (resident or streamed, augmented on the device); fit() only asks for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from tuner.data.loader import Batches
from tuner.errors import Interrupted, TrialFailed


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    batch_size: int
    lr: float  # peak learning rate; cosine-annealed to 0 at the last epoch
    weight_decay: float  # decoupled: AdamW-style, not scaled into the gradient
    optimizer: str  # adamw | sgd
    seed: int  # shuffling order (the model's init is seeded by the caller)
    precision: str = "fp32"  # bf16: forward passes under bf16 autocast (weights and optimizer stay fp32)
    distill_alpha: float = 0.0  # with a teacher: loss = (1 - a) * cross-entropy + a * T^2 * KL(teacher || student)
    distill_temperature: float = 4.0  # T: both sets of logits divided by it before the softmax
    prune_amount: float = 0.0  # share of conv/linear weights zeroed at prune_epoch(), kept zero after
    label_smoothing: float = 0.0  # cross-entropy against (1 - s) * one-hot + s / classes
    momentum: float = 0.9  # SGD (Nesterov when > 0)
    warmup_epochs: int = 0  # linear warm-up from lr / (warmup_epochs + 1), then the cosine over the rest


def prune_epoch(epochs: int) -> int:
    """The epoch at whose start the weights are pruned: the last quarter of the epochs (at least one)
    fine-tunes the pruned model, so the reported accuracy is the pruned model's."""
    return epochs - max(1, epochs // 4) + 1


def _prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad]


def prune_weights(model: nn.Module, amount: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zero the `amount` share of smallest-magnitude conv/linear weights, globally across layers
    (torch.nn.utils.prune), made permanent at once so the state dict keeps its keys; returns (weight, mask)
    pairs that keep them zero while the rest fine-tune."""
    params = _prunable(model)
    if amount > 0:
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        for module, name in params:
            prune.remove(module, name)  # the same Parameter object, now holding the zeros: the optimizer keeps it
    return _masks(model)


def _masks(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A pruned model's masks, read back from its zeros (so a resumed trial needs no extra state)."""
    return [(m.weight, m.weight != 0) for m, _ in _prunable(model)]


def distillation_loss(logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor,
                      alpha: float, temperature: float) -> torch.Tensor:
    """Hinton et al.'s mix: cross-entropy on the labels and the KL divergence to the teacher's softened
    outputs, scaled by T^2 so its gradients keep their size whatever the temperature."""
    hard = F.cross_entropy(logits, target)
    student = F.log_softmax(logits.float() / temperature, 1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, 1)
    soft = F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2
    return (1 - alpha) * hard + alpha * soft


def autocast(device: torch.device, precision: str):
    """The forward pass's precision: bf16 autocast (no loss scaling needed, unlike fp16), or plain fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


EpochCallback = Callable[[int, dict[str, float], Callable[[], dict[str, Any]]], None]


def _make_optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]  # frozen backbone stages stay as they are
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _set_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                         cfg: FitConfig) -> None:
    """After loading a checkpoint: this run's lr, weight decay and momentum, not the ones saved with the optimizer
    (the same for a retry or a promotion; new ones for a PBT segment). The lr keeps its place on the schedule:
    the saved lr over the saved peak is the schedule's factor now, applied to the new peak."""
    for group in optimizer.param_groups:
        if group.get("initial_lr") and group["initial_lr"] != cfg.lr:  # unchanged: the saved lr stays bit for bit
            group["lr"] = cfg.lr * group["lr"] / group["initial_lr"]
            group["initial_lr"] = cfg.lr
        group["weight_decay"] = cfg.weight_decay
        if "momentum" in group:
            group["momentum"] = cfg.momentum
    for part in getattr(scheduler, "_schedulers", [scheduler]):  # SequentialLR holds warm-up then cosine
        part.base_lrs = [cfg.lr for _ in optimizer.param_groups]


def _make_scheduler(optimizer: torch.optim.Optimizer, cfg: FitConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch: cosine annealing to 0 at the last epoch, after any linear warm-up."""
    lr = torch.optim.lr_scheduler
    if not cfg.warmup_epochs:
        return lr.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    warmup = lr.LinearLR(optimizer, start_factor=1 / (cfg.warmup_epochs + 1), total_iters=cfg.warmup_epochs)
    cosine = lr.CosineAnnealingLR(optimizer, T_max=cfg.epochs - cfg.warmup_epochs)
    return lr.SequentialLR(optimizer, [warmup, cosine], milestones=[cfg.warmup_epochs])


@torch.no_grad()
def evaluate(model: nn.Module, data: Batches, split: str = "val", precision: str = "fp32") -> dict[str, float]:
    """Accuracy (0..1) and mean cross-entropy loss on a split: val_accuracy/val_loss, or test_..."""
    model.eval()
    # summed on the device, read once at the end: no host synchronisation per batch
    correct = torch.zeros((), dtype=torch.long, device=data.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.device)
    n = 0
    for x, target in data.evaluate(split):
        with autocast(data.device, precision):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
        n += len(target)
    correct, loss_sum = correct.item(), loss_sum.item()
    n = max(n, 1)
    return {f"{split}_accuracy": correct / n, f"{split}_loss": loss_sum / n}


def fit(
    model: nn.Module,
    data: Batches,
    cfg: FitConfig,
    on_epoch_end: EpochCallback,
    *,
    resume: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train for cfg.epochs (epochs are numbered from 1) and return the last epoch's metrics. `teacher` (logits
    for a batch) adds distillation; cfg.prune_amount prunes the weights at prune_epoch()."""
    optimizer = _make_optimizer(model, cfg)
    scheduler = _make_scheduler(optimizer, cfg)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    first_epoch, metrics = 1, {}
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        shuffle.set_state(resume["shuffle_rng"])
        torch.set_rng_state(resume["torch_rng"])
        first_epoch = resume["epoch"] + 1
        _set_hyperparameters(optimizer, scheduler, cfg)
    pruning_at = prune_epoch(cfg.epochs) if cfg.prune_amount > 0 else None
    masks = _masks(model) if pruning_at is not None and first_epoch > pruning_at else []
    loss_fn = _loss(cfg, teacher)

    for epoch in range(first_epoch, cfg.epochs + 1):
        if epoch == pruning_at:
            masks = prune_weights(model, cfg.prune_amount)
        # train one epoch (the lr for it was set by the scheduler step at the end of the last one)
        loss_sum = _train_epoch(model, data, cfg, optimizer, shuffle, loss_fn, masks, should_stop, epoch)
        if not math.isfinite(loss_sum):
            raise TrialFailed(f"training loss is {loss_sum} in epoch {epoch}")
        scheduler.step()

        # evaluate, then hand the result to the caller (report / checkpoint / prune)
        metrics = evaluate(model, data, precision=cfg.precision)

        def snapshot(epoch: int = epoch) -> dict[str, Any]:
            return {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "shuffle_rng": shuffle.get_state(),
                    "torch_rng": torch.get_rng_state()}

        on_epoch_end(epoch, metrics, snapshot)
    return metrics


def _loss(cfg: FitConfig, teacher: Callable[[torch.Tensor], torch.Tensor] | None
          ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """(logits, labels, images) -> the training loss: cross-entropy, or distillation from `teacher`."""
    if teacher is None or cfg.distill_alpha <= 0:
        return lambda logits, y, x: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)

    def distilled(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(x)
        return distillation_loss(logits, y, teacher_logits, cfg.distill_alpha, cfg.distill_temperature)

    return distilled


def _train_epoch(model: nn.Module, data: Batches, cfg: FitConfig, optimizer: torch.optim.Optimizer,
                 shuffle: torch.Generator, loss_fn: Callable, masks: list, should_stop: Callable[[], bool],
                 epoch: int) -> float:
    """One pass over the training data; returns the summed loss (checked once per epoch: a per-step .item()
    would stall a GPU)."""
    model.train()
    # one CPU generator draws the order and the augmentation: the same seed, the same batches anywhere
    order = torch.randperm(data.num_train, generator=shuffle)
    loss_sum = torch.zeros((), device=data.device)
    for x, y in data.train(order, cfg.batch_size, shuffle):
        if should_stop():
            raise Interrupted(f"stopped during epoch {epoch}")
        with autocast(data.device, cfg.precision):
            loss = loss_fn(model(x), y, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if masks:
            with torch.no_grad():
                for weight, mask in masks:
                    weight.mul_(mask)  # pruned weights stay zero while the rest fine-tune
        loss_sum += loss.detach()
    return loss_sum.item()
