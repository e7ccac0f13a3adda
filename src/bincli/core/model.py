"""ResNet factory: a torchvision ResNet with its head replaced for N count classes."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from .hyperparams import FREEZE_CHOICES

log = logging.getLogger(__name__)

# name -> (constructor, ImageNet weights enum); the names are hyperparams.MODEL_CHOICES (tests check)
ARCHITECTURES = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2),
}
_STAGES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def build_model(arch: str, num_classes: int, pretrained: bool = False,
                weights_file: str | Path | None = None, freeze: str = "none") -> nn.Module:
    """A ResNet for `num_classes` classes.

    pretrained: torchvision's ImageNet weights (downloaded, or read from `weights_file`, a
    state_dict saved from the same architecture). freeze: 'backbone' trains only the head;
    'layerN' freezes the stem and layers up to and including layerN.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if freeze not in FREEZE_CHOICES:
        raise ValueError(f"unknown freeze {freeze!r}; choose from {', '.join(FREEZE_CHOICES)}")
    constructor, weights = ARCHITECTURES[arch]
    if pretrained and weights_file:
        model = constructor(weights=None)
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        log.info("loaded ImageNet weights from %s", weights_file)
    else:
        model = constructor(weights=weights if pretrained else None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    _freeze(model, freeze)
    return model


def _freeze(model: nn.Module, freeze: str) -> None:
    if freeze == "none":
        return
    last = "layer4" if freeze == "backbone" else freeze
    frozen = _STAGES[: _STAGES.index(last) + 1]
    for name in frozen:
        for p in getattr(model, name).parameters():
            p.requires_grad = False
