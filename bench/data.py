"""The data engine on an image folder: `tuner prepare` time, then a worker's peak memory and speed training one
epoch with the data resident vs streamed.

    python bench/data.py --data-dir DIR [--image-size 64] [--epochs 1] [--repeat 3] [--cache DIR]

DIR is an ImageFolder tree (one folder per class), e.g. the 50,000 CIFAR-10 training images:
`tar -xJf cifar10-train.tar.xz -C /tmp/cifar` then `--data-dir /tmp/cifar/train`. The cache goes to a fresh
temporary folder unless --cache names one. Each figure is the median of --repeat runs (the runs in brackets).
Peak memory is the process's peak RssAnon (/proc: page cache of the
memory-mapped cache does not count), sampled every 5 ms while it trains, and what it was before loading data.
"""

from __future__ import annotations

import argparse
import json
import shutil
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))  # bench/memory.py


def task_for(args, resident_gb: float):
    from tuner.spec.config import TaskSection

    return TaskSection(dataset="imagefolder", data_dir=args.data_dir, image_size=args.image_size,
                       batch_size=128, resident_memory_gb=resident_gb)


def child(args) -> None:
    """One worker-like process: open the prepared data, train `epochs` epochs, report peak memory."""
    import torch
    from memory import PeakRss  # bench/memory.py

    from tuner.data.loader import open_batches
    from tuner.engine.models import build_cnn
    from tuner.spec.space import HParams
    from tuner.engine.train import FitConfig, fit

    torch.set_num_threads(os.cpu_count() or 1)
    with PeakRss() as peak:
        data = open_batches(task_for(args, args.resident_gb), torch.device("cpu"))
        torch.manual_seed(0)
        model = build_cnn(HParams(lr=0.01, width=16, depth=2, dropout=0.0, weight_decay=0.0, optimizer="adamw"),
                          data.image_shape, data.num_classes)
        started = time.monotonic()
        fit(model, data, FitConfig(epochs=args.epochs, batch_size=128, lr=0.01, weight_decay=0.0,
                                   optimizer="adamw", seed=0), lambda *a: None)
        seconds = time.monotonic() - started
    print(json.dumps({"resident": data.resident, "peak_mib": peak.peak_mib, "start_mib": peak.start_mib,
                      "train_images_per_s": data.num_train * args.epochs / seconds,
                      "data_mib": (data.prepared.nbytes("train") + data.prepared.nbytes("val")) / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is printed")
    parser.add_argument("--cache", help="prepared-data cache folder (default: a fresh temporary one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--resident-gb", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    sys.path.insert(0, str(REPO))
    from tuner.data.cache import prepare

    cache = Path(args.cache or tempfile.mkdtemp(prefix="tuner-bench-data-"))
    prepare_s = []
    for run in range(args.repeat):  # each run prepares from scratch into a fresh folder; the last one is kept
        os.environ["TUNER_DATA_CACHE"] = str(cache / f"run{run}")
        started = time.monotonic()
        prepared = prepare(task_for(args, 0.0))
        prepare_s.append(time.monotonic() - started)
        if run < args.repeat - 1:
            shutil.rmtree(cache / f"run{run}")
    size_mib = sum(f.stat().st_size for f in prepared.path.iterdir()) / 2**20
    print(f"data: {args.data_dir}, {len(prepared.labels):,} images at {args.image_size} px "
          f"(stored {prepared.images.shape[-1]} px), cache {size_mib:,.0f} MiB in {prepared.path}")
    print(f"prepare: median {median(prepare_s):.1f} s of {args.repeat} ({', '.join(f'{s:.1f}' for s in prepare_s)}),"
          f" {len(prepared.labels) / median(prepare_s):,.0f} images/s, {os.cpu_count()} CPUs")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name, resident_gb in (("resident", 1000.0), ("streamed", 0.001)):
        runs = []
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, __file__, "--child", "--data-dir", args.data_dir, "--image-size",
                                  str(args.image_size), "--epochs", str(args.epochs), "--resident-gb",
                                  str(resident_gb)], env=env, capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout))
        r = {key: median(run[key] for run in runs) for key in ("peak_mib", "start_mib", "data_mib",
                                                                "train_images_per_s")}
        assert all(run["resident"] == (name == "resident") for run in runs), runs
        peaks = ", ".join(f"{run['peak_mib']:,.0f}" for run in runs)
        print(f"{name:9s} worker peak RssAnon {r['peak_mib']:,.0f} MiB ({peaks}; before loading data "
              f"{r['start_mib']:,.0f} MiB; train+val data {r['data_mib']:,.0f} MiB), "
              f"{r['train_images_per_s']:,.0f} train images/s on the CPU")


if __name__ == "__main__":
    main()
