"""Your own model and data (examples/own_model), distillation from a teacher, and pruning of trained weights:
real studies on PostgreSQL, real worker processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import REPO, count_studies, load, study_file, tuner, tuner_env
from optuna.trial import TrialState

EXAMPLE = REPO / "examples" / "own_model"


def with_path(env: dict[str, str], *folders: Path) -> dict[str, str]:
    return {**env, "PYTHONPATH": os.pathsep.join([*map(str, folders), env.get("PYTHONPATH", "")])}


def test_the_example_model_and_dataset_of_your_own_run_a_study_end_to_end(pg_url, tmp_path):
    env = with_path(tuner_env(pg_url, tmp_path), EXAMPLE)
    run = tuner("run", str(EXAMPLE / "study.toml"), "--workers", "1", "--cpu", env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    trials = load(pg_url, "own-mlp").get_trials(deepcopy=False)
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 6
    best = json.loads(tuner("best", "--study", "own-mlp", "--format", "json", env=env).stdout)
    assert {"hidden", "layers", "lr", "dropout"} <= set(best["params"])  # the model's own params were searched
    assert best["value"] > 0.8, best
    # the MLP the plug-in built: 64 inputs -> hidden x layers -> 10
    hidden, layers = best["params"]["hidden"], best["params"]["layers"]
    assert best["param_count"] == 64 * hidden + hidden + (layers - 1) * (hidden * hidden + hidden) + hidden * 10 + 10


@pytest.mark.parametrize("model, message", [
    ("mlp_model:biuld", "task.model: module 'mlp_model' has no 'biuld'"),
    ("no_such_module:build", "task.model: cannot import module 'no_such_module'"),
    ("two_args:build", "task.model: 'two_args:build' must take (hparams, image_shape, num_classes)"),
    ("mlp_model", "task.model must be one of"),
])
def test_a_wrong_plugin_is_one_line_at_launch_and_nothing_is_stored(pg_url, tmp_path, model, message):
    (tmp_path / "two_args.py").write_text("def build(hparams, image_shape):\n    return None\n")
    path = tmp_path / "own.toml"
    path.write_text((EXAMPLE / "study.toml").read_text().replace('"mlp_model:build"', f'"{model}"'))
    result = tuner("launch-study", str(path), env=with_path(tuner_env(pg_url, tmp_path), EXAMPLE, tmp_path))
    assert result.returncode == 1, result.stdout
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert count_studies(pg_url) == 0


def test_pruning_half_the_weights_halves_them_and_reports_the_pruned_models_accuracy(pg_url, tmp_path):
    from tuner.engine.export import load_exported
    from tuner.engine.models import count_nonzero
    from tuner.engine.train import _prunable

    space = "lr = 0.01\nwidth = 16\ndepth = 2\nprune_amount = 0.5\n"
    path = study_file(tmp_path, "pruned", n_trials=1, epochs=4, space=space, pruner='type = "none"')
    env = tuner_env(pg_url, tmp_path)
    assert tuner("run", str(path), "--workers", "1", "--cpu", env=env, timeout=600).returncode == 0
    (trial,) = load(pg_url, "pruned").get_trials(deepcopy=False)
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["weights_pruned_at_epoch"] == 4  # the last quarter of 4 epochs fine-tunes
    assert trial.value == trial.intermediate_values[4]  # the reported accuracy is the pruned model's

    assert tuner("export", "--study", "pruned", "--out", str(tmp_path / "m.pt"), env=env).returncode == 0
    model = load_exported(tmp_path / "m.pt").model
    prunable = sum(module.weight.numel() for module, _ in _prunable(model))
    zeros = sum(int((module.weight == 0).sum()) for module, _ in _prunable(model))
    assert zeros == round(0.5 * prunable)  # half of the conv/linear weights, and they stayed zero
    assert trial.user_attrs["nonzero_params"] == count_nonzero(model) == trial.user_attrs["param_count"] - zeros
    best = json.loads(tuner("best", "--study", "pruned", "--format", "json", env=env).stdout)
    assert best["nonzero_params"] == trial.user_attrs["nonzero_params"]


def test_a_student_that_never_sees_a_label_learns_the_task_from_its_teacher(pg_url, tmp_path):
    """distill_alpha = 1: the loss is the KL divergence to the teacher's softened outputs alone, no label in it.
    A student far above chance learned from the teacher, through `tuner export`'s file, its normalisation mapped
    onto the study's. (Whether distillation beats labels alone on digits: bench/distill.py, docs/benchmarks.md.)"""
    env = tuner_env(pg_url, tmp_path)
    teacher = study_file(tmp_path, "teacher", n_trials=1, epochs=8, space="lr = 0.01\nwidth = 32\ndepth = 2\n",
                         pruner='type = "none"')
    assert tuner("run", str(teacher), "--workers", "1", "--cpu", env=env, timeout=600).returncode == 0
    assert tuner("export", "--study", "teacher", "--out", str(tmp_path / "teacher.pt"), env=env).returncode == 0
    assert load(pg_url, "teacher").best_value > 0.9
    from tuner.errors import TunerError
    from tuner.engine.teacher import load_teacher

    with pytest.raises(TunerError, match="predicts the classes 10: 0, 1, 2, 3, 4, ..., the study's data has 3"):
        load_teacher(str(tmp_path / "teacher.pt"), {"classes": ["a", "b", "c"], "preprocessing": {}},
                     torch.device("cpu"), "fp32")

    space = "lr = 0.02\nwidth = 8\ndepth = 2\ndistill_alpha = 1.0\ndistill_temperature = 4.0\n"
    path = study_file(tmp_path, "student", n_trials=1, epochs=5, space=space, pruner='type = "none"')
    path.write_text(path.read_text().replace('model = "cnn"', f'model = "cnn"\nteacher = "{tmp_path}/teacher.pt"')
                    .replace("batch_size = 128", "batch_size = 32"))
    run = tuner("run", str(path), "--workers", "1", "--cpu", env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert load(pg_url, "student").best_value > 0.8  # chance is 0.1


def test_distillation_needs_a_teacher_and_the_knobs_have_bounds(tmp_path):
    from tuner.spec.config import load_config
    from tuner.errors import TunerError

    for space, message in (("distill_alpha = 0.5\n", "space.distill_alpha needs a teacher"),
                           ("prune_amount = { low = 0.0, high = 1.0 }\n", "space.prune_amount.high must be < 1"),
                           ("distill_temperature = { low = 0.0, high = 2.0 }\n", "space.distill_temperature.low"),
                           ("prune_amount = 1.0\n", "space.prune_amount must be < 1, got 1.0"),
                           ("distill_alpha = 1.5\n", "space.distill_alpha must be <= 1, got 1.5"),
                           ("distill_temperature = 0\n", "space.distill_temperature must be > 0, got 0"),
                           ("width = 0\n", "space.width must be >= 1, got 0")):
        with pytest.raises(TunerError, match=message):
            load_config(study_file(tmp_path, "k", space="lr = 0.01\n" + space))
    with pytest.raises(TunerError, match="task.teacher"):
        from tuner.engine.teacher import load_teacher

        (tmp_path / "not-a-model.pt").write_bytes(b"nope")
        load_teacher(str(tmp_path / "not-a-model.pt"), {"classes": [], "preprocessing": {}}, torch.device("cpu"),
                     "fp32")
