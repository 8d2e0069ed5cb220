"""Workers die, pause, get interrupted, and PostgreSQL restarts: real processes, real signals, real PostgreSQL.

Studies here use a short heartbeat (1 s), grace (3 s) and reaper period (1 s), and fixed params so that
every trial takes a predictable few seconds.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pgserver
import sqlalchemy
from optuna.trial import TrialState

from conftest import (PASSWORD, BudgetLockHold, load, start_worker, study_file, tuner, tuner_env, wait_all,
                      wait_for)
from conftest import restart_postgres as _restart_postgres

FAST_RECOVERY = "heartbeat_interval = 1\ngrace_period = 3\nreaper_period = 1"
RECOVERY_BOUND = 1 + 3 + 1  # interval + grace + reaper period, seconds
# For tests that kill no worker: a live worker on a loaded machine never misses 30 s of heartbeats.
RELAXED_RECOVERY = "heartbeat_interval = 2\ngrace_period = 30\nreaper_period = 2"
# ~0.3-1 s per epoch on one CPU thread: long enough to kill mid-trial, short enough for CI.
LONG_TRIAL = "lr = 0.01\nwidth = 96\ndepth = 3\n"


def long_study(tmp_path: Path, name: str, *, n_trials: int, epochs: int, extra: str = "") -> Path:
    return study_file(tmp_path, name, n_trials=n_trials, epochs=epochs, space=LONG_TRIAL, worker=FAST_RECOVERY,
                      pruner='type = "none"', extra=extra)


def epoch_reached(log: Path, epoch: int) -> int | None:
    """The trial number whose epoch `epoch` this worker has logged, if any."""
    match = re.search(rf"trial (\d+) epoch {epoch}/", log.read_text() if log.exists() else "")
    return int(match.group(1)) if match else None


def trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return load(url, name).get_trials(deepcopy=False)


def state_of(url: str, name: str, number: int) -> TrialState:
    return next(t.state for t in trials(url, name) if t.number == number)


def retries_of(url: str, name: str, number: int) -> list[optuna.trial.FrozenTrial]:
    """The retries made after trial `number` failed (Optuna's retry_history lists every failed trial of the
    chain; `failed_trial` names only its first, so a retry of a retry would be missed by it)."""
    return [t for t in trials(url, name) if number in t.system_attrs.get("retry_history", [])]


def logged_epochs(log: Path, trial: int) -> list[int]:
    return [int(e) for e in re.findall(rf"trial {trial} epoch (\d+)/", log.read_text())]


def interrupt_at_epoch(study: str, env: dict[str, str], log: Path, epoch: int) -> tuple[int, int, float]:
    """Start a worker and SIGTERM it once it logs `epoch`; returns (its trial number, the last epoch it had
    logged when the signal was sent, seconds it took to exit). The worker is stopped (SIGSTOP) while the test
    reads that epoch and signals, so "the epoch it was in" is known exactly however fast the machine trains."""
    proc = start_worker(study, env, log)
    victim = wait_for(lambda: epoch_reached(log, epoch), 120, f"epoch {epoch}", interval=0.02)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(0.2)  # a log line being written as it stopped is flushed to the file (unbuffered output)
    at_epoch = logged_epochs(log, victim)[-1]
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    sent = time.monotonic()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    return victim, at_epoch, time.monotonic() - sent


def assert_clean_logs(*logs: Path) -> None:
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]
        assert "Cannot tell" not in text
        assert PASSWORD not in text


def test_a_killed_workers_trial_is_failed_while_others_are_busy_and_resumed_once(pg_url, tmp_path):
    # 5000 epochs: no machine finishes a trial in the seconds this test watches, so the other two workers are
    # mid-trial when the dead one's trial is failed (only their reaper threads can notice), and a fourth worker,
    # started then, is the one that takes its retry. The workers are stopped with SIGTERM at the end.
    path = long_study(tmp_path, "kill", n_trials=3, epochs=5000)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    logs = [tmp_path / f"w{i}.log" for i in range(4)]
    procs = [start_worker("kill", env, log) for log in logs[:3]]
    try:
        victim = wait_for(lambda: epoch_reached(logs[0], 3), 120, "worker 0 to reach epoch 3")
        procs[0].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        procs[0].wait()
        last_reported = max(next(t for t in trials(pg_url, "kill") if t.number == victim).intermediate_values)

        # Nominally the reapers take at most RECOVERY_BOUND s; the wait allows for a loaded machine.
        wait_for(lambda: state_of(pg_url, "kill", victim) == TrialState.FAIL, RECOVERY_BOUND + 60,
                 "the dead trial to be failed", interval=0.1)
        recovered_in = time.monotonic() - killed_at
        busy = [t for t in trials(pg_url, "kill") if t.state == TrialState.RUNNING and t.number != victim]
        assert len(busy) == 2, "the other workers were not busy when the dead trial was failed"
        # Never before the grace period: the last heartbeat was at most one interval before the kill.
        assert recovered_in > 3 - 1, recovered_in
        dead = next(t for t in trials(pg_url, "kill") if t.number == victim)
        assert dead.user_attrs["fail_reason"] == "no heartbeat for 3 s (its worker died or froze)"

        procs.append(start_worker("kill", env, logs[3]))  # the only trial it can take is the retry
        (retry,) = wait_for(lambda: retries_of(pg_url, "kill", victim), 60, "the retry to be queued")
        resumed_epoch = wait_for(lambda: epoch_reached(logs[3], last_reported + 2), 300, "the retry to train")
        assert resumed_epoch == retry.number
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = wait_all(procs, timeout=120)
    assert codes == [-signal.SIGKILL] + [128 + signal.SIGTERM] * 3
    retry = next(t for t in trials(pg_url, "kill") if t.number == retry.number)
    assert retry.params == dead.params
    # It resumed from the last checkpoint (written right after each report) and trained only the rest.
    resumed = retry.user_attrs["resumed_from_epoch"]
    assert resumed in (last_reported, last_reported - 1) and resumed >= 3
    assert logged_epochs(logs[3], retry.number)[0] == resumed + 1
    assert set(range(1, resumed + 1)) <= set(retry.intermediate_values)  # its curve carries the dead one's
    assert not [t for t in trials(pg_url, "kill") if t.state == TrialState.RUNNING]
    assert_clean_logs(*logs[1:])


def test_sigterm_fails_the_trial_as_interrupted_exits_promptly_and_the_retry_finishes(pg_url, tmp_path):
    path = long_study(tmp_path, "term", n_trials=1, epochs=30)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    log = tmp_path / "w.log"
    victim, at_epoch, exit_seconds = interrupt_at_epoch("term", env, log, 2)
    (failed,) = [t for t in trials(pg_url, "term") if t.number == victim]
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "interrupted"
    # Promptly: it stopped within the epoch it was in (a batch, not the remaining epochs).
    assert max(failed.intermediate_values) <= at_epoch + 1 < 30, exit_seconds
    assert logged_epochs(log, victim)[-1] <= at_epoch + 1
    assert not [t for t in trials(pg_url, "term") if t.state == TrialState.RUNNING]
    (retry,) = retries_of(pg_url, "term", victim)
    assert retry.state == TrialState.WAITING

    again = tuner("worker", "--study", "term", "--cpu", "--threads", "1", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    (retry,) = retries_of(pg_url, "term", victim)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] >= 1
    assert "fail_reason" not in retry.user_attrs
    assert_clean_logs(log)


def pause_past_the_grace_period(pg_url: str, tmp_path: Path, name: str) -> tuple[list, list[Path], int]:
    """Two workers; the first is frozen (SIGSTOP) at epoch 2 until the other's reaper has failed its trial and
    queued the retry. Returns (both processes, their logs, the frozen worker's trial number)."""
    path = long_study(tmp_path, name, n_trials=2, epochs=8)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    logs = [tmp_path / "paused.log", tmp_path / "other.log"]
    procs = [start_worker(name, env, log) for log in logs]
    victim = wait_for(lambda: epoch_reached(logs[0], 2), 300, "epoch 2")
    procs[0].send_signal(signal.SIGSTOP)
    wait_for(lambda: retries_of(pg_url, name, victim), 30, "the paused trial to be failed and retried")
    return procs, logs, victim


def test_a_worker_paused_past_the_grace_period_drops_its_stale_result(pg_url, tmp_path):
    procs, logs, victim = pause_past_the_grace_period(pg_url, tmp_path, "pause")
    time.sleep(1)
    procs[0].send_signal(signal.SIGCONT)
    assert wait_all(procs, timeout=300) == [0, 0]
    all_trials = trials(pg_url, "pause")
    assert sum(t.state == TrialState.COMPLETE for t in all_trials) == 2  # one result per slot, not three
    assert next(t for t in all_trials if t.number == victim).state == TrialState.FAIL
    assert logs[0].read_text().count("dropping its result") == 1
    assert_clean_logs(*logs)


def test_a_paused_worker_stopped_by_sigterm_drops_its_interrupted_result_too(pg_url, tmp_path):
    """The chaos soak's case: a worker frozen past the grace period (its trial failed by the other worker's
    reaper and retried) gets SIGTERM as it wakes. Its own "interrupted" FAIL is not the trial's: it says LOST."""
    procs, logs, victim = pause_past_the_grace_period(pg_url, tmp_path, "pauseterm")
    procs[0].send_signal(signal.SIGTERM)
    procs[0].send_signal(signal.SIGCONT)
    assert wait_all(procs, timeout=300) == [128 + signal.SIGTERM, 0]
    failed = next(t for t in trials(pg_url, "pauseterm") if t.number == victim)
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"].startswith("no heartbeat")
    assert logs[0].read_text().count("dropping its result") == 1
    assert f"trial {victim} LOST" in logs[0].read_text()
    assert_clean_logs(*logs)


def test_eight_workers_finish_exactly_the_budget_even_when_stopped_and_restarted(pg_url, tmp_path):
    # No worker is killed here, so no fast recovery: every FAIL must be a SIGTERM ("interrupted"), never a
    # live worker's trial taken for dead because eight workers on two cores run late.
    path = study_file(tmp_path, "eight", n_trials=24, epochs=2, worker=RELAXED_RECOVERY)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0

    def finished() -> int:
        return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials(pg_url, "eight"))

    # The stop must land mid-study on any machine: the test takes the budget lock right after the workers got
    # their first trials (they queued behind it before us), so no worker can start another until it is released:
    # at most one trial per worker has started when SIGTERM arrives, wherever the machine's speed puts them.
    hold = BudgetLockHold(pg_url, "eight")
    first = [start_worker("eight", env, tmp_path / f"a{i}.log") for i in range(8)]
    hold.wait_for_waiters(8, timeout=300)
    hold.release()
    hold = BudgetLockHold(pg_url, "eight")
    wait_for(lambda: finished() >= 1, 300, "a finished trial", interval=0.05)
    for p in first:
        p.send_signal(signal.SIGTERM)
    hold.release()  # interrupted trials take the lock to fail and queue their retries, then their workers exit
    codes = wait_all(first, timeout=120)
    assert all(code in (0, 128 + signal.SIGTERM) for code in codes), codes
    assert finished() < 24
    assert not [t for t in trials(pg_url, "eight") if t.state == TrialState.RUNNING]

    second = [start_worker("eight", env, tmp_path / f"b{i}.log") for i in range(8)]
    assert wait_all(second, timeout=300) == [0] * 8
    all_trials = trials(pg_url, "eight")
    assert finished() == 24
    assert sorted(t.number for t in all_trials) == list(range(len(all_trials)))
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # every interrupted trial was retried (interruptions never use up retries), a retry's too: a SIGTERM that
    # lands while a worker takes its next trial interrupts that trial, which may be a retry itself
    for t in all_trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs["fail_reason"] == "interrupted"
            assert retries_of(pg_url, "eight", t.number)
    assert_clean_logs(*tmp_path.glob("[ab]*.log"))


def _assert_nothing_lost(url: str, name: str, n_trials: int, epochs: int) -> None:
    all_trials = trials(url, name)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in all_trials) == n_trials
    for t in all_trials:
        if t.state == TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == list(range(1, epochs + 1))


def test_workers_ride_out_a_postgresql_restart(own_postgres, tmp_path):
    pgdata, admin_uri, url = own_postgres
    path = long_study(tmp_path, "restart", n_trials=6, epochs=4)
    env = tuner_env(url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [start_worker("restart", env, log) for log in logs]
    wait_for(lambda: epoch_reached(logs[0], 2), 300, "training to be under way")  # a busy machine starts workers slowly
    _restart_postgres(pgdata, admin_uri, down_for=5)
    assert wait_all(procs, timeout=400) == [0, 0], [log.read_text()[-2000:] for log in logs]
    _assert_nothing_lost(url, "restart", 6, 4)
    assert any("retrying" in log.read_text() for log in logs)  # they did see the outage
    assert_clean_logs(*logs)


def test_workers_ride_out_killed_backend_connections(pg_url, pg_server, tmp_path):
    path = long_study(tmp_path, "terminate", n_trials=6, epochs=4)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [start_worker("terminate", env, log) for log in logs]
    database = sqlalchemy.engine.make_url(pg_url).database
    admin = sqlalchemy.create_engine(pg_server[0], isolation_level="AUTOCOMMIT")
    killed = 0
    for _ in range(3):  # three rounds, each cutting every connection of the study's database
        wait_for(lambda: epoch_reached(logs[0], 2), 300, "training to be under way")  # a busy machine starts workers slowly
        with admin.connect() as conn:
            killed += conn.execute(sqlalchemy.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = :d"),
                {"d": database}).scalar()
        time.sleep(1.5)
    admin.dispose()
    assert killed > 0
    assert wait_all(procs, timeout=400) == [0, 0], [log.read_text()[-2000:] for log in logs]
    _assert_nothing_lost(pg_url, "terminate", 6, 4)
    assert_clean_logs(*logs)


def test_a_long_trial_under_cpu_load_is_never_falsely_failed(pg_url, tmp_path):
    # The trial is made long, not hoped to be: 5000 epochs, which no machine finishes in the time watched. The
    # test watches it stay RUNNING, with both cores kept busy, for three grace periods plus reaper rounds, then
    # stops the worker with SIGTERM: the trial must end as "interrupted" (never failed as stale by the reaper,
    # which runs in this very worker) and be retried.
    path = long_study(tmp_path, "load", n_trials=1, epochs=5000)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    # Two busy-looping processes saturate both cores for the whole trial.
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    log = tmp_path / "w.log"
    proc = start_worker("load", env, log)
    try:
        wait_for(lambda: epoch_reached(log, 1), 300, "epoch 1")  # training, signal handlers in place
        watched_from = time.monotonic()
        while time.monotonic() - watched_from < 3 * 3 + 2 * 1:  # 3 grace periods + 2 reaper periods
            (trial,) = trials(pg_url, "load")
            assert trial.state == TrialState.RUNNING, (trial.state, trial.user_attrs)
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert wait_all([proc], timeout=120) == [128 + signal.SIGTERM]
    finally:
        for p in (*burners, proc):
            if p.poll() is None:
                p.kill()
    first, retry = trials(pg_url, "load")
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == "interrupted"
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == first.number
    assert "dropping its result" not in log.read_text() and "no heartbeat" not in log.read_text()
    assert_clean_logs(log)


def test_a_diverging_trial_fails_with_its_reason_and_the_retry_cap_holds(pg_url, tmp_path):
    # lr 1e38 with SGD: the weights overflow float32 and the loss is NaN in the first epoch (seeded, so always).
    space = 'lr = 1e38\noptimizer = "sgd"\nwidth = 4\ndepth = 1\n'
    path = study_file(tmp_path, "nan", n_trials=3, epochs=2, space=space, worker=FAST_RECOVERY,
                      extra="max_retries = 1\nmax_failures = 4")
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    result = tuner("worker", "--study", "nan", "--cpu", "--threads", "1", env=env)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: study 'nan': 4 trials failed (study.max_failures = 4); see `tuner status` and the "
                     "trials' fail_reason"]
    all_trials = trials(pg_url, "nan")
    assert [t.state for t in all_trials] == [TrialState.FAIL] * 4
    assert all(re.fullmatch(r"training loss is (nan|inf) in epoch 1", t.user_attrs["fail_reason"])
               for t in all_trials)
    # trial 0 -> retry 1 (cap 1 reached) -> new trial 2 -> retry 3
    assert [t.system_attrs.get("failed_trial") for t in all_trials] == [None, 0, None, 2]
    assert "Traceback" not in result.stderr


def test_an_objective_that_raises_is_failed_with_the_reason_and_the_worker_goes_on(pg_url, tmp_path):
    path = study_file(tmp_path, "raise", n_trials=2, epochs=1, extra="max_retries = 0\nmax_failures = 2")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("checkpoints cannot be written under a file")
    env = tuner_env(pg_url, tmp_path, TUNER_CHECKPOINT_DIR=str(blocker))
    assert tuner("launch-study", str(path), env=env).returncode == 0
    result = tuner("worker", "--study", "raise", "--cpu", env=env)
    assert result.returncode == 1 and "2 trials failed" in result.stderr
    all_trials = trials(pg_url, "raise")
    assert len(all_trials) == 2  # it went on to a second trial after the first failed
    for t in all_trials:
        assert t.state == TrialState.FAIL
        assert t.user_attrs["fail_reason"].startswith(("FileExistsError", "NotADirectoryError"))
        assert str(blocker) in t.user_attrs["fail_reason"]
    assert not retries_of(pg_url, "raise", 0)  # max_retries = 0


def test_several_processes_on_sqlite_finish_the_budget_without_lock_errors(sqlite_url, tmp_path):
    path = study_file(tmp_path, "lite", n_trials=20, epochs=2)
    env = tuner_env(sqlite_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    logs = [tmp_path / f"w{i}.log" for i in range(4)]
    assert wait_all([start_worker("lite", env, log) for log in logs], timeout=400) == [0] * 4
    states = [t.state for t in trials(sqlite_url, "lite")]
    assert len(states) == 20 and all(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    for log in logs:
        assert "database is locked" not in log.read_text()
    assert_clean_logs(*logs)


def test_the_password_is_not_in_ps_or_logs_of_tuner_run(pg_url, tmp_path):
    path = long_study(tmp_path, "secret", n_trials=2, epochs=3)
    env = tuner_env(pg_url, tmp_path)
    run = subprocess.Popen([sys.executable, "-m", "tuner", "run", str(path), "--workers", "2", "--cpu"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    while run.poll() is None:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        seen += [line for line in ps.splitlines() if "tuner worker" in line or "-m tuner" in line]
        assert PASSWORD not in ps
        time.sleep(0.3)
    output = run.stdout.read()
    assert run.returncode == 0, output[-3000:]
    assert any("worker --study secret" in line for line in seen)  # we did look at the workers
    assert PASSWORD not in output
    assert "tuner:***@" in output  # the workers log the redacted URL


def test_a_worker_that_cannot_get_a_connection_says_so(pg_server, tmp_path):
    admin = sqlalchemy.create_engine(pg_server[0], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("DROP ROLE IF EXISTS capped")
        conn.exec_driver_sql("CREATE ROLE capped LOGIN CONNECTION LIMIT 0")
    admin.dispose()
    url = sqlalchemy.engine.make_url(pg_server[0]).set(username="capped").render_as_string(hide_password=False)
    # the server refusing a connection may be a full server that frees a slot soon: the worker waits (up to
    # --db-retry-seconds), says so at once, and then gives up in one line
    result = tuner("worker", "--cpu", "--db-retry-seconds", "3", env=tuner_env(url, tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert any("retrying for up to 3 s" in line and "too many connections" in line for line in lines), lines
    (error,) = [line for line in lines if line.startswith("error:")]
    assert "was unreachable for 3 s (connect)" in error and "too many connections" in error


def test_a_second_signal_exits_at_once(pg_url, tmp_path):
    path = long_study(tmp_path, "twice", n_trials=1, epochs=30)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    log = tmp_path / "w.log"
    proc = start_worker("twice", env, log)
    wait_for(lambda: epoch_reached(log, 1), 300, "epoch 1")
    # The first signal's clean exit has to store the FAIL under the budget lock, which the test holds:
    # the worker is provably still busy with the first signal when the second one arrives.
    hold = BudgetLockHold(pg_url, "twice")
    try:
        hold.wait_for_waiters(1)  # its reaper
        proc.send_signal(signal.SIGINT)
        hold.wait_for_waiters(2)  # and now its main loop, telling FAIL "interrupted"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == -signal.SIGINT  # ended by the signal itself (a shell shows 130)
    finally:
        hold.release()
    # At once: it did not stay to fail its trial (the reaper of the next worker will).
    (trial,) = trials(pg_url, "twice")
    assert trial.state == TrialState.RUNNING


def test_a_trial_whose_result_waits_for_a_busy_lock_is_not_taken_for_dead(pg_url, tmp_path):
    """A live worker must never lose its trial to the reaper: the heartbeat runs until the result is stored."""
    path = long_study(tmp_path, "slowtell", n_trials=1, epochs=30)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    log = tmp_path / "w.log"
    proc = start_worker("slowtell", env, log)
    victim = wait_for(lambda: epoch_reached(log, 1), 300, "epoch 1")
    hold = BudgetLockHold(pg_url, "slowtell")
    try:
        hold.wait_for_waiters(1)  # the worker's reaper queues first...
        proc.send_signal(signal.SIGTERM)
        hold.wait_for_waiters(2)  # ...then its main loop, which must store FAIL "interrupted" under the lock
        time.sleep(3 + 3)  # twice the grace period: with no heartbeat the trial would now look dead
    finally:
        hold.release()  # the reaper gets the lock first, and must find the trial alive
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    (failed,) = [t for t in trials(pg_url, "slowtell") if t.number == victim]
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "interrupted"
    assert len(retries_of(pg_url, "slowtell", victim)) == 1
    assert_clean_logs(log)


def test_a_worker_exits_with_one_line_when_the_database_stays_down(own_postgres, tmp_path):
    pgdata, _, url = own_postgres
    path = long_study(tmp_path, "down", n_trials=2, epochs=30)
    env = tuner_env(url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    log = tmp_path / "w.log"
    proc = start_worker("down", env, log, "--db-retry-seconds", "5")
    wait_for(lambda: epoch_reached(log, 1), 300, "epoch 1")
    pgserver._commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user="pgserver")
    assert proc.wait(timeout=90) == 1
    text = log.read_text()
    (error,) = [line for line in text.splitlines() if line.startswith("error:")]
    assert error.startswith("error: the database at postgresql+psycopg2://tuner:***@")
    assert "was unreachable for 5 s" in error
    assert "Traceback" not in text and PASSWORD not in text


def test_an_interruption_never_uses_up_a_retry(pg_url, tmp_path):
    """max_retries = 0: a trial that fails is given up at once, but one stopped by a signal is still retried
    (the signal was the user's or the scheduler's doing, not the trial's)."""
    path = long_study(tmp_path, "noretry", n_trials=1, epochs=20, extra="max_retries = 0")
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    victim, _, _ = interrupt_at_epoch("noretry", env, tmp_path / "w.log", 1)
    (retry,) = retries_of(pg_url, "noretry", victim)
    assert retry.state == TrialState.WAITING
    assert state_of(pg_url, "noretry", victim) == TrialState.FAIL
