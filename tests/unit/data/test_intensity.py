import pytest
import torch
from PIL import Image

from brainmri.config import AugmentConfig
from brainmri.data.batch_augment import BatchAugment, contrast, gamma
from brainmri.data.intensity import foreground_zscore, input_normalization, percentile_scale, rank_equalize
from brainmri.data.transforms import build_eval_transform, fixed_normalization, resolve_augment
from brainmri.errors import ConfigError
from tests.conftest import make_image


def slices(n: int = 4, size: int = 32) -> torch.Tensor:
    """[0, 1] batches like brain slices: a black background and a textured foreground."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 3, size, size)
    x[:, :, 6:-6, 6:-6] = 0.3 + 0.5 * torch.rand(n, 1, size - 12, size - 12, generator=g)
    return x


@pytest.mark.parametrize("a,b", [(0.5, 0.1), (2.0, -0.3), (0.2, 0.7), (1.0, 0.0)])
def test_zscore_is_invariant_to_any_increasing_affine_change(a, b):
    x = slices()
    z = foreground_zscore(x)
    assert torch.allclose(foreground_zscore(a * x + b), z, atol=1e-4)
    fg = x > 0.1 * x.amax(dim=(1, 2, 3), keepdim=True)  # min is 0 here
    for i in range(len(x)):  # the foreground has mean 0 and std 1; the background lies below it
        assert float(z[i][fg[i]].mean()) == pytest.approx(0.0, abs=1e-4)
        assert float(z[i][fg[i]].std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)
        assert float(z[i][~fg[i]].max()) < float(z[i][fg[i]].min())


@pytest.mark.parametrize("a,b", [(0.5, 0.1), (3.0, -1.0), (0.05, 0.5)])
def test_percentile_scaling_is_invariant_to_any_increasing_affine_change(a, b):
    x = slices()
    p = percentile_scale(x)
    assert torch.allclose(percentile_scale(a * x + b), p, atol=1e-4)
    assert p.min() == 0.0 and p.max() == 1.0
    assert (p == 1.0).float().mean() < 0.015  # only the top 1% clips


def eight_bit(n: int = 4, size: int = 32) -> torch.Tensor:
    """Slices as a JPEG scan gives them: 8-bit levels, a near-black background of a few levels."""
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(n, 1, size, size, generator=g) * 3).round() / 255
    x[:, :, 6:-6, 6:-6] = (60 + torch.rand(n, 1, size - 12, size - 12, generator=g) * 180).round() / 255
    return x


@pytest.mark.parametrize(
    "change",
    [
        lambda x: gamma(x, torch.full((len(x),), 0.5)),
        lambda x: gamma(x, torch.full((len(x),), 1.25)),
        lambda x: contrast(x, torch.full((len(x),), 0.3)),
        lambda x: 0.4 * x + 0.2,
        lambda x: x.sqrt() * 0.7 + 0.1,
    ],
    ids=["gamma 0.5", "gamma 1.25", "contrast 0.3", "affine", "sqrt then affine"],
)
def test_rank_is_invariant_to_any_increasing_change(change):
    """Histogram equalization keeps only the order of the pixels: any increasing change of an
    8-bit image, not only an affine one, gives the model the same input."""
    x = eight_bit()
    assert torch.equal(rank_equalize(change(x)), rank_equalize(x))
    assert not torch.allclose(foreground_zscore(gamma(x, torch.full((len(x),), 0.5))), foreground_zscore(x), atol=1e-2)


def test_rank_gives_each_pixel_its_mid_rank():
    x = eight_bit()
    r = rank_equalize(x)
    assert 0.0 < float(r.min()) and float(r.max()) < 1.0
    assert torch.allclose(r.mean(dim=(1, 2, 3)), torch.full((len(x),), 0.5), atol=1e-6)  # mid-ranks average 1/2
    flat, ranks = x.reshape(len(x), -1), r.reshape(len(x), -1)
    for i in range(len(x)):  # brighter pixels rank higher, equal pixels rank equal
        order = flat[i].argsort()
        assert (ranks[i][order].diff() >= 0).all()
        level = flat[i] == flat[i].max()
        assert ranks[i][level].unique().numel() == 1
        share = float(level.float().mean())
        assert float(ranks[i][level][0]) == pytest.approx(1 - share / 2)


def test_a_fixed_mean_and_std_is_not_invariant_which_is_the_point():
    x = slices()
    norm = input_normalization("half", *fixed_normalization("half", 3))
    assert not torch.allclose(norm(0.5 * x + 0.1), norm(x), atol=1e-2)


def test_a_constant_image_normalizes_to_finite_values():
    x = torch.full((2, 1, 8, 8), 0.4)
    assert torch.isfinite(foreground_zscore(x)).all() and torch.isfinite(percentile_scale(x)).all()
    assert torch.equal(rank_equalize(x), torch.full_like(x, 0.5))


@pytest.mark.parametrize("kind", ["zscore", "percentile", "rank", "half"])
def test_one_image_and_a_batch_and_a_trace_agree(kind):
    """The per-image transform, the batch module and a traced (exportable) module give the same input."""
    x = slices()
    norm = input_normalization(kind, *fixed_normalization(kind, 3))
    batch = norm(x)
    assert torch.allclose(torch.stack([norm[0](im) if len(norm) > 1 else im for im in x]), norm[:-1](x), atol=1e-6)
    traced = torch.jit.trace(norm, slices(2))  # another batch size: nothing was baked in but the sizes
    assert torch.allclose(traced(x), batch, atol=1e-5)


@pytest.mark.parametrize("kind", ["zscore", "percentile", "rank"])
def test_cached_batches_and_the_evaluation_transform_normalize_identically(kind):
    """Training's batch path (uint8 from the cache), evaluation's per-image transform and the
    export module all give the model the same tensor."""
    params = resolve_augment(AugmentConfig(preset="none", normalize=kind))
    mean, std = fixed_normalization(kind, 3)
    image = make_image(1, 40, seed=3)
    per_image = build_eval_transform(40, mean, std, kind)(image)
    uint8 = torch.from_numpy(__import__("numpy").asarray(image)).permute(2, 0, 1).unsqueeze(0).contiguous()
    batch = BatchAugment(params, 40, mean, std, train=False)(uint8)[0]
    exported = input_normalization(kind, mean, std)(uint8.float() / 255)[0]
    assert torch.allclose(per_image, batch, atol=1e-5) and torch.allclose(batch, exported, atol=1e-5)
    brighter = Image.eval(image, lambda v: min(255, int(v * 0.8 + 30)))  # another scanner's window
    shifted = build_eval_transform(40, mean, std, kind)(brighter)
    assert (shifted - per_image).abs().mean() < 0.05 * per_image.abs().mean()


def test_normalize_choices_are_checked():
    assert AugmentConfig(normalize="zscore").normalize == "zscore"
    assert AugmentConfig(normalize="rank").normalize == "rank"
    with pytest.raises(ConfigError, match="augment.normalize='z-score' is invalid"):
        AugmentConfig(normalize="z-score")
