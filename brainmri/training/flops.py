"""How close a run comes to the machine's limit: a training image's FLOPs (PyTorch's own
counter) and the device's peak FLOP/s, where it can be known.

The count is of the model's matrix work (convolutions, matmuls: 2 FLOPs a multiply-add) in
one forward and backward pass, as ``torch.utils.flop_counter`` reports it; elementwise work
(activations, norms, the optimizer) is left out, as in every published FLOP figure. The peak
of a CPU is cores x clock x FLOPs a core completes per cycle on the vector units oneDNN will
use; of a GPU, the card's published dense figure from :data:`GPU_PEAKS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Published dense peaks, TFLOP/s: (bf16/fp16 tensor cores, fp32). The first matching name wins.
GPU_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.4, 66.9),
    ("H100 PCIe", 756.0, 51.2),
    ("H100", 989.4, 66.9),
    ("A100", 312.0, 19.5),
    ("L40S", 362.1, 91.6),
    ("L4", 121.0, 30.3),
    ("A10", 125.0, 31.2),
    ("RTX 4090", 165.2, 82.6),
    ("V100", 125.0, 15.7),  # fp16 tensor cores; no bf16
    ("T4", 65.0, 8.1),
)


@dataclass(frozen=True)
class Peak:
    """A device's peak FLOP/s for the precision in use, and how it was worked out."""

    flops: float
    basis: str


def train_flops_per_image(model: nn.Module, in_chans: int, image_size: int, channels_last: bool) -> float:
    """FLOPs of one training image: forward and backward on a batch of 2 (BatchNorm needs two
    in training mode), halved. The model's weights and mode are left as they were."""
    device = next(model.parameters()).device
    x = torch.randn(2, in_chans, image_size, image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # BatchNorm's running stats
    model.train()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(x).float().sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(state)
        model.train(was_training)
    return counter.get_total_flops() / 2


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


NOMINAL = "nominal clock; boost not visible, so a share can exceed 100%"


def cpu_clock() -> Optional[tuple[float, str]]:
    """(GHz, where it came from): cpufreq's maximum where the kernel has it, else /proc/cpuinfo's
    clock, which is the nominal or current one: a boost above it (common in VMs, which hide
    cpufreq) makes the achieved FLOP/s exceed a peak worked out from it."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6, "max clock"
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(
                    line.split(":", 1)[1]
                ) / 1000, "nominal clock; boost not visible, so a share can exceed 100%"
    except (OSError, ValueError):
        pass
    return None


def cpu_clock_ghz() -> Optional[float]:
    clock = cpu_clock()
    return clock[0] if clock else None


def cpu_flops_per_cycle(flags: set[str], vendor: str, bf16: bool, isa_cap: Optional[str]) -> tuple[int, str]:
    """FLOPs a core completes per cycle for fp32 (or bf16 when ``bf16``), and which units.

    Two FMA pipes a core; AVX-512 is a full 512-bit datapath on Intel and on AMD Zen 5 (which
    alone among AMD's has VP2INTERSECT), double-pumped 256-bit on Zen 4. ``isa_cap``: oneDNN's
    ``ONEDNN_MAX_CPU_ISA``, which hides the wider units from the kernels."""
    capped = (isa_cap or "").upper()
    avx512 = "avx512f" in flags and not capped.startswith(("AVX2", "SSE"))
    if avx512:
        full = vendor != "AuthenticAMD" or "avx512_vp2intersect" in flags
        lanes, units = (16, "2 x 512-bit FMA") if full else (8, "2 x 256-bit FMA (AVX-512 double-pumped)")
    elif "avx2" in flags and "fma" in flags:
        lanes, units = 8, "2 x 256-bit FMA (AVX2)"
    else:
        lanes, units = 4, "SSE"
    per_cycle = 2 * lanes * 2  # two pipes x lanes x (multiply + add)
    if bf16 and "amx_bf16" in flags and not capped:
        return 1024, "AMX bf16 tiles"
    if bf16 and avx512 and "avx512_bf16" in flags:
        return 2 * per_cycle, f"{units}, bf16 dot products (2 per fp32 lane)"
    return per_cycle, units


def cpu_peak(threads: int, bf16: bool, isa_cap: Optional[str] = None) -> Optional[Peak]:
    """Peak FLOP/s of the ``threads`` cores this process computes on; None when the clock is unknown."""
    known = cpu_clock()
    if known is None:
        return None
    clock, source = known
    vendor = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    per_cycle, units = cpu_flops_per_cycle(cpu_flags(), vendor, bf16, isa_cap)
    flops = threads * clock * 1e9 * per_cycle
    return Peak(flops, f"{threads} core(s) x {clock:.2f} GHz x {per_cycle} FLOP/cycle ({units}; {source})")


def gpu_peak(name: str, bf16: bool) -> Optional[Peak]:
    """The card's published dense peak; None for a card not in :data:`GPU_PEAKS`."""
    for key, half, single in GPU_PEAKS:
        if key in name:
            tflops = half if bf16 else single
            return Peak(tflops * 1e12, f"{key}: published dense {'bf16/fp16' if bf16 else 'fp32'} {tflops} TFLOP/s")
    return None
