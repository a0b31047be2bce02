import pytest
import torch
from PIL import Image

from brainmri.config import AugmentConfig
from brainmri.data.transforms import (
    PRESETS,
    build_eval_transform,
    build_train_transform,
    compute_mean_std,
    fixed_normalization,
    resolve_augment,
)


def test_presets_match_the_studies():
    resnet = PRESETS["resnet_study"]
    assert (resnet.pad, resnet.hflip, resnet.normalize) == (8, 0.5, "half")
    cnn = PRESETS["cnn_study"]
    assert (cnn.translate, cnn.degrees, cnn.brightness, cnn.normalize) == (0.1, 10.0, (0.8, 1.2), "dataset")


def test_overrides_replace_only_what_is_set():
    params = resolve_augment(AugmentConfig(preset="cnn_study", degrees=5.0, brightness=[0.9, 1.1]))
    assert params.degrees == 5.0 and params.brightness == (0.9, 1.1) and params.translate == 0.1


def test_resnet_study_transform_steps_and_range():
    tf = build_train_transform(PRESETS["resnet_study"], 64, *fixed_normalization("half", 3))
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ["PILToTensor", "Resize", "Pad", "RandomCrop", "RandomHorizontalFlip", "ToDtype", "Normalize"]
    assert tf.transforms[2].padding_mode == "reflect" and tf.transforms[2].padding == 8
    out = tf(Image.new("RGB", (100, 80), (255, 0, 128)))
    assert out.shape == (3, 64, 64) and out.min() >= -1 and out.max() <= 1
    assert out[0].mean() == pytest.approx(1.0) and out[1].mean() == pytest.approx(-1.0)


def test_cnn_study_transform_steps():
    tf = build_train_transform(PRESETS["cnn_study"], 32, (0.2,), (0.1,))
    names = [type(t).__name__ for t in tf.transforms]
    assert names == [
        "PILToTensor",
        "Resize",
        "RandomHorizontalFlip",
        "RandomAffine",
        "ColorJitter",
        "ToDtype",
        "Normalize",
    ]
    affine = tf.transforms[3]
    assert list(affine.translate) == [0.1, 0.1] and list(affine.degrees) == [-10.0, 10.0]
    assert tf.transforms[4].brightness == (0.8, 1.2)
    assert tf(Image.new("L", (50, 50), 30)).shape == (1, 32, 32)


def test_eval_transform_is_deterministic():
    tf = build_eval_transform(32, (0.5,), (0.5,))
    image = Image.effect_noise((40, 40), 50)
    assert torch.equal(tf(image), tf(image))
    assert [type(t).__name__ for t in tf.transforms] == ["PILToTensor", "Resize", "ToDtype", "Normalize"]


def test_mean_std_of_known_data():
    data = [(torch.full((1, 4, 4), v), 0) for v in (0.0, 1.0)] * 3
    mean, std = compute_mean_std(data, batch_size=4)
    assert mean == pytest.approx((0.5,)) and std == pytest.approx((0.5,))


def test_imagenet_normalization_for_grayscale():
    mean, std = fixed_normalization("imagenet", 1)
    assert len(mean) == len(std) == 1
    assert fixed_normalization("dataset", 3) is None
