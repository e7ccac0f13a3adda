"""core/model.py: the ResNet factory (head, freezing, local ImageNet weights)."""

from __future__ import annotations

import pytest
import torch

from bincli.core.model import build_model


def _trainable(model, prefix):
    return {p.requires_grad for n, p in model.named_parameters() if n.startswith(prefix)}


def test_head_has_one_output_per_class():
    model = build_model("resnet18", 6)
    assert model.fc.out_features == 6
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 6)


@pytest.mark.parametrize(("freeze", "frozen", "trainable"), [
    ("none", (), ("conv1", "layer1", "layer4", "fc")),
    ("backbone", ("conv1", "bn1", "layer1", "layer4"), ("fc",)),
    ("layer2", ("conv1", "layer1", "layer2"), ("layer3", "layer4", "fc")),
])
def test_freeze(freeze, frozen, trainable):
    model = build_model("resnet18", 5, freeze=freeze)
    for prefix in frozen:
        assert _trainable(model, prefix) == {False}, prefix
    for prefix in trainable:
        assert _trainable(model, prefix) == {True}, prefix


def test_pretrained_from_a_local_weights_file(tmp_path):
    imagenet = build_model("resnet18", 1000)  # stands in for the downloaded ImageNet weights
    torch.save(imagenet.state_dict(), tmp_path / "resnet18.pth")
    model = build_model("resnet18", 5, pretrained=True, weights_file=tmp_path / "resnet18.pth")
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
    assert model.fc.out_features == 5


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="choose from resnet18, resnet34, resnet50"):
        build_model("vgg16", 5)
    with pytest.raises(ValueError, match="unknown freeze 'layer9'"):
        build_model("resnet18", 5, freeze="layer9")
