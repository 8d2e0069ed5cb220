"""The data engine on the CPU: the prepared uint8 cache, resident vs streamed batches, augmentation, splits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from PIL import Image

from conftest import REPO, study_file, tuner, tuner_env
from tuner.spec.config import TaskSection, parse_config
from tuner.data.cache import prepare
from tuner.data.loader import open_batches

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own, so what it prepares is not already there."""
    root = tmp_path / "cache"
    monkeypatch.setenv("TUNER_DATA_CACHE", str(root))
    return root


def write_folder(root: Path, per_class: int, size: int = 40, classes: int = 3, seed: int = 0) -> Path:
    """Distinct random RGB PNGs, one folder per class (class c is brighter in channel c)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 160, (size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] += 90
            Image.fromarray(pixels).save(root / f"class{c}" / f"{seed}-{i}.png")
    return root


@pytest.mark.parametrize("task", [
    TaskSection(dataset="digits"),  # 8 px: padded crops
    TaskSection(dataset="synthetic", image_size=72, num_samples=200, num_classes=4),  # > 64 px: resized crops
], ids=["digits", "synthetic-72px"])
def test_resident_and_streamed_batches_are_bit_identical_for_one_seed(task, cache):
    task = parse_config({"study": {"name": "x"}, "task": vars(task)}, "test").task  # the dataset's augment
    resident, streamed = open_batches(task, CPU, resident=True), open_batches(task, CPU, resident=False)
    assert resident.resident and not streamed.resident
    order = torch.randperm(resident.num_train, generator=torch.Generator().manual_seed(3))
    first, second = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    batches = 0
    for (xa, ya), (xb, yb) in zip(resident.train(order, 32, first), streamed.train(order, 32, second), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        batches += 1
    assert batches == -(-resident.num_train // 32)
    assert xa.shape[1:] == resident.image_shape and xa.dtype == torch.float32
    for split in ("val", "test"):
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                   for a, b in zip(resident.evaluate(split), streamed.evaluate(split), strict=True))


def test_augmentation_is_on_by_default_and_off_with_none(cache):
    def task(**extra):
        return parse_config({"study": {"name": "x"}, "task": {"dataset": "synthetic", "image_size": 16,
                                                                "num_samples": 100, **extra}}, "test").task

    assert task().augment == "standard"
    assert parse_config({"study": {"name": "x"}}, "test").task.augment == "crop"  # digits: no mirrored digits
    views = {}
    for mode in ("standard", "none"):
        batches = open_batches(task(augment=mode), CPU)
        train_x, _ = next(batches.train(torch.arange(10), 10, torch.Generator().manual_seed(0)))
        eval_x, _ = next(batches.evaluate("train", batch_size=10))  # the same first ten training images
        views[mode] = (train_x, eval_x)
    assert torch.equal(*views["none"])  # no augmentation: training sees exactly the evaluation view
    assert not torch.equal(*views["standard"])


def test_no_test_image_is_in_training_or_validation(cache, tmp_path):
    """By index, and by content for a folder with its own test/: a held-out image never reaches the sampler."""
    digits = prepare(TaskSection(dataset="digits"))
    split = {name: set(index.tolist()) for name, index in digits.splits.items()}
    assert split["test"] and not split["test"] & (split["train"] | split["val"]) and not split["train"] & split["val"]
    assert sum(map(len, split.values())) == len(digits.labels) == 1797

    root = tmp_path / "photos"
    for part, seed in (("train", 1), ("val", 2), ("test", 3)):
        write_folder(root / part, per_class=4, seed=seed)
    prepared = prepare(TaskSection(dataset="imagefolder", data_dir=str(root), image_size=32))
    content = {name: {prepared.images[i].tobytes() for i in index} for name, index in prepared.splits.items()}
    assert len(content["test"]) == 12 and not content["test"] & (content["train"] | content["val"])


def test_a_truncated_cache_file_is_rebuilt_and_a_changed_folder_is_prepared_again(cache, tmp_path, caplog):
    root = write_folder(tmp_path / "photos", per_class=10)
    task = TaskSection(dataset="imagefolder", data_dir=str(root), image_size=32)
    first = prepare(task)
    original = np.array(first.images)
    images_file = first.path / "images.npy"
    with open(images_file, "r+b") as f:
        f.truncate(images_file.stat().st_size // 2)
    rebuilt = prepare(task)
    assert rebuilt.path == first.path and "wrong size; preparing again" in caplog.text
    assert np.array_equal(np.array(rebuilt.images), original)

    write_folder(root, per_class=1, seed=9)  # one new image per class
    changed = prepare(task)
    assert changed.path != first.path and len(changed.labels) == len(first.labels) + 3


PREPARE_TOGETHER = textwrap.dedent("""\
    import json, logging, os, sys, time
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from tuner.spec.config import TaskSection
    from tuner.data.cache import prepare
    start = Path(sys.argv[1])
    while not start.exists():  # all four wait here, then ask for the cache at once
        time.sleep(0.01)
    prepared = prepare(TaskSection(dataset="synthetic", image_size=32, num_samples=3000))
    print(json.dumps({"path": str(prepared.path), "n": len(prepared.labels)}))
""")


def test_four_processes_started_together_prepare_one_cache_once(cache, tmp_path):
    env = {**os.environ, "TUNER_DATA_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", PREPARE_TOGETHER, str(go)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    assert len({r["path"] for r in results}) == 1 and {r["n"] for r in results} == {3000}
    assert sum("preparing synthetic" in err for _, err in outputs) == 1  # one prepared, three waited for it
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [Path(results[0]["path"]).name]


TRAIN_STREAMED = textwrap.dedent("""\
    import json, sys, threading, time
    import torch
    from tuner.spec.config import TaskSection
    from tuner.data.loader import open_batches
    from tuner.engine.models import build_cnn
    from tuner.spec.space import HParams
    from tuner.engine.train import FitConfig, fit

    def rss_anon_kb():
        status = open("/proc/self/status").read()
        return int(next(l.split()[1] for l in status.splitlines() if l.startswith("RssAnon")))

    n = int(sys.argv[1])
    task = TaskSection(dataset="synthetic", image_size=32, num_samples=n, resident_memory_gb=float(sys.argv[2]))
    data = open_batches(task, torch.device("cpu"))  # prepared by the test already: this only opens it
    torch.manual_seed(0)
    model = build_cnn(HParams(lr=0.01, width=4, depth=1, dropout=0.0, weight_decay=0.0, optimizer="adamw"),
                      data.image_shape, data.num_classes)
    peak, before, done = [0], rss_anon_kb(), threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_kb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    fit(model, data, FitConfig(epochs=1, batch_size=128, lr=0.01, weight_decay=0.0, optimizer="adamw", seed=0),
        lambda *args: None)
    done.set()
    sampler.join()
    print(json.dumps({"resident": data.resident, "peak_growth_kb": peak[0] - before,
                      "bytes": data.prepared.nbytes("train") + data.prepared.nbytes("val")}))
""")


def test_a_dataset_four_times_the_budget_streams_and_memory_stays_bounded_when_it_grows(cache):
    """Peak anonymous memory (RssAnon: page cache of the memory-mapped file does not count) while training an
    epoch, for a dataset and one 4x its size, both streamed: it grows by far less than the data does."""
    env = {**os.environ, "TUNER_DATA_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    runs = {}
    for n in (8000, 32000):
        prepare(TaskSection(dataset="synthetic", image_size=32, num_samples=n))
        budget_gb = 0.005  # 5.4 MB: the smaller dataset's train+val (22 MB) is 4x it
        out = subprocess.run([sys.executable, "-c", TRAIN_STREAMED, str(n), str(budget_gb)], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[n] = json.loads(out.stdout)
    small, large = runs[8000], runs[32000]
    assert not small["resident"] and not large["resident"]
    assert small["bytes"] >= 4 * 0.005 * 2**30
    data_growth_kb = (large["bytes"] - small["bytes"]) / 1024  # 66 MB
    # The stated margin: a quarter of what the data grew by (a resident copy would grow by all of it).
    assert large["peak_growth_kb"] - small["peak_growth_kb"] < data_growth_kb / 4, runs


def test_tuner_prepare_prints_the_cache_size_and_path(cache, tmp_path):
    path = study_file(tmp_path, "prep")
    result = tuner("prepare", str(path), env={**tuner_env("", tmp_path), "TUNER_DATA_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    assert str(folder) in result.stdout and "1,797 images" in result.stdout and "MiB" in result.stdout
    again = tuner("prepare", str(path), env={**tuner_env("", tmp_path), "TUNER_DATA_CACHE": str(cache)})
    assert again.returncode == 0 and str(folder) in again.stdout


def test_an_imagefolder_study_scores_its_test_split_and_its_export_predicts_raw_pngs(pg_url, tmp_path):
    """train/ val/ test/ of real digits: the best trial's test_accuracy is measured at the end of `tuner run`
    and shown by `tuner best`; the exported file alone turns the raw validation PNGs into the stored accuracy."""

    from tuner.engine.export import load_exported

    digits = load_digits()
    root = tmp_path / "photos"
    for label in range(10):
        images = digits.images[digits.target == label]
        for part, chunk in (("train", images[:24]), ("val", images[24:32]), ("test", images[32:40])):
            (root / part / str(label)).mkdir(parents=True)
            for i, image in enumerate(chunk):
                Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((20, 20)).save(
                    root / part / str(label) / f"{i}.png")
    space = "lr = 0.02\nwidth = 16\ndepth = 2\n"
    path = study_file(tmp_path, "folder", n_trials=2, epochs=3, space=space, pruner='type = "none"')
    path.write_text(path.read_text().replace('dataset = "digits"',
                                             f'dataset = "imagefolder"\ndata_dir = "{root}"\nimage_size = 16')
                    .replace("batch_size = 128", "batch_size = 16"))
    env = tuner_env(pg_url, tmp_path)
    run = tuner("run", str(path), "--workers", "1", "--cpu", env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "test_accuracy" in run.stdout
    best = json.loads(tuner("best", "--study", "folder", "--format", "json", env=env).stdout)
    assert 0 < best["test_accuracy"] <= 1

    out = tmp_path / "model.pt"
    assert tuner("export", "--study", "folder", "--out", str(out), env=env).returncode == 0
    exported = load_exported(out)
    assert exported.classes == [str(d) for d in range(10)]
    files = sorted((root / "val").glob("*/*.png"))
    predicted = exported.predict([Image.open(f) for f in files])
    truth = torch.tensor([exported.classes.index(f.parent.name) for f in files])
    correct = (predicted == truth).sum().item()
    assert correct / len(files) == pytest.approx(best["value"], abs=1e-6), (correct, len(files), best)
    assert correct > len(files) / 10 * 2  # learned something: well above chance (10 classes)

    # The folder changes after training: `tuner evaluate` refuses to score the trial on other data, and an export
    # (from another directory, with the folder gone) still carries what the trial trained with.
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(root / "train" / "3" / "white.png")
    changed = tuner("evaluate", "--study", "folder", env=env)
    assert changed.returncode == 1 and "the data changed since trial" in changed.stderr, changed.stderr
    images = [Image.open(f).copy() for f in files]
    root.rename(tmp_path / "gone")
    again = tmp_path / "again.pt"
    assert tuner("export", "--study", "folder", "--out", str(again), env=env, cwd=Path("/")).returncode == 0
    assert torch.equal(load_exported(again).predict(images), predicted)
    assert load_exported(again).predict(images[0]).tolist() == predicted[:1].tolist()  # one image


def test_a_digits_export_predicts_digits_as_scikit_learn_gives_them_and_refuses_what_it_would_get_wrong(
        pg_url, tmp_path, monkeypatch):
    from inprocess import serve_in_process
    from tuner.engine.export import load_exported

    text = study_file(tmp_path, "dig", n_trials=1, epochs=3, pruner='type = "none"',
                      space="lr = 0.02\nwidth = 16\ndepth = 2\n").read_text()
    serve_in_process(pg_url, tmp_path / "run", monkeypatch, text)
    out = tmp_path / "m.pt"
    assert tuner("export", "--study", "dig", "--out", str(out), env=tuner_env(pg_url, tmp_path / "run")).returncode == 0
    exported = load_exported(out)
    digits = load_digits()
    stored = np.round(digits.images * 255 / 16).astype(np.uint8)  # as the prepared data holds them
    expected = exported.predict(stored)
    assert (expected.numpy() == digits.target).mean() > 0.5  # it learned: chance is 0.1
    assert torch.equal(exported.predict(digits.images), expected)  # 0-16 floats, as load_digits() gives them
    assert torch.equal(exported.predict(digits.data), expected)  # the flat rows
    assert torch.equal(exported.predict(torch.from_numpy(stored)[:, None]), expected)  # a (N, C, H, W) tensor
    with pytest.raises(TypeError, match="uint8 pixels 0-255, got a float64 array"):
        exported.predict(digits.images / 16)  # scaled to 0-1: refused, not silently at chance
    # one image, as a scikit-learn user passes it: (8, 8), a flat row of 64, uint8 flat rows of 0-255 pixels
    assert exported.predict(digits.images[3]).tolist() == [expected[3]]
    assert exported.predict(digits.data[3]).tolist() == [expected[3]]
    assert exported.predict(stored[3]).tolist() == [expected[3]]
    assert torch.equal(exported.predict(stored.reshape(-1, 64)), expected)
    with pytest.raises(ValueError, match="got shape \\(2, 3, 4, 5, 6\\)"):
        exported.predict(np.zeros((2, 3, 4, 5, 6), np.uint8) + 200)


def test_a_last_training_batch_of_one_image_joins_the_one_before_so_batch_norm_trains(cache):
    """A batch size that leaves one image over failed the trial on a backbone at a small image size (its last
    stages are 1x1: batch norm got one value per channel); the image now trains in the batch before."""
    from tuner.engine.models import build_backbone
    from tuner.engine.train import FitConfig, fit
    from tuner.spec.space import HParams

    task = parse_config({"study": {"name": "x"}, "task": {"dataset": "synthetic", "image_size": 8,
                                                          "num_samples": 60, "num_classes": 3}}, "test").task
    data = open_batches(task, CPU)
    assert data.num_train % 2 == 1
    batch = (data.num_train - 1) // 2  # two full batches and one image over
    order = torch.randperm(data.num_train, generator=torch.Generator().manual_seed(0))
    sizes = [len(y) for _, y in data.train(order, batch, torch.Generator().manual_seed(0))]
    assert sizes == [batch, batch + 1] and sum(sizes) == data.num_train
    torch.manual_seed(0)
    hp = HParams(lr=0.01, width=8, depth=0, dropout=0.0, weight_decay=0.0, optimizer="adamw")
    model = build_backbone("mobilenet_v3_small", "none", hp, data.image_shape, data.num_classes)  # 1x1 at the end
    fit(model, data, FitConfig(epochs=1, batch_size=batch, lr=0.01, weight_decay=0.0, optimizer="adamw", seed=0),
        lambda epoch, metrics, snapshot: None)
