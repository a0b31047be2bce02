"""brainmri/training/flops.py: a training image's FLOPs by PyTorch's counter, and device peaks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainmri.training import flops as F


def test_a_training_image_counts_forward_and_backward_of_the_matrix_work():
    # conv 1->4, 3x3, on 8x8 (padding 1): 8*8*4*9 multiply-adds = 2304 MACs, 4608 FLOPs forward;
    # the linear 256->3: 768 MACs, 1536 FLOPs. Backward: the weight gradients of both and the
    # linear's input gradient (the conv's input needs none): 4608 + 1536 + 1536.
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(256, 3, bias=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert F.train_flops_per_image(model, 1, 8, channels_last=False) == (4608 + 1536) + (4608 + 1536 + 1536)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_batchnorm_statistics_and_the_mode_are_left_as_they_were():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
    stats = model[1].running_mean.clone()
    F.train_flops_per_image(model, 1, 8, channels_last=True)
    assert not model.training and torch.equal(model[1].running_mean, stats)


@pytest.mark.parametrize(
    ("flags", "vendor", "bf16", "cap", "expected"),
    [
        ({"avx2", "fma"}, "GenuineIntel", False, None, 32),
        ({"avx2", "fma", "avx512f"}, "GenuineIntel", False, None, 64),
        ({"avx2", "fma", "avx512f", "avx512_bf16"}, "GenuineIntel", True, None, 128),
        ({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}, "GenuineIntel", True, None, 1024),
        ({"avx2", "fma", "avx512f", "avx512_bf16"}, "AuthenticAMD", True, None, 64),  # Zen 4: double-pumped
        ({"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vp2intersect"}, "AuthenticAMD", True, None, 128),  # Zen 5
        ({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}, "GenuineIntel", True, "AVX2", 32),  # capped: AVX2 fp32
    ],
)
def test_flops_per_cycle_follow_the_vector_units_the_kernels_may_use(flags, vendor, bf16, cap, expected):
    assert F.cpu_flops_per_cycle(flags, vendor, bf16, cap)[0] == expected


def test_gpu_peaks_come_from_the_published_table():
    assert F.gpu_peak("NVIDIA H200", bf16=True).flops == pytest.approx(989.4e12)
    assert F.gpu_peak("NVIDIA H100 PCIe", bf16=False).flops == pytest.approx(51.2e12)
    assert F.gpu_peak("NVIDIA A100-SXM4-80GB", bf16=True).flops == pytest.approx(312e12)
    assert F.gpu_peak("Some Future GPU", bf16=True) is None


def test_this_cpus_peak_is_cores_times_clock_times_flops_per_cycle():
    peak = F.cpu_peak(threads=2, bf16=False)
    if F.cpu_clock_ghz() is None:
        assert peak is None
    else:
        assert peak.flops == pytest.approx(2 * F.cpu_clock_ghz() * 1e9 * int(peak.basis.split(" x ")[2].split()[0]))
