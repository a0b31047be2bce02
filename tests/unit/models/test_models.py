import pytest
import timm
import torch
from safetensors.torch import save_file

from brainmri.config import ModelConfig
from brainmri.errors import ConfigError
from brainmri.models import STUDY_CNNS, build_model, count_parameters, list_models

PUBLISHED = {"cnn0": 33_488, "cnn1": 266_364, "cnn2": 146_860, "cnn3": 9_369_668}


@pytest.mark.parametrize("name, count", PUBLISHED.items())
def test_study_cnns_reproduce_published_parameter_counts(name, count):
    assert count_parameters(build_model(ModelConfig(name=name), in_chans=3, image_size=256)) == count


def test_study_cnn_architecture_is_the_papers():
    model = build_model(ModelConfig(name="cnn1"), 3, 256)
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d"] * 4
    assert all(
        m.kernel_size == (3, 3) and m.padding == (1, 1) for m in model.features if isinstance(m, torch.nn.Conv2d)
    )
    head = [type(m).__name__ for m in model.head]
    assert head == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert model.head[0].p == 0.3 and build_model(ModelConfig(name="cnn3"), 3, 256).head[0].p == 0.5


# Every registered model, plus the timm default, with both channel counts.
MODELS = [(name, 64) for name in list_models()] + [("resnet18", 64)]


@pytest.mark.parametrize("name, size", MODELS)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_forward_and_backward(name, size, in_chans):
    model = build_model(ModelConfig(name=name), in_chans=in_chans, image_size=size)
    x = torch.randn(2, in_chans, size, size)
    out = model(x)
    assert out.shape == (2, 4)
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list(STUDY_CNNS))
def test_study_cnn_switches(name):
    model = build_model(ModelConfig(name=name, batch_norm=True, global_pool=True), 3, 96)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 4)
    assert model(torch.randn(2, 3, 128, 128)).shape == (2, 4)  # global pooling frees the input size


def test_any_timm_model_by_name():
    model = build_model(ModelConfig(name="mobilenetv3_small_050"), 1, 64)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 4)


def test_unknown_model_suggests():
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_model(ModelConfig(name="resnet-18"), 3, 64)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_pretrained_file_loads_local_weights(tmp_path, fmt):
    """The offline path compute nodes use: weights from a file, never the hub."""
    source = timm.create_model("resnet18", num_classes=1000)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / f"resnet18.{fmt}"
    save_file(state, str(path)) if fmt == "safetensors" else torch.save(state, path)
    model = build_model(ModelConfig(name="resnet18", pretrained_file=str(path)), in_chans=3, image_size=64)
    assert torch.equal(model.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert model.fc.out_features == 4  # classifier re-initialised for the 4 classes
    gray = build_model(ModelConfig(name="resnet18", pretrained_file=str(path)), in_chans=1, image_size=64)
    # timm adapts the RGB stem to one channel by summing over the input channels
    assert torch.allclose(gray.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(gray.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_missing_pretrained_file():
    with pytest.raises(ConfigError, match="model.pretrained_file does not exist"):
        build_model(ModelConfig(name="resnet18", pretrained_file="/nope/w.safetensors"), 3, 64)


def test_study_cnn_has_no_pretrained_weights():
    with pytest.raises(ConfigError, match="has no pretrained weights"):
        build_model(ModelConfig(name="cnn0", pretrained=True), 3, 256)


def test_study_cnn_widths_and_fc_override():
    model = build_model(ModelConfig(name="cnn1", widths=[4, 8, 16, 32, 32], fc=64), 3, 256)
    assert count_parameters(model) == PUBLISHED["cnn2"]  # cnn1's head with cnn2's blocks is cnn2
    with pytest.raises(ConfigError, match="study CNNs only"):
        build_model(ModelConfig(name="resnet18", widths=[4]), 3, 64)
