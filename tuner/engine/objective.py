"""The shared objective: the adapter between an Optuna trial and fit() (export.py and evaluate.py also read
trials and load models, but only this module trains).

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
from tuner.fleet.asha import CONTINUED_AT_ATTR, CONTINUES_ATTR, PAUSED_ATTR
from tuner.fleet.lineage import lineage_number
from tuner.fleet.pbt import EXPLOITED_MEMBER_ATTR, MEMBER_ATTR
from tuner.store.place import study_place
from tuner.spec.space import HParams, describe_params, suggest_hparams
from tuner.engine.teacher import load_teacher
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


def _origin(frozen: optuna.trial.FrozenTrial) -> str:
    """What the start line says of where a trial comes from: a retry, an ASHA promotion or a PBT segment (which
    continue a paused trial: not retries, and `tuner status` does not count them as such), or nothing."""
    attrs, retried = frozen.user_attrs, frozen.system_attrs.get("failed_trial")  # Optuna's retry mark
    if retried is not None:
        return f" (retry of trial {retried})"
    if CONTINUES_ATTR in attrs:
        after = f" after epoch {attrs[CONTINUED_AT_ATTR]}" if CONTINUED_AT_ATTR in attrs else ""
        if MEMBER_ATTR in attrs:
            donor = attrs.get(EXPLOITED_MEMBER_ATTR)
            took = f", weights of member {donor}" if donor is not None else ""
            return f" (PBT member {attrs[MEMBER_ATTR]}, continues trial {attrs[CONTINUES_ATTR]}{after}{took})"
        return f" (promoted: continues trial {attrs[CONTINUES_ATTR]}{after})"
    return ""


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
    frozen = trial.study._storage.get_trial(trial._trial_id)  # Optuna 5's Trial has no system_attrs
    lineage = lineage_number(frozen)
    # Logged here, not by the worker: only now, after sampling, are the params known.
    _log.info("trial %d started%s: %s", trial.number, _origin(frozen), describe_params(trial.params))
    seed = config.study.seed + lineage  # same trial (or its retry) -> same init, same batches
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which process (slot, host) ran it
    model, precision = _build_on_device(trial, config, data, device, hp, seed)
    # the study's own folder (its uuid under the root stored at launch): never another study's of the same name
    checkpoints = study_place(trial.study.user_attrs, config.study.name).trial(lineage)
    resume = checkpoints.load_latest()
    if resume is None and CONTINUES_ATTR in trial.user_attrs:
        raise TrialFailed(f"the checkpoint of paused trial {trial.user_attrs[CONTINUES_ATTR]} is gone "
                          f"({checkpoints.path}): it cannot be resumed")
    history = _replay_history(trial, config, resume)
    on_epoch_end = _epoch_reporter(trial, config, history, checkpoints, on_epoch)
    fit_config = _fit_config(config, hp, seed, precision)
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
        value = final[config.study.metric]
    if not config.study.multi_objective:
        return value
    return tuple(value if name == config.study.metric else _objective_value(name, trial, final)
                 for name in config.study.objectives)


def _build_on_device(trial: optuna.Trial, config: StudyConfig, data: Batches, device: torch.device, hp: HParams,
                     seed: int) -> tuple[torch.nn.Module, str]:
    """The trial's model on `device` (after the size check, so an oversized model never leaves the CPU), and
    the precision it trains in; records what `tuner export` needs to rebuild it."""
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
    trial.set_user_attr("image_shape", list(data.image_shape))
    trial.set_user_attr("num_classes", data.num_classes)
    trial.set_user_attr("data", data.record)  # its data's key, class names, preprocessing
    return model, precision


def _replay_history(trial: optuna.Trial, config: StudyConfig, resume: dict | None) -> list[float]:
    """The curve so far: empty for a fresh start; a retry reports its original's finished epochs again, so its
    curve is complete and the pruner judges it on the same steps."""
    if resume is None:
        return []
    history = list(resume["history"])
    if not config.study.multi_objective:
        for epoch, value in enumerate(history, start=1):
            trial.report(value, epoch)
    trial.set_user_attr("resumed_from_epoch", resume["epoch"])
    return history


def _epoch_reporter(trial: optuna.Trial, config: StudyConfig, history: list[float], checkpoints,
                    on_epoch: Callable[[EpochEvent], None]) -> Callable[[int, dict[str, float], Callable[[], dict]], None]:
    """fit()'s on_epoch_end for this trial: report -> checkpoint -> prune?"""
    metric = config.study.metric
    # Optuna takes no per-epoch reports from a trial with several objectives (and prunes none): its curve is
    # kept as the user attribute "curve" instead, for people and the dashboard.
    reporting = not config.study.multi_objective

    def on_epoch_end(epoch: int, metrics: dict[str, float], snapshot: Callable[[], dict]) -> None:
        value = metrics[metric]
        history.append(value)
        # (a pruned trial's folder is deleted later by tuner/fleet/retention.py)
        if reporting:
            trial.report(value, epoch)
        else:
            trial.set_user_attr("curve", history)
        trial.set_user_attr("epochs_run", epoch)
        checkpoints.save({**snapshot(), "history": history})
        prune = reporting and trial.should_prune()
        on_epoch(EpochEvent(trial.number, epoch, config.task.epochs, value, pruned=prune))
        if prune and getattr(trial.study.pruner, "pauses", False):  # ASHA: a worker may promote it later
            trial.set_user_attr(PAUSED_ATTR, epoch)
            raise optuna.TrialPruned(f"paused at epoch {epoch} with {metric}={value:.4f}")
        if prune:
            trial.set_user_attr("pruned_at_epoch", epoch)
            raise optuna.TrialPruned(f"pruned at epoch {epoch} with {metric}={value:.4f}")

    return on_epoch_end


def _fit_config(config: StudyConfig, hp: HParams, seed: int, precision: str) -> FitConfig:
    batch_size, lr = batch_and_lr(hp, config.task.batch_size)
    return FitConfig(epochs=config.task.epochs, batch_size=batch_size, lr=lr,
                     weight_decay=hp.weight_decay, optimizer=hp.optimizer, seed=seed, precision=precision,
                     distill_alpha=hp.distill_alpha, distill_temperature=hp.distill_temperature,
                     prune_amount=hp.prune_amount, label_smoothing=hp.label_smoothing,
                     momentum=hp.momentum, warmup_epochs=hp.warmup_epochs)


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
