"""Checkpoints: atomic writes, a corrupt newest file falls back to the previous one (or to epoch 0)."""

from __future__ import annotations

import torch
from optuna.trial import TrialState

from conftest import checkpoint_dir, study_file, tuner, tuner_env
from test_reliability import FAST_RECOVERY, LONG_TRIAL, interrupt_at_epoch, retries_of, trials
from tuner.store.checkpoint import CheckpointDir


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_then_to_none(tmp_path):
    checkpoints = CheckpointDir(tmp_path, "s", 0)
    for epoch in (1, 2, 3):
        checkpoints.save({"epoch": epoch, "w": torch.full((4,), float(epoch))})
    files = sorted(checkpoints.path.glob("epoch-*.pt"))
    assert [f.name for f in files] == ["epoch-0002.pt", "epoch-0003.pt"]  # only the newest two are kept
    assert not list(checkpoints.path.glob(".tmp-*"))  # no half-written leftovers
    files[1].write_bytes(files[1].read_bytes()[:40])  # truncated, as by a crash mid-copy
    assert checkpoints.load_latest()["epoch"] == 2
    files[0].write_bytes(b"garbage")
    assert checkpoints.load_latest() is None


def test_a_retry_with_a_corrupt_newest_checkpoint_resumes_from_the_previous_and_completes(pg_url, tmp_path):
    path = study_file(tmp_path, "corrupt", n_trials=1, epochs=30, space=LONG_TRIAL, worker=FAST_RECOVERY,
                      pruner='type = "none"')
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    victim, _, _ = interrupt_at_epoch("corrupt", env, tmp_path / "w.log", 3)
    newest = sorted((checkpoint_dir(pg_url, "corrupt") / str(victim)).glob("epoch-*.pt"))[-1]
    newest_epoch = int(newest.stem.split("-")[1])
    newest.write_bytes(b"\0" * 100)
    again = tuner("worker", "--study", "corrupt", "--cpu", "--threads", "1", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "is unreadable" in again.stderr
    (retry,) = retries_of(pg_url, "corrupt", victim)
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from_epoch"] == newest_epoch - 1
    assert sorted(retry.intermediate_values) == list(range(1, 31))
    assert [t.state for t in trials(pg_url, "corrupt")].count(TrialState.COMPLETE) == 1
