import pytest
import torch

from brainmri.data.batch_augment import gaussian_blur
from brainmri.data.corruptions import CORRUPTIONS, SEVERITIES


def textured(channels: int = 1) -> torch.Tensor:
    """[0, 1] slices: black background, a smooth textured disc."""
    g = torch.Generator().manual_seed(0)
    x = gaussian_blur(torch.rand(4, channels, 48, 48, generator=g), torch.full((4,), 1.5), 1.5)
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    disc = ((yy - 24) ** 2 + (xx - 24) ** 2 < 18**2).float()
    return (0.2 + x) * disc * 0.8


def test_the_family_has_every_kind_the_report_documents():
    assert [c.name for c in CORRUPTIONS] == [
        "gamma_up", "gamma_down", "contrast", "brightness", "noise", "jpeg", "resolution", "blur"
    ]  # fmt: skip
    assert all(len(c.levels) == len(SEVERITIES) == 5 for c in CORRUPTIONS)


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=lambda c: c.name)
@pytest.mark.parametrize("channels", [1, 3])
def test_each_corruption_grows_with_severity_and_is_reproducible(corruption, channels):
    x = textured(channels)
    changes = []
    for s in SEVERITIES:
        y = corruption.apply(x, s, torch.Generator().manual_seed(0))
        assert y.shape == x.shape and y.dtype == x.dtype and 0 <= float(y.min()) and float(y.max()) <= 1
        assert torch.equal(y, corruption.apply(x, s, torch.Generator().manual_seed(0)))
        changes.append(float((y - x).abs().mean()))
    assert 0 < changes[0] and changes == sorted(changes), changes
