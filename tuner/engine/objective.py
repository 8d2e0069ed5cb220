"""The shared objective: the only module that imports both optuna and torch.

It adapts a trial to fit(): sample params, build the model, resume from the checkpoint of the trial
this one retries, report the metric every epoch, checkpoint, and let the pruner stop the trial.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import torch

from tuner.spec.config import StudyConfig
from tuner.data.loader import Batches, open_batches
from tuner.engine.device import is_out_of_memory, resolve_precision, setup_device
from tuner.errors import TrialFailed
from tuner.engine.models import build_model, count_nonzero, count_parameters
from tuner.fleet.lineage import lineage_number
from tuner.store.place import study_place
from tuner.spec.space import HParams, describe_params, suggest_hparams
from tuner.engine.train import FitConfig, fit, prune_epoch

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochEvent:
    trial: int
    epoch: int
    epochs: int
    value: float
    pruned: bool = False  # the pruner stops the trial after this epoch


# What the worker calls for each trial: (trial, should_stop, on_epoch) -> the final metric value, or with several
# objectives one value per objective.
Objective = Callable[[optuna.Trial, Callable[[], bool], Callable[[EpochEvent], None]], float | tuple[float, ...]]


def make_objective(config: StudyConfig, device: torch.device) -> Objective:
    """The study's objective on `device`; the dataset is prepared (or found in the cache) and put there once,
    not per trial."""
    setup_device(device)
    data = open_batches(config.task, device)
    teacher = None
    if config.task.teacher:
        from tuner.engine.teacher import load_teacher  # here: it reads exported models (tuner.engine.export imports this module)

        teacher = load_teacher(config.task.teacher, data.record, device,
                               resolve_precision(config.task.precision, device))

    def objective(trial: optuna.Trial, should_stop: Callable[[], bool],
                  on_epoch: Callable[[EpochEvent], None]) -> float:
        try:
            return run_trial(trial, config, data, device, should_stop=should_stop, on_epoch=on_epoch,
                             teacher=teacher)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            reason = f"out of memory on {device}: {str(exc).strip().splitlines()[0]}"
        # Out of the except block the error and its traceback (which holds the trial's model, optimizer and
        # activations) are gone: collect them and hand the memory back before the worker's next trial, so
        # one trial too big for this GPU (or for its share of it, with --slots) fails alone.
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise TrialFailed(reason)

    return objective


def run_trial(
    trial: optuna.Trial,
    config: StudyConfig,
    data: Batches,
    device: torch.device,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    on_epoch: Callable[[EpochEvent], None] = lambda event: None,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Train one trial on data already on `device`; returns the final metric, raises TrialPruned when pruned."""
    hp = suggest_hparams(trial, config.space)
    lineage = lineage_number(trial)
    # Logged here, not by the worker: only now, after sampling, are the params known.
    retry = f" (retry of trial {lineage})" if lineage != trial.number else ""
    _log.info("trial %d started%s: %s", trial.number, retry, describe_params(trial.params))
    seed = config.study.seed + lineage  # same trial (or its retry) -> same init, same batches
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which process (slot, host) ran it
    torch.manual_seed(seed)
    model = build_model(config.task.model, config.task.weights, hp, data.image_shape, data.num_classes)
    total, trainable = count_parameters(model)
    trial.set_user_attr("param_count", total)
    trial.set_user_attr("trainable_params", trainable)
    _check_size(trial, config, total)  # before the model goes to the device or trains
    model = model.to(device)
    if device.type == "cuda":  # every model here is a convnet: NHWC runs its convolutions on tensor cores
        model = model.to(memory_format=torch.channels_last)
    precision = resolve_precision(config.task.precision, device)
    trial.set_user_attr("device", str(device))
    trial.set_user_attr("precision", precision)
    # what `tuner export` needs to rebuild the model
    trial.set_user_attr("image_shape", list(data.image_shape))
    trial.set_user_attr("num_classes", data.num_classes)
    trial.set_user_attr("data", data.record)  # its data's key, class names, preprocessing

    # the study's own folder (its uuid under the root stored at launch): never another study's of the same name
    checkpoints = study_place(trial.study.user_attrs, config.study.name).trial(lineage)
    resume = checkpoints.load_latest()
    # Optuna takes no per-epoch reports from a trial with several objectives (and prunes none): its curve is
    # kept as the user attribute "curve" instead, for people and the dashboard.
    reporting = not config.study.multi_objective
    history: list[float] = []
    if resume is not None:
        # A retry carries the epochs its original finished: report them again so this trial's
        # curve is complete and the pruner judges it on the same steps.
        history = list(resume["history"])
        for epoch, value in enumerate(history, start=1):
            if reporting:
                trial.report(value, epoch)
        trial.set_user_attr("resumed_from_epoch", resume["epoch"])

    metric = config.study.metric

    def on_epoch_end(epoch: int, metrics: dict[str, float], snapshot: Callable[[], dict]) -> None:
        value = metrics[metric]
        history.append(value)
        # report -> checkpoint -> prune? (a pruned trial's folder is deleted later by tuner/fleet/retention.py)
        if reporting:
            trial.report(value, epoch)
        else:
            trial.set_user_attr("curve", history)
        trial.set_user_attr("epochs_run", epoch)
        checkpoints.save({**snapshot(), "history": history})
        prune = reporting and trial.should_prune()
        on_epoch(EpochEvent(trial.number, epoch, config.task.epochs, value, pruned=prune))
        if prune:
            trial.set_user_attr("pruned_at_epoch", epoch)
            raise optuna.TrialPruned(f"pruned at epoch {epoch} with {metric}={value:.4f}")

    batch_size, lr = batch_and_lr(hp, config.task.batch_size)
    fit_config = FitConfig(epochs=config.task.epochs, batch_size=batch_size, lr=lr,
                           weight_decay=hp.weight_decay, optimizer=hp.optimizer, seed=seed, precision=precision,
                           distill_alpha=hp.distill_alpha, distill_temperature=hp.distill_temperature,
                           prune_amount=hp.prune_amount, label_smoothing=hp.label_smoothing,
                           momentum=hp.momentum, warmup_epochs=hp.warmup_epochs)
    if hp.prune_amount > 0:
        trial.set_user_attr("weights_pruned_at_epoch", prune_epoch(config.task.epochs))
    if config.task.compile:
        model.compile()  # in place: state_dict keys (checkpoints, export) stay those of the plain model
    final = fit(model, data, fit_config, on_epoch_end, resume=resume, should_stop=should_stop, teacher=teacher)
    trial.set_user_attr("nonzero_params", count_nonzero(model))  # the effective size, after any weight pruning
    checkpoints.keep_only_newest()
    if resume is not None and resume["epoch"] >= config.task.epochs:
        value = history[-1]  # the original finished training before it died; its result stands
    else:
        value = final[metric]
    if not config.study.multi_objective:
        return value
    return tuple(value if name == metric else _objective_value(name, trial, final)
                 for name in config.study.objectives)


def batch_and_lr(hp: HParams, task_batch_size: int) -> tuple[int, float]:
    """The batch size and the optimizer's peak lr: a searched batch size makes lr a rate per 256 images
    (config.SPACE_PARAMS), so lr and batch size are tuned independently; else both are as given."""
    if not hp.batch_size:
        return task_batch_size, hp.lr
    return hp.batch_size, hp.lr * hp.batch_size / 256


def _objective_value(name: str, trial: optuna.Trial, final: dict[str, float]) -> float:
    """An objective other than the reported metric: another training metric, or the model's size."""
    if name in final:
        return final[name]
    return float(trial.user_attrs[name])  # param_count, set before training


def _check_size(trial: optuna.Trial, config: StudyConfig, params: int) -> None:
    """[study] max_params: every trial gets the constraint (params - max_params <= 0 is feasible), so samplers
    that read constraints (TPE, GP, NSGA-II) learn to avoid the region; a model over it is PRUNED untrained."""
    budget = config.study.max_params
    if not budget:
        return
    if "max_params" not in trial.constraints:  # a retry carries its original's (the same value)
        trial.set_constraint("max_params", params - budget)
    if params > budget:
        trial.set_user_attr("pruned_at_epoch", 0)
        raise optuna.TrialPruned(f"{params:,} parameters > study.max_params {budget:,}: not trained")
