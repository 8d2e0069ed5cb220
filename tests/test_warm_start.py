"""Warm starts ([study] warm_start): a new study takes the COMPLETE trials of earlier ones that fit its space, as
finished trials the sampler learns from (never trained again, in no budget, not the best unless it says so), or
re-trains the best K of them (warm_start_top). Real PostgreSQL, real worker processes, real training on digits."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import checkpoint_dir, count_studies, load, study_file, tuner, tuner_env

SOURCE_SPACE = textwrap.dedent("""\
    lr = { low = 1e-3, high = 1e-1, log = true }
    width = { low = 4, high = 12 }
    depth = 1
    """)
NO_PRUNER = 'type = "none"'


def _train_source(url: str, tmp_path: Path, n_trials: int = 4) -> tuple[dict, list[optuna.trial.FrozenTrial]]:
    """A finished tiny digits study "src" (1 epoch per trial); its trials by number."""
    env = tuner_env(url, tmp_path)
    path = study_file(tmp_path, "src", n_trials=n_trials, epochs=1, pruner=NO_PRUNER, space=SOURCE_SPACE)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    worker = tuner("worker", "--study", "src", "--cpu", "--threads", "1", env=env, timeout=600)
    assert worker.returncode == 0, worker.stderr[-2000:]
    trials = sorted(load(url, "src").trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n_trials
    return env, trials


def _one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_imported_trials_are_marked_never_retrained_in_no_budget_and_not_the_best(pg_url, tmp_path):
    env, source = _train_source(pg_url, tmp_path)
    lrs = sorted(t.params["lr"] for t in source)
    # the new space starts at the second-smallest lr: exactly one source trial falls outside it; depth, fixed at 1
    # in the source, is searched here (1..2), so the source's constant is the imported trials' value
    space = f"lr = {{ low = {lrs[1]!r}, high = 1e-1, log = true }}\nwidth = {{ low = 4, high = 12 }}\n" \
            "depth = { low = 1, high = 2 }\n"
    path = study_file(tmp_path, "dst", n_trials=2, epochs=1, pruner=NO_PRUNER, space=space,
                      extra='warm_start = ["src"]')
    launched = tuner("launch-study", str(path), env=env)
    assert launched.returncode == 0, launched.stderr
    assert "warm start: imported 3 finished trials (src: 3); skipped 1: lr outside [" in launched.stdout
    assert tuner("launch-study", str(path), env=env).stdout.count("warm start") == 0  # once, at creation

    imported = load(pg_url, "dst").trials
    assert len(imported) == 3 and all(t.state == TrialState.COMPLETE for t in imported)
    by_source = {t.params["lr"]: t for t in source}
    for t in imported:
        assert t.user_attrs["tuner_warm_start_from"] == "src"
        original = source[t.user_attrs["tuner_warm_start_trial"]]
        assert by_source[t.params["lr"]] is original and t.params["depth"] == 1
        assert t.values == original.values and t.intermediate_values == original.intermediate_values
        assert "epochs_trained" not in t.user_attrs and "train_seconds" not in t.user_attrs

    worker = tuner("worker", "--study", "dst", "--cpu", "--threads", "1", env=env, timeout=600)
    assert worker.returncode == 0, worker.stderr[-2000:]
    trials = sorted(load(pg_url, "dst").trials, key=lambda t: t.number)
    trained = [t for t in trials if "tuner_warm_start_from" not in t.user_attrs]
    assert [t.number for t in trained] == [3, 4]  # n_trials = 2 trained here, exactly; the imported 3 untouched
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["epochs_run"] == 1 for t in trained)
    assert [(t.number, t.state, t.values) for t in trials[:3]] == [(t.number, t.state, t.values) for t in imported]
    folders = {p.name for p in checkpoint_dir(pg_url, "dst").iterdir()}
    assert not folders & {"0", "1", "2"} and folders  # only the trials trained here wrote checkpoints

    status = json.loads(tuner("status", "--study", "dst", "--format", "json", env=env).stdout)[0]
    assert status["states"] == {"COMPLETE": 2} and status["budget"] == "2/2 trials" and status["ended"]
    assert status["imported"] == 3 and status["warm_start_from"] == ["src"]
    assert status["best_trial"] in (3, 4)
    best = json.loads(tuner("best", "--study", "dst", "--format", "json", env=env).stdout)
    assert best["trial"] in (3, 4) and best["value"] == max(t.value for t in trained)  # whatever the imported say
    table = tuner("status", "--study", "dst", env=env).stdout
    assert "imported 3 (warm start from src)" in table

    refused = tuner("export", "--study", "dst", "--trial", "0", "--out", str(tmp_path / "m.pt"), env=env)
    assert "was imported by a warm start from src" in _one_line_error(refused)
    assert not (tmp_path / "m.pt").exists()


def test_with_counts_as_best_an_imported_trial_can_be_the_best_and_export_says_it_has_no_weights(pg_url, tmp_path):
    env, source = _train_source(pg_url, tmp_path, n_trials=2)
    path = study_file(tmp_path, "dst", n_trials=2, epochs=1, pruner=NO_PRUNER, space=SOURCE_SPACE,
                      extra='warm_start = ["src"]\nwarm_start_counts_as_best = true')
    assert "imported 2 finished trials" in tuner("launch-study", str(path), env=env).stdout
    best_source = max(source, key=lambda t: (t.value, -t.number))
    best = json.loads(tuner("best", "--study", "dst", "--format", "json", env=env).stdout)
    assert best["value"] == best_source.value and best["trial"] == best_source.number  # nothing trained here yet
    refused = tuner("export", "--study", "dst", "--out", str(tmp_path / "m.pt"), env=env)
    assert f"(its trial {best_source.number}) and has no weights here" in _one_line_error(refused)


def test_warm_start_top_queues_the_best_configs_which_are_retrained_in_the_budget(pg_url, tmp_path):
    env, source = _train_source(pg_url, tmp_path)
    top = sorted(source, key=lambda t: (-t.value, t.number))[:2]
    path = study_file(tmp_path, "dst", n_trials=3, epochs=1, pruner=NO_PRUNER, space=SOURCE_SPACE,
                      extra='warm_start = ["src"]\nwarm_start_top = 2')
    launched = tuner("launch-study", str(path), env=env)
    assert "warm start: queued the top 2 of 4 fitting configs to re-train (src: 2)" in launched.stdout
    queued = load(pg_url, "dst").trials
    assert [t.state for t in queued] == [TrialState.WAITING] * 2
    worker = tuner("worker", "--study", "dst", "--cpu", "--threads", "1", env=env, timeout=600)
    assert worker.returncode == 0, worker.stderr[-2000:]
    trials = sorted(load(pg_url, "dst").trials, key=lambda t: t.number)
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)  # 2 re-trained + 1 sampled
    assert [t.params for t in trials[:2]] == [t.params for t in top]
    assert [t.user_attrs["enqueued"] for t in trials[:2]] == [f"warm start from src (trial {t.number})" for t in top]
    assert not any("tuner_warm_start_from" in t.user_attrs for t in trials)  # trained here, counted here


def test_a_source_in_another_storage_is_named_by_an_environment_variable(pg_url, sqlite_url, tmp_path):
    """SQLite source, PostgreSQL target; the URL comes from $SOURCE_DB, so no password is written in the file."""
    _, source = _train_source(sqlite_url, tmp_path, n_trials=2)
    env = tuner_env(pg_url, tmp_path, SOURCE_DB=sqlite_url)
    path = study_file(tmp_path, "dst", n_trials=1, epochs=1, pruner=NO_PRUNER, space=SOURCE_SPACE,
                      extra='warm_start = [{ storage = "env:SOURCE_DB", study = "src" }]')
    launched = tuner("launch-study", str(path), env=env)
    assert launched.returncode == 0, launched.stderr
    label = f"src in {sqlite_url}"
    assert f"imported 2 finished trials ({label}: 2)" in launched.stdout
    trials = load(pg_url, "dst").trials
    assert [t.user_attrs["tuner_warm_start_from"] for t in trials] == [label] * 2
    assert sorted(t.values for t in trials) == sorted(t.values for t in source)


@pytest.mark.parametrize("extra, says", [
    ('warm_start = ["nope"]', "study.warm_start[0]: no study named 'nope' in postgresql+psycopg2://"),
    ('warm_start = ["loss"]', "study.warm_start[0]: study 'loss' optimises minimize val_loss, this study maximize "
                              "val_accuracy"),
    ('warm_start = ["plain"]', "study.warm_start[0]: study 'plain' was not launched by tuner"),
    ('warm_start = ["dst"]', "study.warm_start[0]: a study cannot warm-start from itself"),
    ('warm_start = [{ storage = "env:NOT_SET_HERE", study = "loss" }]', "study.warm_start[0].storage: $NOT_SET_HERE "
                                                                        "is not set"),
    ("warm_start = [3]", "study.warm_start[0] must be a study name or a { storage = URL, study = NAME } table, got 3"),
    ('warm_start = ["loss", "loss"]', "study.warm_start must not name a study twice"),
    ("warm_start_top = 2", "study.warm_start_top needs study.warm_start"),
    ('warm_start = ["loss"]\nwarm_start_top = -1', "study.warm_start_top must be >= 0, got -1"),
    ('warm_start = ["loss"]\nwarm_start_top = 9', "study.warm_start_top must be <= study.n_trials (2), got 9"),
    ('warm_start = [{ storage = "postgresql://u:s3cret@db/x", study = "a" }]',
     "study.warm_start[0].storage holds a password"),
])
def test_a_bad_warm_start_is_one_line_at_launch_and_stores_nothing(pg_url, tmp_path, extra, says):
    env = tuner_env(pg_url, tmp_path)
    loss = study_file(tmp_path, "loss", extra='direction = "minimize"\nmetric = "val_loss"', space=SOURCE_SPACE)
    assert tuner("launch-study", str(loss), env=env).returncode == 0
    optuna.create_study(study_name="plain", storage=pg_url)  # a study tuner did not launch
    before = count_studies(pg_url)
    path = study_file(tmp_path, "dst", n_trials=2, epochs=1, pruner=NO_PRUNER, space=SOURCE_SPACE, extra=extra)
    line = _one_line_error(tuner("launch-study", str(path), env=env))
    assert says in line and "s3cret" not in line
    assert count_studies(pg_url) == before


def test_a_param_the_source_did_not_search_takes_the_value_it_was_fixed_at():
    """No database: the fitting rule alone. The source fixed dropout at tuner's default (0.0) and depth at 1."""
    from tuner.fleet.warm_start import fit
    from tuner.spec.config import parse_config

    def config(space: dict) -> object:
        return parse_config({"study": {"name": "x"}, "task": {"epochs": 2}, "space": space}, "test")

    lr = {"low": 1e-3, "high": 1e-1, "log": True}
    source = config({"lr": lr, "depth": 1})
    trial = optuna.trial.create_trial(params={"lr": 0.01}, distributions={"lr": optuna.distributions.
                                      FloatDistribution(1e-3, 1e-1, log=True)}, value=0.9)
    assert fit(trial, source, config({"lr": lr, "depth": 1, "dropout": {"low": 0.0, "high": 0.3}})) == \
        ({"lr": 0.01, "dropout": 0.0}, "")
    assert fit(trial, source, config({"lr": lr, "depth": 1, "dropout": {"low": 0.1, "high": 0.3}})) == \
        (None, "dropout outside [0.1, 0.3]")
    assert fit(trial, source, config({"lr": lr})) == (None, "depth is not the new constant 2")  # tuner's default
    assert fit(trial, source, config({"lr": {"low": 0.02, "high": 0.1}, "depth": 1})) == \
        (None, "lr outside [0.02, 0.1]")
    assert fit(trial, source, config({"lr": lr, "depth": {"low": 1, "high": 3}})) == ({"lr": 0.01, "depth": 1}, "")
