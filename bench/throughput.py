"""Training throughput: a seed-style loop vs tuner's own fit() path, and K packed slots, side by side in one run.

    python bench/throughput.py                                      # the CPU defaults: small CNN, 32 px
    python bench/throughput.py --model resnet18 --image-size 32 --images 50000 --epochs 3   # on a GPU
    python bench/throughput.py --model resnet18 --image-size 224 --images 10000 --slots 1

(a) seed-style: how the source tutorials train — the images decoded to float32 tensors in host memory, a
    torch DataLoader (batch 128, shuffled), each batch copied to the device, fp32, no channels_last;
(b) tuner: `train.fit()` on tuner's prepared uint8 cache, resident on the device, then streamed from the
    memory-mapped cache; bf16 autocast, channels_last and cudnn.benchmark on GPUs (fp32 on the CPU), on-device
    augmentation, and one validation pass per epoch (counted in its time, not in its images);
(c) K packed slots: K processes each running (b) resident at once, as `tuner worker --slots K` does; the
    aggregate is all their training images over the span from the first start to the last end.

Each measurement runs in its own process (clean peak memory) and times the epochs after the first (cuDNN's
autotuning, allocator warm-up). Data: a synthetic dataset of --images images (or --data-dir, an image folder),
prepared into a temporary cache. Prints the device, images/s, and peak memory (device memory on CUDA; the
process's anonymous memory on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def task_for(args):
    from tuner.spec.config import TaskSection

    if args.data_dir:
        return TaskSection(dataset="imagefolder", data_dir=args.data_dir, image_size=args.image_size,
                           model=args.model, batch_size=args.batch_size, test_fraction=0.0)
    return TaskSection(dataset="synthetic", image_size=args.image_size, num_samples=args.images,
                       num_classes=10, model=args.model, batch_size=args.batch_size, test_fraction=0.0)


def build(args, image_shape, num_classes, device):
    import torch

    from tuner.engine.models import build_model
    from tuner.spec.space import HParams

    torch.manual_seed(0)
    hp = HParams(lr=1e-3, width=args.width, depth=args.depth, dropout=0.0, weight_decay=0.0, optimizer="adamw")
    return build_model(args.model, "none", hp, image_shape, num_classes).to(device)


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"CPU: {cpu}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def seed_style(args, device, data) -> tuple[int, float, float]:
    """The tutorial loop; returns (images trained in the timed epochs, their start and end, wall clock)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    prepared = data.prepared
    index = prepared.splits["train"]
    size, offset = data.augment.size, (prepared.images.shape[-1] - data.augment.size) // 2  # the centre crop
    images = torch.from_numpy(prepared.images[index][..., offset:offset + size, offset:offset + size])
    images = images.float().div_(255)  # decoded, float32, in host memory
    mean = images.mean(dim=(0, 2, 3), keepdim=True)
    std = images.std(dim=(0, 2, 3), keepdim=True)
    images = (images - mean) / std
    labels = torch.from_numpy(prepared.labels[index]).long()
    loader = DataLoader(TensorDataset(images, labels), batch_size=128, shuffle=True,
                        pin_memory=device.type == "cuda")
    model = build(args, data.image_shape, data.num_classes, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    started, counted = None, 0
    for epoch in range(args.epochs):
        if epoch == 1:
            sync(device)
            started = time.time()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            counted += len(y) if epoch >= 1 else 0
    sync(device)
    return counted, started, time.time()


def tuner_fit(args, device, data) -> tuple[int, float, float]:
    """tuner's path: fit() as a trial runs it; returns (images trained in the timed epochs, start, end)."""
    import torch

    from tuner.engine.device import resolve_precision, setup_device
    from tuner.engine.train import FitConfig, fit

    setup_device(device)
    model = build(args, data.image_shape, data.num_classes, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    precision = resolve_precision(args.precision, device)
    if args.compile:
        model.compile()
    marks: list[float] = []
    config = FitConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, weight_decay=0.0,
                       optimizer="adamw", seed=0, precision=precision)
    sync(device)
    # fit() syncs once per epoch (it reads the epoch's loss), so the marks are true epoch ends
    fit(model, data, config, lambda epoch, metrics, snapshot: marks.append(time.time()))
    return data.num_train * (args.epochs - 1), marks[0], marks[-1]


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child(args) -> None:
    """One measurement in this process: prints a JSON line."""
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from memory import PeakRss

    from tuner.data.loader import open_batches

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = open_batches(task_for(args), device, resident=args.child != "streamed")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRss() as peak:
        images, start, end = (seed_style if args.child == "seed" else tuner_fit)(args, device, data)
    peak_mib = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak.peak_mib
    print(json.dumps({"images": images, "images_per_s": images / (end - start), "peak_mib": peak_mib,
                      "start": start, "end": end, "device": device_name(device)}))


def run_children(args, mode: str, k: int = 1) -> list[dict]:
    threads = max(1, (os.cpu_count() or 1) // k) if args.device == "cpu" else 0
    cmd = [sys.executable, __file__, "--child", mode, "--threads", str(threads), "--device", args.device,
           "--model", args.model, "--width", str(args.width), "--depth", str(args.depth), "--image-size",
           str(args.image_size), "--images", str(args.images), "--batch-size", str(args.batch_size),
           "--epochs", str(args.epochs), "--precision", args.precision, *(["--compile"] if args.compile else []),
           *(["--data-dir", args.data_dir] if args.data_dir else [])]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(k)]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"{mode} run failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", help="cnn | resnet18 | resnet34 | resnet50 | ... (default cnn)")
    parser.add_argument("--width", type=int, default=32, help="cnn width (default 32); backbones: head width")
    parser.add_argument("--depth", type=int, default=3, help="cnn conv blocks (default 3); backbones: head layers")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=4096, help="synthetic images (default 4096)")
    parser.add_argument("--data-dir", help="an image folder instead of synthetic images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up, not timed (default 3)")
    parser.add_argument("--slots", default="1,2,4", help="packed-slot counts to measure (default 1,2,4; '' none)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of (a) and (b); the median is printed")
    parser.add_argument("--precision", default="auto", help="tuner's path: auto | bf16 | fp32")
    parser.add_argument("--compile", action="store_true", help="tuner's path: torch.compile the model")
    parser.add_argument("--device", default="", help="cpu | cuda:0 (default: cuda:0 if there is one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first is not timed)")
    if not args.device:
        import torch

        args.device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if args.child:
        return child(args)

    os.environ.setdefault("TUNER_DATA_CACHE", tempfile.mkdtemp(prefix="tuner-bench-throughput-"))
    from tuner.data.cache import prepare

    prepared = prepare(task_for(args))  # once, before the children: they find it in the cache
    first = run_children(args, "seed")[0]
    print(f"device: {first['device']}")
    print(f"model {args.model} (width {args.width}, depth {args.depth}), {args.image_size} px, "
          f"{len(prepared.splits['train']):,} train images, batch {args.batch_size}, {args.epochs} epochs "
          f"(first untimed); median of {args.repeat} runs")
    rates = {}
    for mode, label in (("seed", "(a) seed-style loop (fp32, DataLoader)"), ("resident", "(b) tuner fit, resident"),
                        ("streamed", "(b) tuner fit, streamed")):
        runs = [first] if mode == "seed" else []
        while len(runs) < args.repeat:
            runs += run_children(args, mode)
        rates[mode] = median(r["images_per_s"] for r in runs)
        each = ", ".join(f"{r['images_per_s']:,.0f}" for r in runs)
        print(f"{label:40s} {rates[mode]:>10,.0f} images/s ({each}); peak memory "
              f"{median(r['peak_mib'] for r in runs):,.0f} MiB")
    print(f"tuner resident / seed-style: {rates['resident'] / rates['seed']:.2f}x")
    one = None
    for k in [int(s) for s in args.slots.split(",") if s.strip()]:
        runs = run_children(args, "resident", k)
        aggregate = sum(r["images"] for r in runs) / (max(r["end"] for r in runs) - min(r["start"] for r in runs))
        one = one or (aggregate if k == 1 else None)
        vs = f" ({aggregate / one:.2f}x one slot)" if one else ""
        print(f"(c) {k} packed slot{'s' if k > 1 else ' '}                        {aggregate:>10,.0f} images/s "
              f"aggregate{vs}")


if __name__ == "__main__":
    main()
