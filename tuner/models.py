"""Model builders. The width/depth CNN for small images."""

from __future__ import annotations

from torch import nn

from tuner.space import HParams


def _conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def build_cnn(hp: HParams, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """`depth` conv blocks; block i has width * 2**i channels and halves the image while it is > 1 px."""
    channels, size, _ = image_shape
    blocks = []
    for i in range(hp.depth):
        c_out = hp.width * 2**i
        pool = size >= 2
        blocks.append(_conv_block(channels, c_out, pool))
        channels, size = c_out, size // 2 if pool else size
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(hp.dropout),
                         nn.Linear(channels, num_classes))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
