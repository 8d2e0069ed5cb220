"""On a CUDA GPU (marked `gpu`: deselected where there is none, see conftest.py). Real PostgreSQL, real workers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from optuna.trial import TrialState

from conftest import load, study_file, tuner, tuner_env

pytestmark = pytest.mark.gpu


def gpu_worker(study: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner", "worker", "--study", study, "--gpu", "0", *extra],
                          env=env, capture_output=True, text=True, timeout=900)


def test_a_digits_study_completes_on_gpu_0_in_bf16(pg_url, tmp_path):
    path = study_file(tmp_path, "gpu", n_trials=4, epochs=5, pruner='type = "none"')
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    result = gpu_worker("gpu", env)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(pg_url, "gpu").get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert {t.user_attrs["device"] for t in trials} == {"cuda:0"}
    assert {t.user_attrs["precision"] for t in trials} == {"bf16"}
    assert max(t.value for t in trials) > 0.8


def test_a_real_cuda_out_of_memory_fails_one_trial_and_the_worker_goes_on(pg_url, tmp_path):
    """Width 4096 at 224 px, batch 256: the first block's activations alone are ~50 GB in bf16, more than the
    GPU's free memory after its neighbours'; width 4-8 trains in a few hundred MB."""
    space = "lr = 0.01\nwidth = { low = 4, high = 8 }\ndepth = 2\n"
    path = study_file(tmp_path, "oom", n_trials=3, epochs=1, space=space, pruner='type = "none"',
                      extra="max_retries = 0")
    path.write_text(path.read_text().replace('dataset = "digits"', 'dataset = "synthetic"\nimage_size = 224\n'
                                             'num_samples = 512').replace("batch_size = 128", "batch_size = 256"))
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    load(pg_url, "oom").enqueue_trial({"width": 4096})
    result = gpu_worker("oom", env)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(pg_url, "oom").get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].params["width"] == 4096
    assert failed[0].user_attrs["fail_reason"].startswith("out of memory on cuda:0: CUDA out of memory")
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 3  # the same worker went on


def test_four_packed_slots_share_one_gpu_within_the_exact_budget(pg_url, tmp_path):
    path = study_file(tmp_path, "packed", n_trials=8, epochs=3, pruner='type = "none"')
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    result = gpu_worker("packed", env, "--slots", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(pg_url, "packed").get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    assert len({t.user_attrs["worker"] for t in trials}) > 1
