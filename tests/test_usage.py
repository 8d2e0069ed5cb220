"""A user's mistakes, run as real subprocesses: usage errors, storage values that are not URLs, databases that
are not there, a port in use, no network. Each is a short message with the right exit code: never a
traceback, never the password, and nothing created on disk by a command that only reads."""

from __future__ import annotations

import shlex
import socket
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import PASSWORD, study_file, tuner, tuner_env
from test_cli import assert_one_line_error

# click's usage errors: a usage line, a "Try ... -h" line and the message (typer boxes it, a few lines).
USAGE_ERROR_MAX_LINES = 8


def assert_short(result, code: int) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) <= USAGE_ERROR_MAX_LINES, result.stderr


@pytest.mark.parametrize("args, message", [
    (["best"], "Missing option '--study'"),
    (["bset"], "No such command 'bset'"),
    (["best", "--studdy", "x"], "No such option: --studdy"),
    (["worker", "--gpu", "x"], "Invalid value for '--gpu'"),
    (["dashboard", "--port", "99999"], "Invalid value for '--port'"),
    (["extend", "--study", "s", "--n-trials", "-3"], "Invalid value for '--n-trials'"),
    (["worker", "--study", "s", "--slots", "0"], "Invalid value for '--slots'"),
])
def test_a_usage_mistake_is_clicks_short_message_and_exit_code_2(args, message, tmp_path):
    result = tuner(*args, env=tuner_env("", tmp_path), cwd=tmp_path)
    assert_short(result, 2)
    assert message in result.stderr
    assert f"Usage: tuner {args[0] + ' ' if args[0] != 'bset' else ''}[OPTIONS]" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no tuner.db: the command never ran


@pytest.mark.parametrize("flag", ["-h", "--help"])
@pytest.mark.parametrize("command", [[], ["best"]])
def test_help_is_shown_with_h_or_help(command, flag, tmp_path):
    result = tuner(*command, flag, env=tuner_env("", tmp_path), cwd=tmp_path)
    assert_short(result, 0)
    assert "Usage: tuner" in result.stdout
    assert ("--study" if command else "launch-study") in result.stdout


def test_bare_tuner_shows_help_without_a_traceback(tmp_path):
    result = tuner(env=tuner_env("", tmp_path), cwd=tmp_path)
    assert result.returncode in (0, 2)  # click's no_args_is_help exits 2 since click 8.2
    assert "Traceback" not in result.stdout + result.stderr
    assert "launch-study" in result.stdout + result.stderr


def test_version_prints_the_installed_version(tmp_path):
    result = tuner("--version", env=tuner_env("", tmp_path), cwd=tmp_path)
    assert_short(result, 0)
    assert result.stdout == f"tuner {version('tuner')}\n"


def test_a_file_path_as_storage_suggests_the_sqlite_url(tmp_path):
    env = tuner_env("", tmp_path)
    for args, env in ((["status", "--storage", "tuner.db"], env), (["status"], {**env, "TUNER_STORAGE": "tuner.db"})):
        result = tuner(*args, env=env, cwd=tmp_path)
        assert_one_line_error(result, "storage URL 'tuner.db' is not a database URL; "
                                      "did you mean sqlite:///tuner.db?")
        assert "***" not in result.stderr  # a path has no password: no invented mask
    result = tuner("status", "--storage", "/data/runs/tuner.sqlite", env=env, cwd=tmp_path)
    assert_one_line_error(result, "did you mean sqlite:////data/runs/tuner.sqlite?")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [
    f"tuner:{PASSWORD}@db.internal:5432/tuner",  # the scheme forgotten
    PASSWORD,  # the password pasted where the URL goes
    f"postgresql://tuner:x@{PASSWORD}@127.0.0.1:9/tuner",  # an '@' in the password, not written %40
    f"postgresql://tuner:{PASSWORD}@127.0.0.1:port/tuner",
], ids=["no-scheme", "password-alone", "at-sign-in-password", "port-not-a-number"])
def test_a_storage_value_that_is_not_a_url_is_one_line_without_the_password(value, tmp_path):
    env = tuner_env("", tmp_path)
    for args, env in ((["status", "--storage", value], env), (["status"], {**env, "TUNER_STORAGE": value})):
        assert_one_line_error(tuner(*args, env=env, cwd=tmp_path), "storage")  # it checks: no PASSWORD
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("scheme", ["postgres://", "postgresql://"])
def test_postgres_urls_without_a_driver_use_psycopg2(scheme, pg_url, tmp_path):
    url = pg_url.replace("postgresql+psycopg2://", scheme, 1)
    env = tuner_env(url, tmp_path)
    launched = tuner("launch-study", str(study_file(tmp_path, "driverless")), env=env)
    assert launched.returncode == 0, launched.stderr  # psycopg (3), SQLAlchemy's default, is not installed
    assert "postgresql+psycopg2://tuner:***@" in launched.stdout
    status = tuner("status", "--study", "driverless", env=env)
    assert status.returncode == 0, status.stderr
    assert "driverless" in status.stdout
    assert PASSWORD not in launched.stdout + launched.stderr + status.stdout + status.stderr


@pytest.mark.parametrize("args", [
    ["status"], ["status", "--study", "s"], ["best", "--study", "s"], ["export", "--study", "s", "--out", "m.pt"],
    ["dashboard", "--port", "0"], ["worker", "--cpu"], ["worker", "--study", "s", "--cpu"],
    ["extend", "--study", "s", "--n-trials", "3"], ["delete", "--study", "s", "--yes"], ["report", "--study", "s"],
])
def test_commands_that_only_read_never_create_a_database_file(args, tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    # A timeout, not a hang, if a dashboard did start: it would serve until killed.
    default = tuner(*args, env=tuner_env("", tmp_path), cwd=cwd, timeout=120)  # sqlite:///tuner.db in cwd
    assert_one_line_error(default, f"no database at {cwd / 'tuner.db'}", f"sqlite:///{cwd / 'tuner.db'}")
    elsewhere = tmp_path / "runs" / "tuner.db"
    flagged = tuner(*args, "--storage", f"sqlite:///{elsewhere}", env=tuner_env("", tmp_path), cwd=cwd,
                    timeout=120)
    assert_one_line_error(flagged, f"no database at {elsewhere}")
    assert list(cwd.iterdir()) == [] and not elsewhere.parent.exists()


def test_a_database_without_its_driver_is_one_line_without_the_password(tmp_path):
    env = tuner_env("mysql://someone:hunter2@db.example/tuner", tmp_path)
    result = tuner("launch-study", str(study_file(tmp_path, "m")), env=env, cwd=tmp_path)
    assert_one_line_error(result, "mysql://someone:***@db.example/tuner", "driver is not installed")
    assert "hunter2" not in result.stdout + result.stderr


def test_a_missing_study_says_which_storage_it_looked_in(tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = tuner_env("", tmp_path)
    assert tuner("launch-study", str(study_file(tmp_path, "here")), env=env, cwd=cwd).returncode == 0
    result = tuner("best", "--study", "there", env=env, cwd=cwd)
    assert_one_line_error(result, f"no study named 'there' in sqlite:///{cwd / 'tuner.db'}", "studies here: here")


def test_the_launch_hint_carries_the_sqlite_storage_to_another_directory(tmp_path):
    launch_dir, other_dir = tmp_path / "launch", tmp_path / "other"
    launch_dir.mkdir(), other_dir.mkdir()
    env = tuner_env("", tmp_path)  # the default storage: sqlite:///tuner.db, relative to the launch directory
    launched = tuner("launch-study", str(study_file(tmp_path, "hinted", n_trials=1, epochs=1)), env=env,
                     cwd=launch_dir)
    assert launched.returncode == 0, launched.stderr
    hint = next(line for line in launched.stdout.splitlines() if line.startswith("next: "))
    command = shlex.split(hint.removeprefix("next: ").split("  (")[0])
    assert command[:4] == ["tuner", "worker", "--study", "hinted"]
    assert command[4:] == ["--storage", f"sqlite:///{launch_dir / 'tuner.db'}"]
    worker = tuner(*command[1:], "--cpu", "--threads", "1", env=env, cwd=other_dir)  # pasted elsewhere
    assert worker.returncode == 0, worker.stderr
    assert "trial 0 COMPLETE" in worker.stderr
    assert list(other_dir.iterdir()) == []  # no new, empty tuner.db where it was pasted


def test_a_dashboard_port_in_use_is_one_line(sqlite_url, tmp_path):
    env = tuner_env(sqlite_url, tmp_path)
    assert tuner("launch-study", str(study_file(tmp_path)), env=env).returncode == 0
    with socket.socket() as held:  # a real listener on the port, as another server would hold it
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = tuner("dashboard", "--port", str(port), env=env, timeout=120)
    assert_one_line_error(result, f"port {port} on 127.0.0.1 is in use; choose another with --port")
    assert "optuna-dashboard on" not in result.stdout  # nothing announced that is not served


def cifar_study(tmp_path: Path, data_dir: Path) -> Path:
    path = study_file(tmp_path, "c10", n_trials=1, epochs=1)
    text = path.read_text().replace('dataset = "digits"',
                                    f'dataset = "cifar10"\ndata_dir = "{data_dir}"\ndownload = true')
    path.write_text(text)
    return path


def test_a_cifar_download_without_network_is_one_line_from_the_worker(sqlite_url, tmp_path):
    data_dir = tmp_path / "cifar"
    # Point urllib at a proxy where nothing listens, so the download fails here and on a host with internet.
    env = {**tuner_env(sqlite_url, tmp_path), "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)
    assert tuner("launch-study", str(cifar_study(tmp_path, data_dir)), env=env).returncode == 0
    result = tuner("worker", "--study", "c10", "--cpu", env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and len(result.stderr.strip().splitlines()) <= 3, result.stderr
    for needle in ("cannot download cifar10 from www.cs.toronto.edu", "cifar-10-python.tar.gz", str(data_dir)):
        assert needle in errors[0], errors[0]
