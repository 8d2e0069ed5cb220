"""Model builders: the width/depth CNN for small images, and torchvision backbones with a new head.

For a backbone, the search space's width/depth/dropout shape the new head (depth hidden layers of width
units; depth 0 is a linear head), and `freeze` chooses what of the backbone trains.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tuner.errors import TrialFailed, TunerError
from tuner.spec.plugins import is_plugin, load_plugin
from tuner.spec.space import HParams

CIFAR_STEM_MAX_PX = 64  # px: at or below this, backbones get the CIFAR stem (3x3 conv, stride 1, no max-pool)


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


def _head(features: int, hp: HParams, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(hp.depth):
        layers += [nn.Linear(features, hp.width), nn.ReLU(inplace=True), nn.Dropout(hp.dropout)]
        features = hp.width
    if not layers:
        layers.append(nn.Dropout(hp.dropout))
    return nn.Sequential(*layers, nn.Linear(features, num_classes))


class Backbone(nn.Module):
    """A torchvision body (its classifier removed) followed by the searched head."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grayscale data on an RGB backbone
            x = x.expand(-1, 3, -1, -1)
        return self.head(self.body(x))


def _load_pretrained(body: nn.Module, name: str, weights: str) -> None:
    """Load ImageNet weights (torchvision downloads them, where there is internet) or a local state dict."""
    if weights == "imagenet":
        from torchvision.models import get_model_weights

        enum = get_model_weights(name).DEFAULT
        filename = enum.url.rsplit("/", 1)[-1]
        try:
            state = enum.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # offline, proxy, truncated download: say where the file must go
            target = Path(torch.hub.get_dir()) / "checkpoints" / filename
            raise TunerError(f"cannot get the ImageNet weights for {name} ({type(exc).__name__}): download "
                             f"{enum.url} to {target}, or set task.weights to a local .pt file") from None
    else:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)  # never unsafe unpickling
        except FileNotFoundError:
            raise TunerError(f"task.weights: no such file {weights!r}") from None
        except Exception as exc:
            raise TunerError(f"task.weights: {weights!r} is not a weights-only state dict "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    try:
        body.load_state_dict(state)
    except RuntimeError as exc:
        raise TunerError(f"task.weights: {weights!r} does not fit {name}: {str(exc).splitlines()[0]}") from None


def _split_body(body: nn.Module, name: str) -> tuple[list[nn.Module], int]:
    """Remove the classifier; return the body's stages (stem first) and its feature width."""
    if name.startswith("resnet"):
        features = body.fc.in_features
        body.fc = nn.Identity()
        stem = nn.ModuleList([body.conv1, body.bn1])
        return [stem, body.layer1, body.layer2, body.layer3, body.layer4], features
    features = next(m for m in body.classifier if isinstance(m, nn.Linear)).in_features
    body.classifier = nn.Identity()
    return list(body.features), features


def _use_small_image_stem(body: nn.Module, name: str) -> None:
    """CIFAR-style stem: a 7x7/2 conv + max-pool would leave a 32 px image 8 px after the stem."""
    if name.startswith("resnet"):
        body.conv1 = nn.Conv2d(3, body.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        body.maxpool = nn.Identity()
    else:
        body.features[0][0].stride = (1, 1)


def _freeze(stages: list[nn.Module], freeze: str | int) -> None:
    """'none': all trains; 'all': only the head trains; k: the last k stages of the body train."""
    if freeze == "none":
        return
    frozen = stages if freeze == "all" else stages[:max(0, len(stages) - int(freeze))]
    for stage in frozen:
        for p in stage.parameters():
            p.requires_grad_(False)


def build_backbone(name: str, weights: str, hp: HParams, image_shape: tuple[int, int, int],
                   num_classes: int) -> nn.Module:
    from torchvision.models import get_model

    body = get_model(name, weights=None)
    if weights != "none":
        _load_pretrained(body, name, weights)
    small = image_shape[1] <= CIFAR_STEM_MAX_PX
    if small:
        _use_small_image_stem(body, name)
    stages, features = _split_body(body, name)
    _freeze(stages, hp.freeze)
    if small and name.startswith("resnet"):
        body.conv1.requires_grad_(True)  # the new 3x3 stem starts from random weights: it must train
    return Backbone(body, _head(features, hp, num_classes))


def build_model(model: str, weights: str, hp: HParams, image_shape: tuple[int, int, int],
                num_classes: int) -> nn.Module:
    """The task's model for one trial's hyperparameters."""
    if model == "cnn":
        return build_cnn(hp, image_shape, num_classes)
    if is_plugin(model):
        built = load_plugin(model, "model")(hp.as_mapping(), tuple(image_shape), num_classes)
        if not isinstance(built, nn.Module):
            raise TrialFailed(f"task.model {model!r} returned {type(built).__name__}, not a torch.nn.Module")
        return built
    return build_backbone(model, weights, hp, image_shape, num_classes)


def count_nonzero(model: nn.Module) -> int:
    """Parameters that are not exactly zero: the effective size of a model whose weights were pruned."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
