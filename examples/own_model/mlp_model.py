"""A model of your own for tuner: an MLP whose hidden size and layer count are searched.

tuner calls build(hparams, image_shape, num_classes) once per trial. hparams holds every [space] entry of the
study, sampled or constant: tuner's own (lr, dropout, ...) and yours (`hidden`, `layers` here).
"""

from torch import nn


def build(hparams, image_shape, num_classes):
    channels, height, width = image_shape
    features = channels * height * width
    layers = [nn.Flatten()]
    for _ in range(hparams["layers"]):
        layers += [nn.Linear(features, hparams["hidden"]), nn.ReLU(), nn.Dropout(hparams["dropout"])]
        features = hparams["hidden"]
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)
