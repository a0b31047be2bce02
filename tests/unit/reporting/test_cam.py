"""Grad-CAM: the layer it reads, the map's size and range, and that it depends on the class."""

import numpy as np
import pytest
import torch

from brainmri.config import ModelConfig
from brainmri.models import build_model
from brainmri.reporting.cam import grad_cam, overlay, target_layer


def test_target_layer_per_model_family():
    cnn = build_model(ModelConfig(name="cnn2"), 3, 64)
    assert target_layer(cnn) is cnn.features[-1]  # the last conv block's output
    resnet = build_model(ModelConfig(name="resnet18"), 3, 64)
    assert target_layer(resnet) is resnet.layer4
    effnet = build_model(ModelConfig(name="efficientnet_b0"), 1, 64)
    layer = target_layer(effnet)
    assert layer is not None and any(isinstance(m, torch.nn.Conv2d) for m in layer.modules())
    assert target_layer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4))) is None


@pytest.mark.parametrize("name,channels", [("resnet18", 3), ("cnn1", 1)])
def test_maps_have_the_image_size_range_and_depend_on_the_class(name, channels):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), channels, 64)
    x = torch.randn(2, channels, 64, 64)
    maps = {c: grad_cam(model, x, [c, c]) for c in range(4)}
    for m in maps.values():
        assert m.shape == (2, 64, 64) and m.dtype == np.float32
        assert m.min() >= 0.0 and m.max() <= 1.0
    assert any(not np.allclose(maps[0], maps[c], atol=1e-3) for c in (1, 2, 3))
    assert model.training  # restored
    default = grad_cam(model, x)  # the predicted classes
    assert default.shape == (2, 64, 64)


def test_overlay_is_resized_to_the_slice():
    image = np.zeros((100, 80, 3), dtype=np.uint8)
    heat = np.zeros((32, 32), dtype=np.float32)
    heat[:16] = 1.0
    out = overlay(image, heat)
    assert out.shape == (100, 80, 3) and out.dtype == np.uint8
    assert out[:40, :, 0].mean() > out[60:, :, 0].mean() + 50  # hot (red) where the map is high
