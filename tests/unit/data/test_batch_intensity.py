"""The intensity and resolution steps of BatchAugment: each parameter drawn per sample from
its documented range (recovered from the output), identity at zero strength, seeded."""

import pytest
import torch
import torch.nn.functional as F

from brainmri.config import AugmentConfig, Config, DataConfig, intensity_steps
from brainmri.data.batch_augment import (
    BatchAugment,
    bias_field,
    contrast,
    down_up,
    gamma,
    gaussian_blur,
    gaussian_noise,
    has_intensity,
    legendre_basis,
    random_intensity,
)
from brainmri.data.transforms import resolve_augment
from brainmri.errors import ConfigError

N = 1000


def only(**overrides):
    """The 'none' preset (no flips, crops or affine) with the given intensity steps on."""
    return resolve_augment(AugmentConfig(preset="none", normalize="half", **overrides))


def grey(value: float, n: int = N, size: int = 16) -> torch.Tensor:
    return torch.full((n, 1, size, size), value)


def assert_uniform(values: torch.Tensor, lo: float, hi: float, tol: float) -> None:
    """Inside [lo, hi], reaching both ends, centred: what uniform draws in [lo, hi] look like."""
    assert lo - tol <= float(values.min()) < lo + 3 * tol and hi - 3 * tol < float(values.max()) <= hi + tol
    assert float(values.mean()) == pytest.approx((lo + hi) / 2, abs=(hi - lo) * 0.03 + tol)


def test_gamma_exponents_are_uniform_in_the_range():
    torch.manual_seed(0)
    out = random_intensity(grey(0.5), only(gamma=[0.6, 1.6]))
    assert_uniform(torch.log(out.mean(dim=(1, 2, 3))) / torch.log(torch.tensor(0.5)), 0.6, 1.6, 1e-4)


def test_contrast_factors_are_uniform_in_the_range_around_each_images_mean():
    torch.manual_seed(0)
    x = grey(0.25)
    x[..., 8:] = 0.75  # mean 0.5, two levels 0.5 apart
    out = random_intensity(x, only(contrast=[0.3, 1.2]))
    assert torch.allclose(out.mean(dim=(1, 2, 3)), torch.full((N,), 0.5), atol=1e-6)  # the mean stays
    assert_uniform((out[..., 0, 15] - out[..., 0, 0])[:, 0] / 0.5, 0.3, 1.2, 1e-4)


def test_noise_std_is_uniform_up_to_the_maximum():
    torch.manual_seed(0)
    out = random_intensity(grey(0.5, size=64), only(noise=0.1))
    assert_uniform((out - 0.5).std(dim=(1, 2, 3)), 0.0, 0.1, 0.004)


def test_bias_field_coefficients_are_uniform_in_the_range():
    """log(out / in) of a uniform image is the field's log; least squares on the Legendre basis
    gives back the nine coefficients."""
    torch.manual_seed(0)
    size, k = 32, 0.1
    out = random_intensity(grey(0.2, n=400, size=size), only(bias_field=k))
    basis = legendre_basis(size, torch.device("cpu")).reshape(9, -1).T  # (pixels, 9)
    coeffs = torch.linalg.lstsq(basis, torch.log(out / 0.2).reshape(400, -1).T).solution.T  # (400, 9)
    assert coeffs.shape == (400, 9)
    assert_uniform(coeffs.flatten(), -k, k, 1e-3)
    field = out / 0.2
    assert float(field.amax(dim=(1, 2, 3)).min()) > 1.0 and float(field.amin(dim=(1, 2, 3)).max()) < 1.0


def test_blur_sigmas_are_uniform_in_the_range():
    """The spread of a blurred point is its sigma."""
    torch.manual_seed(0)
    x = grey(0.0, n=600, size=33)
    x[..., 16, 16] = 1.0
    out = random_intensity(x, only(blur=[0.8, 2.5]))[:, 0, 16]  # the row through the point
    t = torch.arange(33.0) - 16
    sigma = ((out * t**2).sum(dim=1) / out.sum(dim=1)).sqrt()
    assert_uniform(sigma, 0.8, 2.5, 0.02)


def test_down_up_is_per_sample_and_matches_an_antialiased_resize_and_back():
    torch.manual_seed(0)
    x = gaussian_blur(torch.rand(2, 3, 32, 32), torch.full((2,), 1.0), 1.0)  # a smooth texture
    both = down_up(x, torch.tensor([2.0, 3.0]), 3.0)
    assert torch.allclose(both[1:], down_up(x[1:], torch.tensor([3.0]), 3.0), atol=1e-6)  # no sample sees another's
    reference = F.interpolate(F.interpolate(x, size=16, mode="bilinear", antialias=True), size=32, mode="bilinear")
    assert (both[:1] - reference[:1]).abs().mean() < 0.01 < (x[:1] - reference[:1]).abs().mean()
    detail = [float((down_up(x, torch.full((2,), s), 3.0) - x).abs().mean()) for s in (1.5, 2.0, 3.0)]
    assert detail == sorted(detail)  # a coarser grid loses more


def test_down_up_factors_are_drawn_uniform_in_one_to_max():
    """Seeded, random_intensity's down-up is down_up with the next draws, uniform in [1, max]."""
    x = torch.rand(N, 1, 16, 16)
    torch.manual_seed(3)
    out = random_intensity(x, only(downsample=3.0))
    torch.manual_seed(3)
    factors = torch.rand(N) * 2.0 + 1.0
    assert torch.allclose(out, down_up(x, factors, 3.0), atol=1e-6)
    assert_uniform(factors, 1.0, 3.0, 0.01)


@pytest.mark.parametrize("prob", [0.0, 0.3, 1.0])
def test_each_step_applies_to_a_sample_with_the_set_probability(prob):
    """intensity_p: the chosen samples get a parameter from the range, the others stay as they were."""
    torch.manual_seed(0)
    for step in (dict(gamma=[0.5, 0.6]), dict(downsample=3.0), dict(bias_field=0.2), dict(blur=[1.0, 2.0])):
        x = torch.rand(N, 1, 16, 16) * 0.5 + 0.25
        out = random_intensity(x, only(intensity_p=prob, **step))
        changed = (out - x).abs().amax(dim=(1, 2, 3)) > 1e-4
        assert float(changed.float().mean()) == pytest.approx(prob, abs=0.05), step
        assert torch.allclose(out[~changed], x[~changed], atol=1e-4)


def test_zero_strength_is_the_identity():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 24, 24)
    n = len(x)
    assert torch.allclose(gamma(x, torch.ones(n)), x)
    assert torch.allclose(contrast(x, torch.ones(n)), x, atol=1e-6)
    assert torch.allclose(gaussian_noise(x, torch.zeros(n)), x)
    assert torch.allclose(bias_field(x, torch.zeros(n, 9)), x)
    assert torch.allclose(gaussian_blur(x, torch.zeros(n), 2.0), x, atol=1e-6)
    assert torch.allclose(down_up(x, torch.ones(n), 3.0), x, atol=1e-5)
    idle = only(gamma=[1.0, 1.0], contrast=[1.0, 1.0], bias_field=0.0, noise=0.0, blur=[0.0, 0.0], downsample=1.0)
    u8 = (x * 255).to(torch.uint8)
    state = torch.get_rng_state()
    assert torch.allclose(
        BatchAugment(idle, 24, [0.5] * 3, [0.5] * 3, train=True)(u8), u8.float() / 127.5 - 1, atol=1e-6
    )
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn: older runs' random streams stay as they were


def test_every_step_together_is_seeded_and_leaves_evaluation_alone():
    everything = only(gamma=[0.7, 1.5], contrast=[0.6, 1.2], bias_field=0.2, noise=0.05, blur=[0, 1], downsample=2.0)
    u8 = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8)
    train = BatchAugment(everything, 24, [0.5] * 3, [0.5] * 3, train=True)
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(train(u8))
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])
    assert runs[0].min() >= -1 and runs[0].max() <= 1
    evaluation = BatchAugment(everything, 24, [0.5] * 3, [0.5] * 3, train=False)(u8)
    assert torch.allclose(evaluation, u8.float() / 127.5 - 1, atol=1e-6)


def test_intensity_settings_are_checked():
    with pytest.raises(ConfigError, match=r"augment.gamma=\[0.0, 1.5\] is invalid: expected \[min, max\] with 0 < min"):
        AugmentConfig(gamma=[0.0, 1.5])
    with pytest.raises(ConfigError, match="augment.downsample=5.0 is invalid: expected a number in"):
        AugmentConfig(downsample=5.0)
    with pytest.raises(ConfigError, match="augment.contrast runs on the batched path only: set data.pipeline=cached"):
        Config(data=DataConfig(pipeline="pil"), augment=AugmentConfig(contrast=[0.5, 1.0]))
    with pytest.raises(ConfigError, match="augment.intensity_until=1.5 is invalid: expected a number in"):
        AugmentConfig(intensity_until=1.5)
    with pytest.raises(ConfigError, match="augment.intensity_until=0.8 has nothing to turn off"):
        Config(data=DataConfig(pipeline="cached"), augment=AugmentConfig(intensity_until=0.8))


@pytest.mark.parametrize(
    "settings, on",
    [
        ({"gamma": [1.0, 1.0]}, False),
        ({"contrast": [1.0, 1.0], "blur": [0.0, 0.0], "downsample": 1.0, "noise": 0.0, "bias_field": 0.0}, False),
        ({"gamma": [1.0, 1.2]}, True),
        ({"blur": [0.0, 0.5]}, True),
        ({"downsample": 1.5}, True),
    ],
)
def test_the_config_and_the_batch_transform_agree_on_what_is_an_intensity_step(settings, on):
    """One rule: a setting that changes nothing (gamma [1, 1]) is off for the config's checks,
    which accept it on the PIL pipeline and refuse augment.intensity_until for it, and for the
    batch transform, which then draws nothing for it."""
    augment = AugmentConfig(preset="cnn_study", **settings)
    assert bool(intensity_steps(augment)) is on
    assert has_intensity(resolve_augment(augment)) is on
    if on:
        with pytest.raises(ConfigError, match="runs on the batched path only"):
            Config(data=DataConfig(pipeline="pil"), augment=augment)
        Config(
            data=DataConfig(pipeline="cached"),
            augment=AugmentConfig(preset="cnn_study", intensity_until=0.5, **settings),
        )
    else:
        Config(data=DataConfig(pipeline="pil"), augment=augment)
        with pytest.raises(ConfigError, match="has nothing to turn off"):
            Config(data=DataConfig(pipeline="cached"), augment=AugmentConfig(intensity_until=0.5, **settings))


def test_the_intensity_flag_leaves_only_the_geometric_steps():
    """With ``intensity`` off a batch gets the crop, flip and affine of the same seed and no
    intensity step: what augment.intensity_until turns off in a run's last epochs."""
    geometric = dict(preset="cnn_study", normalize="half")
    with_steps = resolve_augment(AugmentConfig(**geometric, gamma=[0.5, 2.0], noise=0.1, downsample=2.0))
    u8 = torch.randint(0, 256, (8, 1, 24, 24), dtype=torch.uint8)
    switched = BatchAugment(with_steps, 24, [0.5], [0.5], train=True)
    plain = BatchAugment(resolve_augment(AugmentConfig(**geometric)), 24, [0.5], [0.5], train=True)
    outputs = []
    for module, on in ((switched, True), (switched, False), (plain, True)):
        module.intensity = on
        torch.manual_seed(3)
        outputs.append(module(u8))
    assert not torch.allclose(outputs[0], outputs[2]) and torch.equal(outputs[1], outputs[2])


def test_the_per_sample_steps_equal_torchvisions_functionals_for_each_sample():
    """gamma, contrast (on grey images) and blur are torchvision's adjust_gamma, adjust_contrast
    and gaussian_blur, each sample with its own parameter."""
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(0)
    x = gaussian_blur(torch.rand(3, 1, 24, 24), torch.full((3,), 0.7), 0.7)
    g, c, s = torch.tensor([0.5, 1.0, 2.2]), torch.tensor([0.3, 1.0, 1.6]), torch.tensor([0.6, 1.2, 2.0])
    radius = 6  # ceil(3 * 2.0)
    for i in range(3):
        assert torch.allclose(gamma(x, g)[i], TF.adjust_gamma(x[i], float(g[i])), atol=1e-6)
        assert torch.allclose(contrast(x, c)[i], TF.adjust_contrast(x[i], float(c[i])), atol=1e-5)
        ours = gaussian_blur(x, s, 2.0)[i]
        theirs = TF.gaussian_blur(x[i], [2 * radius + 1] * 2, [float(s[i])] * 2)
        assert torch.allclose(ours, theirs, atol=1e-5)
