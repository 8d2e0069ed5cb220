"""Backbones, local weights, freeze, ImageFolder of real digit images, export (all on the CPU)."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from PIL import Image
from sklearn.datasets import load_digits

from conftest import study_file, tuner, tuner_env
from tuner.spec.config import TaskSection
from tuner.data.cache import prepare
from tuner.data.loader import open_batches
from tuner.errors import TunerError
from tuner.engine.models import build_model, count_parameters
from tuner.spec.space import HParams

HP = HParams(lr=0.01, width=16, depth=1, dropout=0.1, weight_decay=0.0, optimizer="adamw")


def write_digit_folder(root, per_class: int = 25, classes: int = 10):
    """Real handwritten digits (scikit-learn's), as PNG files in one folder per class."""
    digits = load_digits()
    for label in range(classes):
        folder = root / str(label)
        folder.mkdir(parents=True)
        images = digits.images[digits.target == label][:per_class]
        for i, image in enumerate(images):
            Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((32, 32)).save(folder / f"{i}.png")
    return root


def test_local_weights_are_loaded_and_freeze_changes_what_trains(tmp_path):
    import torchvision

    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    weights = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), weights)
    shape = (3, 96, 96)  # above the small-image limit: the pretrained stem is kept
    counts = {}
    for freeze in ("none", 2, "all"):
        model = build_model("resnet18", str(weights), HParams(**{**HP.__dict__, "freeze": freeze}), shape, 10)
        assert torch.equal(model.body.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
        assert torch.equal(model.body.conv1.weight, reference.conv1.weight)
        counts[freeze] = count_parameters(model)
    total = counts["none"][0]
    assert counts["none"] == (total, total)
    assert counts["all"][1] == 512 * 16 + 16 + 16 * 10 + 10  # only the head: 512 -> 16 -> 10
    assert counts["all"][1] < counts[2][1] < total  # layer3 + layer4 + head
    assert counts[2][1] == counts["all"][1] + sum(p.numel() for p in reference.layer3.parameters()) + sum(
        p.numel() for p in reference.layer4.parameters())


def test_small_images_get_the_cifar_stem_and_a_linear_head_at_depth_zero():
    model = build_model("resnet18", "none", HParams(**{**HP.__dict__, "depth": 0}), (3, 32, 32), 10)
    assert model.body.conv1.kernel_size == (3, 3) and model.body.conv1.stride == (1, 1)
    assert isinstance(model.body.maxpool, torch.nn.Identity)
    assert [type(m).__name__ for m in model.head] == ["Dropout", "Linear"]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    for name in ("mobilenet_v3_small", "efficientnet_b0", "resnet34", "resnet50"):
        assert build_model(name, "none", HP, (1, 32, 32), 7)(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def test_a_weights_file_that_does_not_fit_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(TunerError, match="does not fit resnet18"):
        build_model("resnet18", str(bad), HP, (3, 32, 32), 10)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": object()}, pickled)  # needs unsafe unpickling: refused, no fallback
    with pytest.raises(TunerError, match="not a weights-only state dict"):
        build_model("resnet18", str(pickled), HP, (3, 32, 32), 10)


def test_imagefolder_splits_real_digits_and_rejects_bad_folders(tmp_path):
    root = write_digit_folder(tmp_path / "digits", per_class=10)
    data = prepare(TaskSection(dataset="imagefolder", data_dir=str(root), image_size=32))
    assert data.image_shape == (3, 32, 32) and data.num_classes == 10
    # seeded and stratified: test_fraction 0.1 first, then val_fraction 0.2 of the rest
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [72, 18, 10]
    (tmp_path / "one" / "only").mkdir(parents=True)
    for bad, message in ((tmp_path / "missing", "is not a directory"), (tmp_path / "one", "at least two")):
        with pytest.raises(TunerError, match=message):
            prepare(TaskSection(dataset="imagefolder", data_dir=str(bad)))


def test_fine_tuning_a_backbone_from_a_local_weights_file_on_an_imagefolder(pg_url, tmp_path):
    import torchvision

    root = write_digit_folder(tmp_path / "digits")
    weights = tmp_path / "mobilenet.pt"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), weights)
    space = ('lr = { low = 1e-3, high = 1e-2, log = true }\nwidth = 32\ndepth = 1\n'
             'freeze = { choices = ["none", "all"] }\n')
    extra_task = f'weights = "{weights}"'
    path = study_file(tmp_path, "ft", n_trials=4, epochs=2, space=space, extra='sampler = "random"',
                      pruner='type = "none"')
    text = path.read_text().replace('dataset = "digits"\nmodel = "cnn"',
                                    f'dataset = "imagefolder"\ndata_dir = "{root}"\nmodel = "mobilenet_v3_small"\n'
                                    f'{extra_task}\nimage_size = 32')
    path.write_text(text)
    env = tuner_env(pg_url, tmp_path)
    result = tuner("run", str(path), "--workers", "1", "--cpu", env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="ft", storage=pg_url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    head = 576 * 32 + 32 + 32 * 10 + 10  # mobilenet_v3_small features -> 32 -> 10 classes
    for t in trials:
        expected = head if t.params["freeze"] == "all" else t.user_attrs["param_count"]
        assert t.user_attrs["trainable_params"] == expected
        assert t.user_attrs["param_count"] > head
        assert 0 < t.value <= 1


def test_export_writes_weights_that_reproduce_the_reported_accuracy(pg_url, tmp_path):
    from tuner.engine.export import load_exported
    from tuner.engine.train import evaluate

    env = tuner_env(pg_url, tmp_path)
    path = study_file(tmp_path, "exp", n_trials=3, epochs=2)
    assert tuner("run", str(path), "--workers", "1", "--cpu", env=env).returncode == 0
    out = tmp_path / "model.pt"
    result = tuner("export", "--study", "exp", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    best = json.loads(tuner("best", "--study", "exp", "--format", "json", env=env).stdout)
    exported = load_exported(out)
    assert exported.hparams.width == best["params"]["width"]
    data = open_batches(exported.config.task, torch.device("cpu"))
    assert evaluate(exported.model, data)["val_accuracy"] == best["value"]


def test_offline_imagenet_weights_are_one_line_naming_the_file(pg_url, tmp_path):
    space = "lr = 0.01\nwidth = 8\ndepth = 0\n"
    path = study_file(tmp_path, "imnet", n_trials=1, epochs=1, space=space)
    path.write_text(path.read_text().replace('model = "cnn"', 'model = "resnet18"\nweights = "imagenet"'))
    env = tuner_env(pg_url, tmp_path, TORCH_HOME=str(tmp_path / "torch-home"))
    assert tuner("launch-study", str(path), env=env).returncode == 0
    result = tuner("worker", "--study", "imnet", "--cpu", env=env, timeout=120)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "resnet18-f37072fd.pth" in line and "torch-home" in line and "task.weights" in line
    assert "Traceback" not in result.stderr
    (trial,) = optuna.load_study(study_name="imnet", storage=pg_url).trials
    assert trial.state == TrialState.FAIL and "resnet18-f37072fd.pth" in trial.user_attrs["fail_reason"]
