"""The README's first command: the digits study end to end on the embedded SQLite default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
from optuna.trial import TrialState

from conftest import REPO


def test_the_digits_demo_finds_a_good_model_and_prunes(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TUNER_STORAGE", None)
    env.pop("TUNER_CHECKPOINT_DIR", None)
    # The timeout is generous: a busy machine is slow, not wrong.
    # The same invocation as the README, run in an empty directory: the default sqlite:///tuner.db lands there.
    run = subprocess.run([sys.executable, "-m", "tuner", "run", str(REPO / "studies" / "digits.toml")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "best trial of 'digits-cnn'" in run.stdout
    assert (tmp_path / "tuner.db").exists()
    best = json.loads(subprocess.run([sys.executable, "-m", "tuner", "best", "--study", "digits-cnn", "--format",
                                      "json"], cwd=tmp_path, env=env, capture_output=True, text=True).stdout)
    assert best["value"] >= 0.95
    # scored once on the held-out test split at the end of the run (never seen by the sampler)
    assert best["test_accuracy"] >= 0.9
    study = optuna.load_study(study_name="digits-cnn", storage=f"sqlite:///{tmp_path / 'tuner.db'}")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 40
    assert states.count(TrialState.PRUNED) > 0 and states.count(TrialState.COMPLETE) > 0
    # Checkpoints under ./checkpoints/<study uuid>: only the final weights of the best keep_best (5) trials
    # (and of any tied with the 5th) are left.
    values = sorted((t.value for t in study.trials if t.state == TrialState.COMPLETE), reverse=True)
    kept = {t.system_attrs.get("failed_trial", t.number)  # a retry's checkpoints are its original's
            for t in study.trials if t.state == TrialState.COMPLETE and t.value >= values[4]}
    (study_folder,) = (tmp_path / "checkpoints").iterdir()
    assert {int(p.name) for p in study_folder.iterdir()} == kept
    assert all(len(list(p.iterdir())) == 1 for p in study_folder.iterdir())
