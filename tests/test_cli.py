"""The real CLI in subprocesses: launch-study, bad inputs as one line, readable by plain Optuna."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import optuna
import sqlalchemy

from conftest import PASSWORD, REPO, count_studies, study_file, tuner, tuner_env


def assert_one_line_error(result, *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    assert PASSWORD not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_launch_study_stores_the_config_and_prints_the_worker_command(pg_url, tmp_path):
    path = study_file(tmp_path, "launch-me")
    result = tuner("launch-study", str(path), env=tuner_env(pg_url, tmp_path))
    assert result.returncode == 0, result.stderr
    assert "tuner worker --study launch-me" in result.stdout
    # The hint carries the storage, password as ***, so that it works when pasted on another host...
    hint = next(line for line in result.stdout.splitlines() if line.startswith("next: "))
    assign, *command = shlex.split(hint.removeprefix("next: ").split("  (")[0])
    assert assign.startswith("TUNER_STORAGE=postgresql+psycopg2://tuner:***@")
    assert command == ["tuner", "worker", "--study", "launch-me"]
    assert "*** stands for the database password" in result.stdout
    # ...once the user puts the password back in: it names the database the study is in.
    filled = assign.removeprefix("TUNER_STORAGE=").replace("***", PASSWORD)
    status = tuner("status", "--study", "launch-me", env=tuner_env(filled, tmp_path))
    assert status.returncode == 0 and "launch-me" in status.stdout, status.stderr
    storage = optuna.storages.RDBStorage(pg_url)
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name("launch-me"))
    assert attrs["tuner_config"]["task"]["epochs"] == 3
    assert attrs["tuner_config"]["space"]["width"] == {"low": 4, "high": 12, "log": False}
    assert PASSWORD not in result.stdout + result.stderr


def test_launching_the_same_file_twice_reuses_the_study(pg_url, tmp_path):
    path = study_file(tmp_path, "twice")
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    again = tuner("launch-study", str(path), env=env)
    assert again.returncode == 0 and "reusing" in again.stdout
    assert count_studies(pg_url) == 1


def test_a_different_config_under_a_study_with_finished_trials_is_refused(pg_url, tmp_path):
    env = tuner_env(pg_url, tmp_path)
    assert tuner("run", str(study_file(tmp_path, "same", n_trials=1, epochs=1)), "--workers", "1", "--cpu",
                 env=env).returncode == 0
    changed = study_file(tmp_path, "same", n_trials=1, epochs=5)
    assert_one_line_error(tuner("launch-study", str(changed), env=env), "task.epochs (1 -> 5)", "--name",
                          "1 trials finished")
    renamed = tuner("launch-study", str(changed), "--name", "same-5", env=env)
    assert renamed.returncode == 0
    assert count_studies(pg_url) == 2


def test_a_bad_study_file_writes_nothing(pg_url, tmp_path):
    path = study_file(tmp_path, "bad", space="lr = { low = 0.0, high = 0.1, log = true }\n")
    result = tuner("launch-study", str(path), env=tuner_env(pg_url, tmp_path))
    assert_one_line_error(result, str(path), "space.lr.low", "0.0")
    assert count_studies(pg_url) == 0


def test_a_missing_study_is_one_line(pg_url, tmp_path):
    env = tuner_env(pg_url, tmp_path)
    for command in (["best", "--study", "nope"], ["worker", "--study", "nope", "--cpu"],
                    ["status", "--study", "nope"]):
        assert_one_line_error(tuner(*command, env=env), "no study named 'nope'",
                              "in postgresql+psycopg2://tuner:***@")


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path):
    url = f"postgresql+psycopg2://tuner:{PASSWORD}@127.0.0.1:9/tuner"  # port 9: nothing listens
    env = tuner_env(url, tmp_path)
    for command in (["status"], ["launch-study", str(study_file(tmp_path, "u"))]):
        assert_one_line_error(tuner(*command, env=env), "cannot reach the database", "tuner:***@127.0.0.1:9")
    # a worker waits for the database (it may be restarting) up to --db-retry-seconds, saying so at once
    waited = tuner("worker", "--cpu", "--db-retry-seconds", "2", env=env)
    assert waited.returncode == 1 and PASSWORD not in waited.stderr and "Traceback" not in waited.stderr
    assert "retrying for up to 2 s" in waited.stderr
    (error,) = [line for line in waited.stderr.splitlines() if line.startswith("error:")]
    assert "tuner:***@127.0.0.1:9" in error and "was unreachable for 2 s (connect)" in error
    flag = tuner("best", "--study", "x", "--storage", url, env=tuner_env("", tmp_path))
    assert_one_line_error(flag, "cannot reach the database")


def test_a_wrong_password_is_one_line_without_the_password(pg_url, tmp_path):
    wrong = pg_url.replace(PASSWORD, PASSWORD + "-wrong")
    result = tuner("status", env=tuner_env(wrong, tmp_path))
    assert_one_line_error(result, "cannot reach the database", "password authentication failed")


def test_a_gpu_that_does_not_exist_is_one_line(sqlite_url, tmp_path):
    result = tuner("worker", "--gpu", "7", env=tuner_env(sqlite_url, tmp_path))
    assert_one_line_error(result, "--gpu 7: no such GPU")


def test_storage_precedence_flag_over_env_over_file(tmp_path, monkeypatch):
    from tuner.store.urls import DEFAULT_STORAGE, resolve_storage_url

    secret_file = tmp_path / "url"
    secret_file.write_text("sqlite:///from-file.db\n")
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    monkeypatch.delenv("TUNER_STORAGE_FILE", raising=False)
    assert resolve_storage_url(None) == DEFAULT_STORAGE
    monkeypatch.setenv("TUNER_STORAGE_FILE", str(secret_file))
    assert resolve_storage_url(None) == "sqlite:///from-file.db"
    monkeypatch.setenv("TUNER_STORAGE", "sqlite:///from-env.db")
    assert resolve_storage_url(None) == "sqlite:///from-env.db"
    assert resolve_storage_url("sqlite:///flag.db") == "sqlite:///flag.db"


def test_every_command_has_help():
    import typer

    from tuner.cli.app import app

    commands = list(typer.main.get_command(app).commands)  # every command registered, as `tuner --help` lists
    assert len(commands) == len(app.registered_commands) and {"launch-study", "worker", "run"} <= set(commands)
    for command in commands:
        result = tuner(command, "--help", env=tuner_env("", REPO))
        assert result.returncode == 0 and f"Usage: tuner {command} " in result.stdout, command


def test_studies_are_readable_by_plain_optuna(pg_url, tmp_path):
    path = study_file(tmp_path, "plain", n_trials=3, epochs=2)
    env = tuner_env(pg_url, tmp_path)
    result = tuner("run", str(path), "--workers", "1", "--cpu", env=env)
    assert result.returncode == 0, result.stderr
    assert "3 trials, 1 worker\n" in result.stdout
    optuna_cli = str(Path(sys.executable).parent / "optuna")  # Optuna's own console script
    best = subprocess.run([optuna_cli, "best-trial", "--study-name", "plain", "--storage",
                           pg_url, "-f", "json"], env=env, capture_output=True, text=True)
    assert best.returncode == 0, best.stderr
    ours = json.loads(tuner("best", "--study", "plain", "--format", "json", env=env).stdout)
    assert json.loads(best.stdout)["number"] == ours["trial"]
    # The study names its metric (for the dashboard), so Optuna reports the value under that name.
    assert json.loads(best.stdout)["value"] == {"val_accuracy": ours["value"]}
    engine = sqlalchemy.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM trials")).scalar() == 3


def test_run_whose_every_trial_is_pruned_says_so_in_one_line_and_exits_1(pg_url, tmp_path):
    # max_params far below the smallest model: every trial is infeasible, PRUNED before it trains
    path = study_file(tmp_path, "all-pruned", n_trials=3, epochs=1, extra="max_params = 10")
    result = tuner("run", str(path), "--workers", "1", "--cpu", env=tuner_env(pg_url, tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "finished in" in result.stdout and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # piped, the workers' log comes first on stderr
    assert last.startswith("error: study 'all-pruned' ended with no COMPLETE trial (3 pruned, 0 failed)"), last
