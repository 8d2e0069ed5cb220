"""Workers against a real PostgreSQL: exact budgets, per-epoch reports, median pruning, determinism."""

from __future__ import annotations

import re

import numpy as np
from optuna.trial import TrialState

from conftest import BudgetLockHold, load, start_worker, study_file, tuner, tuner_env, wait_all


def test_three_workers_finish_exactly_the_budget(pg_url, tmp_path):
    path = study_file(tmp_path, "three", n_trials=12, epochs=3)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    # Every worker takes part by construction: the budget lock is held until all three have queued for it
    # (each worker's main loop, and the study's one reaper: the worker holding the reaper lease), and PostgreSQL
    # then grants it in queue order, so each worker starts a trial before any of them can come back for a second.
    hold = BudgetLockHold(pg_url, "three")
    procs = [start_worker("three", env, tmp_path / f"w{i}.log") for i in range(3)]
    try:
        hold.wait_for_waiters(3 + 1)
    finally:
        hold.release()
    assert wait_all(procs, timeout=600) == [0, 0, 0], [(tmp_path / f"w{i}.log").read_text()[-2000:]
                                                       for i in range(3)]
    trials = load(pg_url, "three").get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 12
    assert len(trials) == 12  # nothing failed, nothing extra
    assert sorted(t.number for t in trials) == list(range(12))
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs_run"] + 1))
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["epochs_run"] == 3
            assert t.value == t.intermediate_values[3]
        assert t.user_attrs["param_count"] > 0 and t.user_attrs["device"] == "cpu"
        assert t.user_attrs["wall_time_s"] > 0
    # all three workers finished at least one trial (COMPLETE or PRUNED: which one is the sampler's business)
    for i in range(3):
        assert re.search(r"trial \d+ (COMPLETE|PRUNED)", (tmp_path / f"w{i}.log").read_text()), i


def test_a_pruned_trial_stopped_early_by_the_median_rule(pg_url, tmp_path):
    space = ("lr = { low = 1e-5, high = 1.0, log = true }\nwidth = { low = 4, high = 8 }\n"
             "depth = { low = 1, high = 2 }\n")
    path = study_file(tmp_path, "prune", n_trials=9, epochs=6, space=space,
                      extra='sampler = "random"',
                      pruner='type = "median"\nn_startup_trials = 3\nn_warmup_steps = 2')
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    # The pruner has work by construction, not by the sampler's luck: three good trials first, then three
    # whose lr is too small to learn anything in 6 epochs (training is seeded, so this is repeatable).
    study = load(pg_url, "prune")
    for lr in (0.03, 0.03, 0.03, 1e-5, 1e-5, 1e-5):
        study.enqueue_trial({"lr": lr, "width": 8, "depth": 2})
    result = tuner("worker", "--study", "prune", "--cpu", "--threads", "1", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(pg_url, "prune").get_trials()
    assert [t.state for t in trials[3:6]] == [TrialState.PRUNED] * 3
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    for p in pruned:
        step = max(p.intermediate_values)
        assert step < 6 and step >= 2  # stopped early, but not before the warm-up
        assert p.user_attrs["pruned_at_epoch"] == step
        # the median rule, recomputed from the trials that had completed when p was stopped
        before = [t for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete < p.datetime_complete]
        assert len(before) >= 3
        median = float(np.percentile([t.intermediate_values[step] for t in before], 50))
        assert max(p.intermediate_values.values()) < median


def test_training_is_deterministic_for_a_trial_seed_on_cpu():
    import torch

    from tuner.spec.config import TaskSection
    from tuner.data.loader import open_batches
    from tuner.engine.models import build_cnn
    from tuner.spec.space import HParams
    from tuner.engine.train import FitConfig, fit

    data = open_batches(TaskSection(epochs=2, augment="crop"), torch.device("cpu"))
    hp = HParams(lr=0.01, width=8, depth=2, dropout=0.2, weight_decay=1e-4, optimizer="adamw")

    def run() -> list[float]:
        torch.manual_seed(7)
        model = build_cnn(hp, data.image_shape, data.num_classes)
        history: list[float] = []
        fit(model, data, FitConfig(epochs=2, batch_size=64, lr=hp.lr, weight_decay=hp.weight_decay,
                                   optimizer="adamw", seed=7),
            lambda epoch, metrics, snapshot: history.append(metrics["val_loss"]))
        return history

    first, second = run(), run()
    assert first == second
    assert len(first) == 2 and first[1] != first[0]


def test_a_worker_without_study_serves_every_unfinished_study_oldest_first(pg_url, tmp_path):
    env = tuner_env(pg_url, tmp_path)
    for name in ("first", "second"):
        assert tuner("launch-study", str(study_file(tmp_path, name, n_trials=2, epochs=1)), env=env).returncode == 0
    worker = tuner("worker", "--cpu", "--threads", "1", env=env)
    assert worker.returncode == 0, worker.stderr[-2000:]
    for name in ("first", "second"):
        study = load(pg_url, name)
        assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 2
    first_end = max(t.datetime_complete for t in load(pg_url, "first").trials)
    second_start = min(t.datetime_start for t in load(pg_url, "second").trials)
    assert first_end <= second_start


def test_best_prints_decoded_params_and_the_parameter_count(pg_url, tmp_path):
    space = ('lr = { low = 1e-3, high = 1e-2, log = true }\nwidth = { low = 4, high = 6 }\n'
             'optimizer = { choices = ["adamw", "sgd"] }\n')
    path = study_file(tmp_path, "best", n_trials=3, epochs=2, space=space)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("run", str(path), "--workers", "1", "--cpu", env=env).returncode == 0
    import json

    best = json.loads(tuner("best", "--study", "best", "--format", "json", env=env).stdout)
    study = load(pg_url, "best")
    assert best["trial"] == study.best_trial.number
    assert best["params"]["optimizer"] in ("adamw", "sgd")  # the choice, not its index
    assert best["param_count"] == study.best_trial.user_attrs["param_count"]
    assert best["fixed"]["depth"] == 2 and best["fixed"]["dropout"] == 0.0
    table = tuner("best", "--study", "best", env=env).stdout
    assert f"#{best['trial']}" in table and "param_count" in table
