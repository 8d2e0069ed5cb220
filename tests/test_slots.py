"""`tuner worker --slots K`: K trial loops on one device under one parent, on a real PostgreSQL, on the CPU.

The slots are ordinary workers of the study's one budget; the parent passes signals on and exits with their
worst code; an out-of-memory error fails only the trial that hit it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import optuna
import psutil
from optuna.trial import TrialState

from conftest import kill_mid_trial, load, study_file, tuner, tuner_env, wait_for

RELAXED_RECOVERY = "heartbeat_interval = 2\ngrace_period = 30\nreaper_period = 2"
# Fixed params, ~0.3-1 s per epoch on one CPU thread: two slots' trials overlap for seconds.
STEADY_TRIAL = "lr = 0.01\nwidth = 96\ndepth = 3\n"


def start_slots(study: str, env: dict[str, str], log: Path, slots: int = 2) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuner", "worker", "--study", study, "--cpu", "--slots",
                             str(slots)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def launch_steady(pg_url: str, tmp_path: Path, name: str, *, n_trials: int, epochs: int,
                  worker: str = RELAXED_RECOVERY, extra: str = "") -> tuple[dict[str, str], Path]:
    """A study of fixed, steady trials, launched; returns (its env, a worker log path)."""
    path = study_file(tmp_path, name, n_trials=n_trials, epochs=epochs, space=STEADY_TRIAL, pruner='type = "none"',
                      worker=worker, extra=extra)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    return env, tmp_path / f"{name}.log"


def training(pg_url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials that have reported an epoch."""
    running = load(pg_url, name).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t for t in running if t.intermediate_values]


def overlapping(trials: list[optuna.trial.FrozenTrial]) -> bool:
    """Did any two trials train at the same time?"""
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    return any(later_start < earlier_end for (_, earlier_end), (later_start, _) in zip(spans, spans[1:]))


def test_two_slots_train_two_trials_at_once_within_the_exact_budget(pg_url, tmp_path):
    env, log = launch_steady(pg_url, tmp_path, "slots", n_trials=6, epochs=4)
    proc = start_slots("slots", env, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]

    trials = load(pg_url, "slots").get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6, [(t.number, t.state) for t in trials]
    assert all(sorted(t.intermediate_values) == [1, 2, 3, 4] for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # two processes
    assert overlapping(trials), [(t.datetime_start, t.datetime_complete) for t in trials]
    text = log.read_text()
    assert "with 2 slots" in text and "Traceback" not in text


def test_sigterm_to_the_parent_stops_every_slot_and_leaves_no_running_trial(pg_url, tmp_path):
    env, log = launch_steady(pg_url, tmp_path, "stop", n_trials=6, epochs=30)
    proc = start_slots("stop", env, log)
    try:
        wait_for(lambda: len(training(pg_url, "stop")) == 2, 300, "two trials to train an epoch each")
        slots = psutil.Process(proc.pid).children()
        assert len(slots) == 2
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in slots)
    trials = load(pg_url, "stop").get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 2 and all(t.user_attrs["fail_reason"] == "interrupted" for t in interrupted)
    assert len([t for t in trials if t.state == TrialState.WAITING]) == 2  # their retries, queued
    assert "Traceback" not in log.read_text()


def test_an_out_of_memory_trial_fails_alone_and_its_slot_goes_on(pg_url, tmp_path):
    """A real allocation failure: the enqueued width makes a conv weight of ~290 TB, more than any machine's
    address space, so the CPU allocator refuses it (as CUDA's does for a model too big for the GPU)."""
    space = "lr = 0.01\nwidth = { low = 4, high = 12 }\ndepth = 2\n"
    path = study_file(tmp_path, "oom", n_trials=4, epochs=2, space=space, pruner='type = "none"',
                      worker=RELAXED_RECOVERY, extra="max_retries = 0")
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    load(pg_url, "oom").enqueue_trial({"width": 2_000_000})  # Optuna warns that it is out of range, and uses it
    log = tmp_path / "oom.log"
    proc = start_slots("oom", env, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]

    trials = load(pg_url, "oom").get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].params["width"] == 2_000_000
    assert failed[0].user_attrs["fail_reason"].startswith("out of memory on cpu: "), failed[0].user_attrs
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and all(t.params["width"] <= 12 for t in complete)  # the exact budget, all trained
    # the slot (process) that hit it trained another trial after it
    slot = failed[0].user_attrs["worker"]
    assert [t for t in complete if t.user_attrs["worker"] == slot and t.number > failed[0].number], \
        [(t.number, t.user_attrs["worker"]) for t in trials]
    assert "Traceback" not in log.read_text()


def test_a_slot_killed_behind_the_parents_back_is_replaced_and_the_study_finishes(pg_url, tmp_path):
    """SIGKILL to one slot (as the kernel's out-of-memory killer would): the parent starts a new one, the dead
    slot's trial is failed by a reaper and retried, the budget is exact and the parent exits 0."""
    fast = "heartbeat_interval = 1\ngrace_period = 3\nreaper_period = 1"
    # max_epochs (never reached) makes every epoch a claim under the budget lock, which kill_mid_trial steps: a
    # slot mid-trial is caught however fast the machine trains, and SIGKILLed as the out-of-memory killer would
    env, log = launch_steady(pg_url, tmp_path, "oomkill", n_trials=4, epochs=6, worker=fast, extra="max_epochs = 100")

    def slot_of(trial, parent) -> psutil.Process:
        return psutil.Process(int(trial.user_attrs["worker"].rsplit(":", 1)[1]))

    caught, proc = kill_mid_trial(pg_url, "oomkill", lambda: start_slots("oomkill", env, log),
                                  lambda: next(iter(training(pg_url, "oomkill")), None), slot_of, timeout=300)
    victim_pid = int(caught.user_attrs["worker"].rsplit(":", 1)[1])
    try:
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert f"worker pid {victim_pid} was killed by SIGKILL" in text
    trials = load(pg_url, "oomkill").get_trials(deepcopy=False)
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 4
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"].startswith("no heartbeat")
