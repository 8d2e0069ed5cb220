"""Study files: valid ones load; every mistake is one line naming the file, the field and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.spec.config import load_config, parse_config
from tuner.errors import TunerError

REPO = Path(__file__).resolve().parent.parent
GOOD = """
[study]
name = "x"
n_trials = 4
[task]
dataset = "digits"
model = "cnn"
epochs = 2
[space]
lr = { low = 1e-4, high = 3e-1, log = true }
width = { low = 8, high = 128, log = true }
depth = { low = 1, high = 4 }
dropout = { low = 0.0, high = 0.6 }
weight_decay = { low = 1e-6, high = 1e-1, log = true }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_shipped_studies_are_valid():
    config = load_config(REPO / "studies" / "digits.toml")
    assert config.study.name == "digits-cnn"
    assert config.param("width").low == 8 and config.param("width").log
    cifar = load_config(REPO / "studies" / "cifar10_resnet18.toml")
    assert cifar.task.model == "resnet18" and cifar.task.weights == "imagenet"
    assert cifar.param("freeze").choices == ("none", 2, 1)
    folder = load_config(REPO / "studies" / "imagefolder_resnet50.toml")
    assert folder.task.dataset == "imagefolder" and folder.task.image_size == 224


def test_a_valid_file_fills_defaults_and_types_ints(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.pruner["type"] == "median"
    assert isinstance(config.param("depth").low, int)
    assert isinstance(config.param("dropout").low, float)
    assert config.param("optimizer").value == "adamw"  # left out -> fixed at the default
    assert config.study.max_failures == config.study.n_trials


def test_the_stored_form_round_trips(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert parse_config(config.to_dict(), "db") == config


def test_name_flag_overrides_the_file(tmp_path):
    assert load_config(write(tmp_path, GOOD), name="other").study.name == "other"


@pytest.mark.parametrize("change, field, value", [
    (("[task]", "[task]\ncolour = 3"), "task.colour", "3"),
    (('name = "x"', 'name = "x"\nbudget = 3'), "study.budget", "3"),
    (("high = 3e-1, log", "high = 1e-5, log"), "space.lr.low", "0.0001"),
    (("lr = { low = 1e-4", "lr = { low = 0.0"), "space.lr.low", "0.0"),
    (("dataset = \"digits\"", "dataset = \"mnist\""), "task.dataset", "'mnist'"),
    (("model = \"cnn\"", "model = \"vgg\""), "task.model", "'vgg'"),
    (("epochs = 2", "epochs = \"two\""), "task.epochs", "'two'"),
    (("n_trials = 4", "n_trials = 0"), "study.n_trials", "0"),
    (("depth = { low = 1, high = 4 }", "depth = { low = 1.5, high = 4 }"), "space.depth.low", "1.5"),
    (("[space]", "[space]\nbeta2 = { low = 0.1, high = 0.9 }"), "space.beta2", "0.9"),
    (("[space]", "[space]\nmomentum = { low = 0.1, high = 1.0 }"), "space.momentum.high", "1.0"),
    (("[task]", "[tsak]"), "tsak", "dataset"),
    (("dropout = { low = 0.0, high = 0.6 }", "dropout = { low = 0.0, high = 1.0 }"), "space.dropout.high", "1.0"),
    (("depth = { low = 1, high = 4 }", "depth = { low = 0, high = 4 }"), "space.depth", "0"),
    (("[space]", "[space]\nfreeze = \"half\""), "space.freeze", "'half'"),
    (("[space]", "[space]\nfreeze = \"all\""), "space.freeze", "'all'"),
    (('model = "cnn"', 'model = "cnn"\nweights = "imagenet"'), "task.weights", "'imagenet'"),
    (('dataset = "digits"', 'dataset = "imagefolder"'), "task.data_dir", "required"),
    (('model = "cnn"', 'model = "cnn"\nprecision = "fp16"'), "task.precision", "'fp16'"),
    (('model = "cnn"', 'model = "cnn"\ncompile = "yes"'), "task.compile", "'yes'"),
])
def test_each_mistake_names_file_field_and_value(tmp_path, change, field, value):
    path = write(tmp_path, GOOD.replace(*change, 1))
    with pytest.raises(TunerError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"study file {path}: {field} ")
    assert value in message
    assert "\n" not in message


def test_missing_study_section_is_named(tmp_path):
    with pytest.raises(TunerError, match=r"section \[study\] is required"):
        load_config(write(tmp_path, "[task]\nepochs = 2\n"))


def test_missing_file_and_bad_toml_are_one_line(tmp_path):
    with pytest.raises(TunerError, match="no such file"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(TunerError, match="not valid TOML"):
        load_config(write(tmp_path, "[study\nname="))


def test_fixed_params_read_as_a_trial_trains_with_them():
    """The report's best-trial table lists them: batch_size's stored 0 ("not searched") is task.batch_size."""
    config = parse_config({"study": {"name": "x"}, "task": {"batch_size": 48},
                           "space": {"lr": {"low": 1e-3, "high": 1e-1}, "width": 8}}, "test")
    fixed = config.fixed()
    assert fixed["batch_size"] == 48 and fixed["width"] == 8 and "lr" not in fixed
