#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one command, on a host with a CUDA GPU and tuner installed:
#   bash bench/gpu.sh 2>&1 | tee gpu-figures.txt
# (issue 10's targets on an H100: ResNet-18 at 32 px >= 55,000 images/s and >= 4.5x the seed-style loop;
#  at 224 px >= 11,000 images/s; 4 packed small-CNN slots >= 2.5x one.) Then the GPU tests.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python bench/throughput.py --model resnet18 --width 128 --depth 0 --image-size 32 --images 50000 --epochs 3 --slots ""
python bench/throughput.py --model resnet18 --width 128 --depth 0 --image-size 224 --images 12000 --epochs 2 --repeat 1 --slots ""
python bench/throughput.py --model cnn --width 32 --depth 3 --image-size 32 --images 50000 --epochs 3 --repeat 1 --slots 1,2,4
python -m pytest -q -n 0 -m gpu tests/test_gpu.py
