"""Does distillation help on the digits task? Students trained with and without the teacher's softened outputs.

    python bench/distill.py [--seeds 5]

The teacher: the digits CNN at width 32, depth 2, 10 epochs (~98% validation accuracy). Each student (a
smaller CNN) trains with tuner's fit() for each seed, on the labels alone (distill_alpha = 0) and with the
teacher (alpha 0.5 and 0.9, temperature 4), with the same init and batches per seed; printed: the median
validation accuracy over the seeds, and each seed's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TUNER_DATA_CACHE", tempfile.mkdtemp(prefix="tuner-bench-distill-"))

import torch  # noqa: E402

from tuner.spec.config import TaskSection  # noqa: E402
from tuner.data.loader import open_batches  # noqa: E402
from tuner.engine.models import build_cnn  # noqa: E402
from tuner.spec.space import HParams  # noqa: E402
from tuner.engine.train import FitConfig, fit  # noqa: E402

STUDENTS = [(3, 2, 5), (2, 2, 8), (8, 2, 10), (6, 2, 15)]  # (width, depth, epochs)
MIXES = [(0.0, 4.0), (0.5, 4.0), (0.9, 4.0)]  # (distill_alpha, distill_temperature)


def train(data, width: int, depth: int, epochs: int, seed: int, lr: float, batch_size: int, alpha: float = 0.0,
          temperature: float = 4.0, teacher=None):
    torch.manual_seed(seed)
    hp = HParams(lr=lr, width=width, depth=depth, dropout=0.0, weight_decay=0.0, optimizer="adamw")
    model = build_cnn(hp, data.image_shape, data.num_classes)
    config = FitConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=0.0, optimizer="adamw", seed=seed,
                       distill_alpha=alpha, distill_temperature=temperature)
    metrics = fit(model, data, config, lambda *args: None, teacher=teacher)
    return model, metrics["val_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    data = open_batches(TaskSection(dataset="digits", augment="crop"), torch.device("cpu"))
    teacher, accuracy = train(data, 32, 2, 10, seed=0, lr=0.01, batch_size=128)
    teacher.eval()
    print(f"teacher: cnn width 32 depth 2, 10 epochs, val_accuracy {accuracy:.4f}")
    print(f"students: lr 0.02, batch 32; median val_accuracy over {args.seeds} seeds (each seed's)")
    for width, depth, epochs in STUDENTS:
        for alpha, temperature in MIXES:
            accuracies = [train(data, width, depth, epochs, seed, 0.02, 32, alpha, temperature,
                                teacher if alpha else None)[1] for seed in range(args.seeds)]
            each = " ".join(f"{a:.3f}" for a in accuracies)
            print(f"width {width:2d} depth {depth} epochs {epochs:2d}  alpha {alpha:.1f} T {temperature:g}:  "
                  f"{statistics.median(accuracies):.4f}  ({each})", flush=True)


if __name__ == "__main__":
    main()
