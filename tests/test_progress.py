"""Progress and presentation: the live view of `tuner run` on a terminal, plain lines when piped, the snapshot
it is drawn from, `status --watch`, and what a finished study says."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import optuna

from conftest import study_file, tuner, tuner_env

# What rich.live writes to hide the cursor while it redraws in place: proof that the live view ran.
HIDE_CURSOR = "\x1b[?25l"


def run_on_a_terminal(args: list[str], env: dict[str, str], cwd, timeout: float = 300) -> tuple[int, str]:
    """Run the CLI with stdin/stdout/stderr on a pseudo-terminal, as a user's shell would; (exit code, screen)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
    proc = subprocess.Popen([sys.executable, "-m", "tuner", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=cwd, close_fds=True)
    os.close(slave)  # only the child holds it now: reading the master ends with EIO once the child is gone
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal has exited
                break
            if not data:
                break
            chunks.append(data)
        else:
            proc.kill()
            raise AssertionError(f"no exit within {timeout} s: {b''.join(chunks).decode(errors='replace')[-3000:]}")
        return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)


def terminal_env(url: str, tmp_path) -> dict[str, str]:
    env = tuner_env(url, tmp_path, TERM="xterm-256color")
    for forced in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "COLUMNS", "LINES"):
        env.pop(forced, None)
    return env


def test_run_on_a_terminal_shows_live_progress_and_sends_worker_logs_to_a_file(pg_url, tmp_path):
    path = study_file(tmp_path, "live", n_trials=2, epochs=2)
    code, screen = run_on_a_terminal(["run", str(path), "--workers", "1", "--cpu"], terminal_env(pg_url, tmp_path),
                                     cwd=tmp_path)
    assert code == 0, screen[-3000:]
    assert HIDE_CURSOR in screen  # drawn in place by rich.live
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)  # the words, without colours and cursor moves
    assert "0/2 trials" in text and "2/2 trials" in text  # the budget, from the first view to the last
    assert re.search(r"\d+ complete, \d+ pruned, 0 failed", text)
    assert re.search(r"best val_accuracy 0\.\d{4} \(trial \d\)", text)
    assert "ETA" in text and "best trial of 'live'" in text
    # The workers' log lines went to the file named on screen, not between the redraws.
    assert "worker log: tuner-run-live.log" in text
    assert "started: lr=" not in text and "epoch 1/2 value" not in text
    log = (tmp_path / "tuner-run-live.log").read_text()
    assert re.search(r"trial 0 started: lr=\S+ width=\d+ depth=\d dropout=\S+ weight_decay=\S+", log)
    assert "trial 1 started: lr=" in log and "epoch 2/2 value" in log


def test_run_piped_prints_one_plain_line_per_event_and_no_live_view(pg_url, tmp_path):
    path = study_file(tmp_path, "piped", n_trials=2, epochs=2)
    env = tuner_env(pg_url, tmp_path)
    for forced in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(forced, None)
    result = tuner("run", str(path), "--workers", "1", "--cpu", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\x1b" not in result.stdout + result.stderr  # no colours, no cursor control
    log = result.stderr.splitlines()
    for number in (0, 1):
        assert any(re.search(rf"trial {number} started: lr=\S+ width=\d+", line) for line in log), log
        assert any(re.search(rf"trial {number} epoch 1/2 value", line) for line in log), log
        assert any(re.search(rf"trial {number} (COMPLETE|PRUNED)", line) for line in log), log
    assert "best trial of 'piped'" in result.stdout
    assert not list(tmp_path.glob("tuner-run-*.log"))  # the log is the output


def finished_study(url: str, tmp_path, name: str, n_trials: int = 2) -> dict[str, str]:
    """A launched study whose budget is spent, without training anything: the trials are told by hand."""
    env = tuner_env(url, tmp_path)
    assert tuner("launch-study", str(study_file(tmp_path, name, n_trials=n_trials)), env=env).returncode == 0
    study = optuna.load_study(study_name=name, storage=url)
    for value in (0.5, 0.75)[:n_trials]:
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        study.tell(trial, value)
    return env


def test_a_worker_on_a_finished_study_says_there_is_nothing_to_do(pg_url, tmp_path):
    env = finished_study(pg_url, tmp_path, "done-w")
    result = tuner("worker", "--study", "done-w", "--cpu", env=env)
    assert result.returncode == 0, result.stderr
    assert "study 'done-w' is complete (2 of 2 trials); nothing to do" in result.stderr
    assert "serving study" not in result.stderr  # it said so before building anything for the study


def test_run_on_a_finished_study_says_there_is_nothing_to_do_and_shows_the_best(pg_url, tmp_path):
    env = finished_study(pg_url, tmp_path, "done-r")
    result = tuner("run", str(tmp_path / "done-r.toml"), "--workers", "1", "--cpu", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "study 'done-r' is complete (2 of 2 trials); nothing to do" in result.stdout
    assert "best trial of 'done-r': #1, value 0.7500" in " ".join(result.stdout.split())  # the title wraps
    assert "started" not in result.stderr  # no worker ran
    assert len(optuna.load_study(study_name="done-r", storage=pg_url).trials) == 2


def test_status_watch_refreshes_until_ctrl_c_and_exits_0(pg_url, tmp_path):
    env = finished_study(pg_url, tmp_path, "watched")
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "status", "--watch", "--interval", "0.5"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        # Two captions: the table was printed, and printed again after the interval.
        while sum("Ctrl-C to stop" in line for line in list(lines)) < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    stderr = proc.stderr.read()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    table = "".join(lines)
    assert re.search(r"watched\s*[│|]\s*2\s*[│|]\s*0\s*[│|]", table)  # study, complete, pruned
    assert "2/2 trials" in table  # budget spent


def test_the_snapshot_counts_trials_and_shows_each_running_trials_epoch(pg_url, tmp_path):
    from tuner.fleet.progress import ProgressWatch
    from tuner.store.storage import make_storage

    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(study_file(tmp_path, "snap", n_trials=5, epochs=4)), env=env).returncode == 0
    study = optuna.load_study(study_name="snap", storage=pg_url)
    watch = ProgressWatch(make_storage(pg_url), "snap")
    first = watch.snapshot()
    assert (first.finished, first.n_trials, first.epochs, first.best_value, first.eta_s) == (0, 5, 4, None, None)

    trials = [study.ask() for _ in range(5)]
    study.tell(trials[0], 0.6)
    study.tell(trials[1], 0.9)
    trials[2].report(0.3, 1)
    study.tell(trials[2], state=optuna.trial.TrialState.PRUNED)
    study.tell(trials[3], state=optuna.trial.TrialState.FAIL)
    for epoch in (1, 2, 3):
        trials[4].report(0.5, epoch)

    snap = watch.snapshot()
    assert (snap.complete, snap.pruned, snap.failed, snap.finished) == (2, 1, 1, 3)
    assert (snap.best_value, snap.best_trial) == (0.9, 1)
    assert [(t.number, t.epoch) for t in snap.running] == [(4, 3)]
    assert snap.elapsed_s > first.elapsed_s
    # 3 trials finished while watching, 2 left: the ETA is the measured rate applied to the rest
    assert abs(snap.eta_s - 2 * snap.elapsed_s / 3) < 1e-6
    assert not snap.done

    study.tell(trials[4], 0.7)
    extra = study.ask()
    study.tell(extra, 0.1)
    assert watch.snapshot().done and watch.snapshot().eta_s == 0.0
