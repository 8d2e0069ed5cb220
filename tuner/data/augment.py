"""Augmentation and normalisation on the device, per batch, after the uint8 copy.

Training ("standard"): a random crop — padded by an eighth of the side for small images (<= 64 px, as CIFAR
training does), a random resized crop (8%-100% of the area, aspect 3/4-4/3) for large ones — and a horizontal
flip, as one affine resampling per batch (grid_sample), then normalisation. "crop": the crop without the flip
(digits, text: a mirrored 2 is no 2). "none": the evaluation view.
Evaluation: the centre crop of the stored image (all of it for small images), normalised.

The random draws come from a CPU generator the caller owns (fit's, saved in its checkpoints), so one trial seed
gives the same batches on every device and whether the data is resident or streamed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop defaults


class Augment:
    def __init__(self, mode: str, stored_size: int, train_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], channels_last: bool = False):
        self.mode, self.stored, self.size = mode, stored_size, train_size
        self.pad = max(1, train_size // 8) if stored_size == train_size else 0
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.channels_last = channels_last

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, S, S) on the device -> the normalised centre crop, float32 (B, C, T, T)."""
        offset = (self.stored - self.size) // 2
        crop = images[:, :, offset:offset + self.size, offset:offset + self.size]
        return self._normalise(crop.float())

    def train(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 (B, C, S, S) on the device -> augmented, normalised float32 (B, C, T, T)."""
        if self.mode == "none":
            return self.eval(images)
        theta = self._draw(len(images), generator).to(images.device)
        grid = F.affine_grid(theta, [len(images), images.shape[1], self.size, self.size], align_corners=False)
        # zeros outside the image: the padding of a padded crop is black, as torchvision's RandomCrop pads
        out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return self._normalise(out)

    def _draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """One affine map per image, (n, 2, 3), in grid_sample's [-1, 1] coordinates of the stored image."""
        rand = torch.rand(n, 5, generator=generator, dtype=torch.float64)
        flip = torch.where((rand[:, 0] < 0.5) & (self.mode == "standard"), -1.0, 1.0)
        if self.pad:  # a whole-pixel shift of up to pad px: a padded crop, resampled exactly at pixel centres
            shift = torch.floor(rand[:, 1:3] * (2 * self.pad + 1)) - self.pad
            w = h = torch.ones(n, dtype=torch.float64)
            tx, ty = shift[:, 0] * 2 / self.stored, shift[:, 1] * 2 / self.stored
        else:  # random resized crop: area share and log aspect ratio, then a position that keeps it inside
            area = SCALE[0] + (SCALE[1] - SCALE[0]) * rand[:, 1]
            ratio = torch.exp(math.log(RATIO[0]) + (math.log(RATIO[1]) - math.log(RATIO[0])) * rand[:, 2])
            w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width as a share of the stored side
            h = torch.sqrt(area / ratio).clamp(max=1.0)
            tx, ty = (1 - w) * (2 * rand[:, 3] - 1), (1 - h) * (2 * rand[:, 4] - 1)
        zero = torch.zeros(n, dtype=torch.float64)
        # the output grid spans [-1, 1]: scaled by the crop's share of the side and shifted, it covers the crop
        theta = torch.stack([torch.stack([w * flip, zero, tx], 1), torch.stack([zero, h, ty], 1)], 1)
        return theta.float()
