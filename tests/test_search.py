"""Search beyond one median rule, on the real PostgreSQL: every pruner and sampler, a parameter budget, two
objectives, warm starts, reproducible seeds and a compute budget."""

from __future__ import annotations

import inspect
import json
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

from conftest import BudgetLockHold, load, start_worker, tuner, tuner_env, wait_all
from inprocess import serve_in_process
from tuner.spec.config import load_config, parse_config
from tuner.errors import TunerError
from tuner.spec.search import PRUNERS, make_pruner

SPACE = """\
lr = { low = 1e-3, high = 1e-1, log = true }
width = { low = 4, high = 8 }
depth = 1
"""


def digits_study(name: str, *, n_trials: int = 6, epochs: int = 3, study: str = "", pruner: str = "",
                 space: str = SPACE, more: str = "") -> str:
    return (f'[study]\nname = "{name}"\nn_trials = {n_trials}\nseed = 3\n{study}\n'
            + (f"[pruner]\n{pruner}\n" if pruner else "")
            + f'[task]\ndataset = "digits"\nmodel = "cnn"\nepochs = {epochs}\nbatch_size = 128\n\n'
            + f"[space]\n{space}\n{more}")


def assert_exact_budget(study: optuna.Study, n_trials: int) -> None:
    trials = study.get_trials()
    assert [t.state for t in trials].count(TrialState.FAIL) == 0, [t.user_attrs for t in trials]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == n_trials
    assert len(trials) == n_trials  # nothing running, waiting or extra


PRUNER_SECTIONS = {
    "median": 'type = "median"\nn_startup_trials = 2\nn_warmup_steps = 1',
    "percentile": 'type = "percentile"\npercentile = 25.0\nn_startup_trials = 2',
    "successive_halving": 'type = "successive_halving"\nmin_resource = 1\nreduction_factor = 2',
    "hyperband": 'type = "hyperband"\nmin_resource = 1\nmax_resource = 3\nreduction_factor = 2',
    "wilcoxon": 'type = "wilcoxon"\nn_startup_steps = 1',
    "patient": 'type = "patient"\npatience = 0\nn_startup_trials = 2',
    "threshold": 'type = "threshold"\nlower = 0.3\nn_warmup_steps = 1',
    "none": 'type = "none"',
}


def test_every_pruner_of_optuna_has_a_section_and_the_key_table_matches_its_signature():
    assert set(PRUNER_SECTIONS) == set(PRUNERS)
    for kind, (cls, keys) in PRUNERS.items():
        params = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name not in ("self", "wrapped_pruner") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        expected = {p.name for p in params} | ({"wraps"} if kind == "patient" else set())
        assert set(keys) == expected, kind


@pytest.mark.parametrize("kind", list(PRUNER_SECTIONS))
def test_each_pruner_runs_a_digits_study_to_its_exact_budget(pg_url, tmp_path, monkeypatch, kind):
    text = digits_study(f"p-{kind}", study='sampler = "random"', pruner=PRUNER_SECTIONS[kind])
    config = parse_config(__import__("tomllib").loads(text), "t")
    assert type(make_pruner(config.pruner)) is PRUNERS[kind][0]
    study = serve_in_process(pg_url, tmp_path, monkeypatch, text)
    assert_exact_budget(study, 6)
    for t in study.get_trials():  # every trial reported its epochs (pruned ones up to where they stopped)
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
        assert t.state == TrialState.PRUNED or len(t.intermediate_values) == 3


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "cmaes", "qmc", "nsga2"])
def test_each_sampler_runs_a_digits_study_to_its_exact_budget(pg_url, tmp_path, monkeypatch, sampler):
    text = digits_study(f"s-{sampler}", n_trials=5, epochs=1, study=f'sampler = "{sampler}"',
                        pruner='type = "none"')
    study = serve_in_process(pg_url, tmp_path, monkeypatch, text)
    assert_exact_budget(study, 5)
    assert len({(t.params["lr"], t.params["width"]) for t in study.trials}) == 5  # five distinct proposals


BAD_PRUNERS = [
    ('type = "median"\nn_warmup_step = 2', "pruner.n_warmup_step", "2"),
    ('type = "median"\nn_startup_trials = -1', "pruner.n_startup_trials", "-1"),
    ('type = "percentile"', "pruner.percentile", "required"),
    ('type = "percentile"\npercentile = 150.0', "pruner.percentile", "150.0"),
    ('type = "successive_halving"\nmin_resource = "half"', "pruner.min_resource", "'half'"),
    ('type = "successive_halving"\nreduction_factor = 1', "pruner.reduction_factor", "1"),
    ('type = "hyperband"\nreduction_factor = 1', "pruner.reduction_factor", "1"),
    ('type = "hyperband"\nmax_resource = "all"', "pruner.max_resource", "'all'"),
    ('type = "wilcoxon"\np_threshold = 2.0', "pruner.p_threshold", "2.0"),
    ('type = "wilcoxon"\nn_warmup_steps = 2', "pruner.n_warmup_steps", "2"),
    ('type = "patient"\npatience = -1', "pruner.patience", "-1"),
    ('type = "patient"\npatience = 1\nwraps = "asha"', "pruner.wraps", "'asha'"),
    ('type = "threshold"', "pruner.lower", "required"),
    ('type = "threshold"\nlower = 0.9\nupper = 0.1', "pruner", "'lower': 0.9"),
    ('type = "none"\npercentile = 5.0', "pruner.percentile", "5.0"),
    ('type = "nope"', "pruner.type", "'nope'"),
]


@pytest.mark.parametrize("section,field,value", BAD_PRUNERS)
def test_a_bad_key_or_value_in_each_pruner_section_is_one_line_naming_it(tmp_path, section, field, value):
    path = tmp_path / "bad.toml"
    path.write_text(digits_study("bad", pruner=section))
    result = tuner("launch-study", str(path), env=tuner_env(f"sqlite:///{tmp_path / 'x.db'}", tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}: {field}" in lines[0] and value in lines[0], result.stderr


@pytest.mark.parametrize("study,space,field,value", [
    ('sampler = "bayes"', SPACE, "study.sampler", "'bayes'"),
    ('sampler = "cmaes"', SPACE + 'optimizer = { choices = ["adamw", "sgd"] }', "space.optimizer", "'cmaes'"),
    ('sampler = "cmaes"\nobjectives = ["val_accuracy", "param_count"]', SPACE, "study.sampler", "'cmaes'"),
    ('sampler = 3', SPACE, "study.sampler", "3"),
])
def test_a_sampler_that_cannot_search_the_study_is_one_line(tmp_path, study, space, field, value):
    path = tmp_path / "bad.toml"
    path.write_text(digits_study("bad", study=study, space=space))
    with pytest.raises(TunerError) as info:
        load_config(path)
    assert field in str(info.value) and value in str(info.value)


def test_default_warmup_is_a_share_of_the_epochs(tmp_path):
    from tuner.spec.search import default_warmup

    for epochs in (1, 4, 10, 52):
        path = tmp_path / f"w{epochs}.toml"
        path.write_text(digits_study("w", epochs=epochs))
        pruner = load_config(path).pruner
        assert pruner == {"type": "median", "n_startup_trials": 5, "n_warmup_steps": default_warmup(epochs)}
        assert 1 <= pruner["n_warmup_steps"] <= max(1, epochs // 2)


def test_max_params_prunes_big_models_before_they_train_and_the_best_is_under_it(pg_url, tmp_path, monkeypatch):
    # width 4..32 at depth 2: about 800 to 12,000 parameters; the budget sits in the middle, and two enqueued
    # configs (one on each side) make sure both kinds of trial happen whatever the sampler picks
    space = "lr = { low = 1e-2, high = 1e-1, log = true }\nwidth = { low = 4, high = 32 }\ndepth = 2\n"
    more = "[[enqueue]]\nwidth = 32\nlr = 0.05\n\n[[enqueue]]\nwidth = 6\nlr = 0.05\n"
    text = digits_study("size", n_trials=8, epochs=2, study="max_params = 4000", pruner='type = "none"',
                        space=space, more=more)
    study = serve_in_process(pg_url, tmp_path, monkeypatch, text)
    assert_exact_budget(study, 8)
    over = [t for t in study.trials if t.user_attrs["param_count"] > 4000]
    under = [t for t in study.trials if t.user_attrs["param_count"] <= 4000]
    assert over and under
    for t in over:  # stopped before training: no epoch reported, no epoch run, infeasible for the sampler
        assert t.state == TrialState.PRUNED and t.intermediate_values == {} and "epochs_run" not in t.user_attrs
        assert t.system_attrs["constraints:max_params"] > 0
    for t in under:
        assert t.system_attrs["constraints:max_params"] <= 0
    assert study.best_trial.user_attrs["param_count"] <= 4000


def test_two_objectives_end_with_the_pareto_front_tuner_best_prints(pg_url, tmp_path, monkeypatch):
    text = digits_study("pareto", n_trials=6, epochs=2, study='objectives = ["val_accuracy", "param_count"]',
                        space="lr = { low = 1e-2, high = 1e-1, log = true }\nwidth = { low = 4, high = 16 }\n"
                        "depth = { low = 1, high = 2 }\n")
    study = serve_in_process(pg_url, tmp_path, monkeypatch, text)
    assert_exact_budget(study, 6)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    env = tuner_env(pg_url, tmp_path)
    printed = tuner("best", "--study", "pareto", "--format", "json", env=env)
    assert printed.returncode == 0, printed.stderr
    expected = sorted(load(pg_url, "pareto").best_trials, key=lambda t: t.number)
    assert json.loads(printed.stdout) == [{"number": t.number, "values": t.values, "params": t.params}
                                          for t in expected]
    for t in study.trials:  # values: the accuracy of its last epoch and its size
        assert t.values == [t.user_attrs["curve"][-1], t.user_attrs["param_count"]]
    table = tuner("best", "--study", "pareto", env=env)
    assert table.returncode == 0 and f"Pareto front of 'pareto': {len(expected)} trials" in table.stdout
    for t in expected:
        assert f"#{t.number} " in table.stdout


def test_a_pruner_section_with_two_objectives_is_refused_in_one_line(tmp_path):
    path = tmp_path / "mo.toml"
    path.write_text(digits_study("mo", study='objectives = ["val_accuracy", "param_count"]',
                                 pruner='type = "median"'))
    result = tuner("launch-study", str(path), env=tuner_env(f"sqlite:///{tmp_path / 'x.db'}", tmp_path))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "pruner cannot be used with several objectives" in result.stderr


def test_enqueued_configs_run_exactly_once_with_three_workers_started_together(pg_url, tmp_path):
    more = textwrap.dedent("""\
        [[enqueue]]
        lr = 0.05
        width = 8

        [[enqueue]]
        lr = 0.01
        width = 5

        [[enqueue]]
        lr = 0.002
        """)
    path = tmp_path / "warm.toml"
    path.write_text(digits_study("warm", n_trials=7, epochs=1, pruner='type = "none"', more=more))
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    assert tuner("launch-study", str(path), env=env).returncode == 0  # launched again: nothing queued twice
    queued = tuner("enqueue", "--study", "warm", "lr=0.03", "width=6", env=env)
    assert queued.returncode == 0 and "queued trial #3" in queued.stdout, queued.stderr
    bad = tuner("enqueue", "--study", "warm", "width=99", env=env)
    assert bad.returncode == 1 and "width must be within space.width [4, 8], got 99" in bad.stderr
    hold = BudgetLockHold(pg_url, "warm")  # all three queue for the first trial before any gets one
    procs = [start_worker("warm", env, tmp_path / f"w{i}.log") for i in range(3)]
    try:
        hold.wait_for_waiters(3 + 1)  # three main loops and the study's reaper
    finally:
        hold.release()
    assert wait_all(procs, timeout=300) == [0, 0, 0]
    study = load(pg_url, "warm")
    assert_exact_budget(study, 7)
    given = [{"lr": 0.05, "width": 8}, {"lr": 0.01, "width": 5}, {"lr": 0.002}, {"lr": 0.03, "width": 6}]
    for params in given:
        matches = [t for t in study.trials if all(t.params[k] == v for k, v in params.items())]
        assert len(matches) == 1, (params, [t.params for t in study.trials])
    assert [t.user_attrs.get("enqueued") for t in study.trials[:4]] == ["study file"] * 3 + ["tuner enqueue"]
    # a full budget takes no more
    full = tuner("enqueue", "--study", "warm", "lr=0.03", env=env)
    assert full.returncode == 1 and "no trial left in its budget" in full.stderr


def test_two_one_worker_runs_of_the_same_file_and_seed_propose_the_same_trials(pg_url, tmp_path):
    # TPE past its 10 random start-up trials, so the model-based proposals (which read the results) are compared
    path = tmp_path / "again.toml"
    path.write_text(digits_study("again", n_trials=13, epochs=1, pruner='type = "none"',
                                 space="lr = { low = 1e-3, high = 1e-1, log = true }\nwidth = { low = 4, high = 12 }\n"
                                 "depth = { low = 1, high = 2 }\ndropout = { low = 0.0, high = 0.3 }\n"))
    env = tuner_env(pg_url, tmp_path)
    for name in ("first", "second"):
        assert tuner("launch-study", str(path), "--name", name, env=env).returncode == 0
        # each worker a new process: Python's per-process string hashing must not reach the seed
        result = tuner("worker", "--study", name, "--cpu", "--threads", "1", env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
    first, second = load(pg_url, "first").trials, load(pg_url, "second").trials
    assert [t.params for t in first] == [t.params for t in second]
    assert len({json.dumps(t.params, sort_keys=True) for t in first}) == 13
    # a second worker of the same study gets its own, different seed (not the same proposals twice)
    from tuner.spec.config import load_config as read
    from tuner.fleet.worker import sampler_seed

    config = read(path)
    assert sampler_seed(config, 0) == config.study.seed and sampler_seed(config, 1) != sampler_seed(config, 0)


def epochs_trained(study: optuna.Study) -> int:
    return sum(len(t.intermediate_values) for t in study.trials)


def test_max_epochs_is_exact_across_three_workers_and_pruning_buys_more_trials(pg_url, tmp_path):
    env = tuner_env(pg_url, tmp_path)
    # two good configs first, then ones whose lr is too small to learn in 4 epochs: median pruning stops those
    # after their first epoch once the good ones have finished (training is seeded: repeatable)
    good = "[[enqueue]]\nlr = 0.05\n\n" * 2
    bad = "[[enqueue]]\nlr = 0.00002\n\n" * 10
    space = "lr = { low = 0.00001, high = 0.1, log = true }\nwidth = 8\ndepth = 1\n"
    finished = {}
    for name, pruner in (("pruned", 'type = "median"\nn_startup_trials = 2\nn_warmup_steps = 1'),
                         ("unpruned", 'type = "none"')):
        path = tmp_path / f"{name}.toml"
        text = digits_study(name, n_trials=0, epochs=4, study='max_epochs = 24\nsampler = "random"',
                            pruner=pruner, space=space, more=good + bad).replace("n_trials = 0\n", "")
        path.write_text(text)
        assert tuner("launch-study", str(path), env=env).returncode == 0
        procs = [start_worker(name, env, tmp_path / f"{name}{i}.log") for i in range(3)]
        assert wait_all(procs, timeout=600) == [0, 0, 0]
        study = load(pg_url, name)
        trials = study.trials
        assert [t.state for t in trials].count(TrialState.FAIL) == 0
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)
                    and "enqueued" not in t.user_attrs]
        # the budget, counted from what the trials reported: at most 24 epochs, and all of it used
        assert epochs_trained(study) == 24, [len(t.intermediate_values) for t in trials]
        assert sum(t.user_attrs.get("epochs_trained", 0) for t in trials) == 24
        finished[name] = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        status = tuner("status", "--study", name, env=env)
        assert "24/24 epochs" in status.stdout, status.stdout
    assert finished["pruned"] > finished["unpruned"], finished


def test_the_more_knobs_are_searched_and_reach_training(pg_url, tmp_path, monkeypatch):
    from tuner.engine.objective import batch_and_lr
    from tuner.spec.space import HParams
    from tuner.engine.train import FitConfig, _make_scheduler

    space = SPACE + textwrap.dedent("""\
        batch_size = { choices = [32, 128] }
        label_smoothing = { low = 0.0, high = 0.2 }
        momentum = { low = 0.5, high = 0.95 }
        warmup_epochs = { low = 0, high = 1 }
        optimizer = "sgd"
        """)
    study = serve_in_process(pg_url, tmp_path, monkeypatch,
                             digits_study("knobs", n_trials=4, epochs=2, pruner='type = "none"', space=space))
    assert_exact_budget(study, 4)
    for t in study.trials:
        assert {"batch_size", "label_smoothing", "momentum", "warmup_epochs"} <= set(t.params)
    # lr is per 256 images once batch_size is searched; without it, lr and task.batch_size are used as given
    hp = HParams(lr=0.1, width=8, depth=1, dropout=0.0, weight_decay=0.0, optimizer="sgd", batch_size=64)
    assert batch_and_lr(hp, 128) == (64, pytest.approx(0.025))
    assert batch_and_lr(HParams(lr=0.1, width=8, depth=1, dropout=0.0, weight_decay=0.0, optimizer="sgd"),
                        128) == (128, 0.1)
    # warm-up: lr / (w + 1) rising linearly for w epochs, then the cosine from lr down
    import torch

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.4)
    scheduler = _make_scheduler(optimizer, FitConfig(epochs=6, batch_size=8, lr=0.4, weight_decay=0.0,
                                                     optimizer="sgd", seed=0, warmup_epochs=3))
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert rates[3] > rates[4] > rates[5] > 0


def test_max_gpu_hours_ends_the_study_once_the_trials_device_time_reaches_it(pg_url, tmp_path, monkeypatch):
    from tuner.fleet.compute import spent
    from tuner.store.storage import make_storage

    budget_h = 2 / 3600  # two seconds of training in all
    text = digits_study("hours", n_trials=0, epochs=3, study=f"max_gpu_hours = {budget_h}",
                        pruner='type = "none"').replace("n_trials = 0\n", "")
    study = serve_in_process(pg_url, tmp_path, monkeypatch, text)
    trials = study.trials
    assert trials and not [t for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)]
    storage = make_storage(pg_url)
    used = spent(storage, storage.get_study_id_from_name("hours"))
    storage.engine.dispose()
    # one worker: it stops at the first epoch end at or past the budget, so the last trial is the one that crossed
    assert used.hours >= budget_h
    before_last = sum(t.user_attrs["train_seconds"] for t in trials[:-1])
    assert before_last < budget_h * 3600
    assert trials[-1].state == TrialState.COMPLETE or "epochs_run" in trials[-1].user_attrs


def test_a_small_hours_budget_reads_the_same_when_it_ends_the_study_as_in_tuner_status():
    """A budget of seconds said "max_gpu_hours reached (0.000 of 0.0002 device hours)"."""
    from tuner.fleet.compute import Spent, budget_parts, exhausted
    from tuner.spec.config import StudySection

    study = StudySection(name="s", max_gpu_hours=0.0002)
    used = Spent(epochs=3, seconds=0.9)
    assert exhausted(study, used) == "max_gpu_hours reached (0.00025 of 0.0002 device hours)"
    assert budget_parts(study, 2, used) == [(pytest.approx(1.25), "0.00025/0.0002 device h")]
    assert exhausted(StudySection(name="s", max_gpu_hours=2.5), Spent(0, 9001.0)) == \
        "max_gpu_hours reached (2.5 of 2.5 device hours)"
