"""Augmentation of whole uint8 batches on the training device, for the cached pipeline.

Each sample gets its own random parameters, as with the per-image torchvision presets, and
the steps follow the same order and formulas: reflect-pad + random crop, horizontal flip,
affine (rotation about the centre and whole-pixel translation, nearest resampling, zero
fill, as torchvision's RandomAffine), brightness (multiplicative, clamped), then
normalization: the per-image step of ``augment.normalize`` if it has one
(:mod:`brainmri.data.intensity`), then the fixed mean and std.

Intensity and resolution, what another scanner changes (all off unless set; on [0, 1]
values, after the affine step and before brightness), each with its own parameters per sample:

- bias field: ``x * exp(sum c_ij P_i(y) P_j(x))`` over the Legendre polynomials with
  1 <= i + j <= 3 (MONAI's ``RandBiasField`` of degree 3 without the constant term, which
  would be brightness), each ``c_ij`` uniform in [-bias_field, bias_field];
- down-up resampling: a factor ``s`` uniform in [1, downsample]; a Gaussian of sigma
  ``(s - 1) / 2`` against aliasing (as scikit-image's ``rescale``), bilinear sampling at the
  coarse grid's pixel centres, then bilinear back to the full size;
- blur: a Gaussian of sigma uniform in [blur min, blur max] pixels (reflect padding);
- noise: additive Gaussian noise of std uniform in [0, noise];
- gamma: ``x ** g``, g uniform in [gamma min, gamma max] (MONAI's ``RandAdjustContrast``);
- contrast: ``m + c * (x - m)`` around each image's own mean m, c uniform in
  [contrast min, contrast max].

Each step applies to each sample with probability ``intensity_p`` (as MONAI's ``prob``;
the others keep the image as it is, so the model also sees clean ones). Each result is
clamped to [0, 1]; a range of (1, 1) (gamma, contrast) or 0 (the others) leaves the image
as it is.

Why not kornia.augmentation: measured on an H200 (ResNet18, 224 px, batch 64, bf16), its
per-batch parameter sampling and host-device traffic cost as much time as the training
step itself (train/model ratio 0.49). Here every step is one or two batched tensor ops with
parameters drawn on the device, so nothing waits for the host and the work queues behind
the model's kernels; on a CPU it is cheaper than decoding again by two orders of magnitude.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from brainmri.config import intensity_steps
from brainmri.data.intensity import per_image_steps
from brainmri.data.transforms import AugmentParams


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (hi - lo) + lo


def random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad by ``pad`` then crop back to the input size at a random offset per sample.

    On a GPU one gather does the whole batch with no host round trip; on a CPU, plain
    slices of the (uint8) batch are several times cheaper than that gather.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    if x.device.type == "cpu":
        return torch.stack(
            [padded[i, :, y : y + h, z : z + w] for i, (y, z) in enumerate(zip(oy[:, 0].tolist(), ox[:, 0].tolist()))]
        )
    rows = (oy + torch.arange(h, device=x.device)).unsqueeze(2)  # (B, H, 1)
    cols = (ox + torch.arange(w, device=x.device)).unsqueeze(1)  # (B, 1, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # gather (B, H, W, C)


def random_hflip(x: torch.Tensor, p: float) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device) < p
    if x.device.type == "cpu":  # flip only the chosen samples (no host sync to avoid on a CPU)
        chosen = flip.nonzero().squeeze(1)
        x = x.clone()
        x[chosen] = x[chosen].flip(-1)
        return x
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_affine(x: torch.Tensor, degrees: float, translate: float) -> torch.Tensor:
    """Rotation in [-degrees, degrees] and translation up to ``translate`` of the size (whole
    pixels, as torchvision rounds them), nearest neighbour, zeros outside."""
    b, _, h, w = x.shape
    angle = _uniform(b, -degrees, degrees, x.device) * (math.pi / 180)
    tx = torch.round(_uniform(b, -translate * w, translate * w, x.device))
    ty = torch.round(_uniform(b, -translate * h, translate * h, x.device))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # grid_sample maps each output pixel to its source: the inverse of "rotate, then shift",
    # in normalized coordinates ([-1, 1] across each axis; the images are square).
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos, sin
    theta[:, 1, 0], theta[:, 1, 1] = -sin, cos
    shift = torch.stack([2 * tx / w, 2 * ty / h], dim=1)  # (B, 2)
    theta[:, :, 2] = -(theta[:, :, :2] @ shift.unsqueeze(2)).squeeze(2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def random_brightness(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return (x * _uniform(x.shape[0], lo, hi, x.device).view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def gamma(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``x ** g[i]`` of each [0, 1] image i."""
    return x.clamp(0.0, 1.0).pow(_per_sample(g))


def contrast(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Each image's distance from its own mean (over all its pixels) scaled by ``c[i]``, clamped."""
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (m + _per_sample(c) * (x - m)).clamp(0.0, 1.0)


def gaussian_noise(x: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x + _per_sample(std) * torch.randn_like(x)).clamp(0.0, 1.0)


def legendre_basis(size: int, device: torch.device, degree: int = 3) -> torch.Tensor:
    """(terms, size, size): P_i(y) * P_j(x) for 1 <= i + j <= degree, on pixel centres in [-1, 1]."""
    t = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    p = [torch.ones_like(t), t, (3 * t**2 - 1) / 2, (5 * t**3 - 3 * t) / 2][: degree + 1]
    return torch.stack([p[i][:, None] * p[j][None, :] for i in range(degree + 1) for j in range(degree + 1 - i)][1:])


def bias_field(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """``x`` times the smooth field ``exp(sum_k coeffs[i, k] * basis_k)`` (square images), clamped."""
    basis = legendre_basis(x.shape[-1], x.device)
    log_field = torch.einsum("bk,khw->bhw", coeffs, basis)
    return (x * log_field.exp().unsqueeze(1)).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Each image blurred by a Gaussian of its own ``sigma`` (pixels; 0 leaves it as it is).

    The kernels are cut at 3 * ``max_sigma`` and run as one grouped separable convolution
    over the whole batch, so nothing leaves the device.
    """
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3 * max_sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma.to(x.dtype).clamp_min(1e-3).view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, -1, 1), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, 1, -1), groups=b * c)
    return y.view(b, c, h, w)


def _scale_grid(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Sampling grid that reads pixel centre k of the output at ``(k + 0.5) * s - 0.5`` of ``x``."""
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = s
    theta[:, :, 2] = (s - 1).view(-1, 1)
    return F.affine_grid(theta, list(x.shape), align_corners=False)


def down_up(x: torch.Tensor, factor: torch.Tensor, max_factor: float) -> torch.Tensor:
    """Each image resampled to ``1 / factor[i]`` of its size and back (bilinear), as one batch.

    The coarse image of sample i fills the top-left ``size / factor[i]`` pixels of a
    full-size tensor (two affine grids, no per-sample sizes on the host).
    """
    factor = factor.to(x.dtype)
    smooth = gaussian_blur(x, (factor - 1) / 2, (max_factor - 1) / 2)
    coarse = F.grid_sample(smooth, _scale_grid(x, factor), mode="bilinear", padding_mode="border", align_corners=False)
    return F.grid_sample(
        coarse, _scale_grid(x, 1 / factor), mode="bilinear", padding_mode="border", align_corners=False
    )


def _draw(shape: tuple[int, ...], lo: float, hi: float, identity: float, prob: float, device) -> torch.Tensor:
    """Parameters uniform in [lo, hi], one row per sample; with ``prob`` < 1, each sample's
    row is the step's ``identity`` value unless its own coin (drawn after the values) says apply."""
    values = _uniform(math.prod(shape), lo, hi, device).view(shape)
    if prob >= 1.0:
        return values
    apply = (torch.rand(shape[0], device=device) < prob).view(-1, *([1] * (len(shape) - 1)))
    return torch.where(apply, values, torch.full_like(values, identity))


def random_intensity(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """The intensity and resolution steps that ``p`` turns on, on a [0, 1] float batch; each
    step applies to each sample with probability ``p.intensity_p``."""
    b, dev, q = x.shape[0], x.device, p.intensity_p
    if p.bias_field > 0:
        x = bias_field(x, _draw((b, 9), -p.bias_field, p.bias_field, 0.0, q, dev))
    if p.downsample > 1:
        x = down_up(x, _draw((b,), 1.0, p.downsample, 1.0, q, dev), p.downsample)
    if p.blur is not None and p.blur[1] > 0:
        x = gaussian_blur(x, _draw((b,), *p.blur, 0.0, q, dev), p.blur[1])
    if p.noise > 0:
        x = gaussian_noise(x, _draw((b,), 0.0, p.noise, 0.0, q, dev))
    if p.gamma is not None and tuple(p.gamma) != (1.0, 1.0):
        x = gamma(x, _draw((b,), *p.gamma, 1.0, q, dev))
    if p.contrast is not None and tuple(p.contrast) != (1.0, 1.0):
        x = contrast(x, _draw((b,), *p.contrast, 1.0, q, dev))
    return x


def has_intensity(p: AugmentParams) -> bool:
    """Whether any intensity or resolution step is on (the config's own rule)."""
    return bool(intensity_steps(p))


class BatchAugment(nn.Module):
    """uint8 (B, C, S, S) -> normalized float (B, C, S, S); random steps only when ``train``."""

    def __init__(
        self, params: AugmentParams, image_size: int, mean: Sequence[float], std: Sequence[float], train: bool
    ):
        super().__init__()
        self.params = params
        self.train_mode = train
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)
        self.per_image = nn.Sequential(*per_image_steps(params.normalize))
        # The Trainer turns the intensity and resolution steps off for a run's last epochs
        # (augment.intensity_until); a flag, not a parameter, so no state_dict carries it.
        self.intensity = True

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.params
        x = images
        # Crop and flip move pixels without changing them: on a CPU they run on uint8, a
        # quarter of the bytes of float32 (CUDA's reflection pad wants floats).
        if x.device.type != "cpu":
            x = x.float()
        if self.train_mode:
            if p.pad > 0:
                x = random_crop(x, p.pad)
            if p.hflip > 0:
                x = random_hflip(x, p.hflip)
        x = x.float() if x.dtype == torch.uint8 else (x.clone() if x is images else x)  # never edit the caller's batch
        if self.train_mode and (p.translate > 0 or p.degrees > 0):
            x = random_affine(x, p.degrees, p.translate)
        if self.train_mode and self.intensity and has_intensity(p):
            x = random_intensity(x.div_(255.0), p).mul_(255.0)
        if self.train_mode and p.brightness is not None and tuple(p.brightness) != (1.0, 1.0):
            x = random_brightness(x.div_(255.0), *p.brightness).mul_(255.0)
        if len(self.per_image):
            return (self.per_image(x.div_(255.0)) - self.mean) / self.std
        # (x / 255 - mean) / std as one multiply and one subtract
        return x.mul_(1.0 / (255.0 * self.std)).sub_(self.mean / self.std)
