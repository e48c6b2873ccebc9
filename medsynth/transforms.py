"""Turning decoded images into model input, identically for training and inference.

Every image is made square without distorting anatomy (the short side is padded by repeating its
edge pixels, which are background in scans and smears alike), resized with antialiasing, scaled
to [0, 1] and normalised with the model's mean and std. Augmentations come from the domain's
``Augmentation`` record.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .domains import Augmentation


def to_float_chw(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) in [0, 1]."""
    # A copy: arrays viewing PIL buffers are read-only, flipped views have negative strides.
    return torch.from_numpy(np.array(image, copy=True, order="C")).permute(2, 0, 1).float().div_(255.0)


def square_resize(chw: torch.Tensor, size: int) -> torch.Tensor:
    """Pad the shorter side with replicated edges to make a square, then resize to ``size``."""
    _, h, w = chw.shape
    if h != w:
        diff = abs(h - w)
        before, after = diff // 2, diff - diff // 2
        pad = (before, after, 0, 0) if h > w else (0, 0, before, after)  # (left, right, top, bottom)
        chw = F.pad(chw[None], pad, mode="replicate")[0]
    if chw.shape[-1] != size:
        chw = F.interpolate(chw[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return chw


def square_resize_uint8(image: np.ndarray, size: int, source_size: int | None = None) -> np.ndarray:
    """uint8 (H, W, C) -> uint8 (size, size, C), resized as ``fit_to_input`` does."""
    out = fit_to_input(to_float_chw(image), size, source_size)
    return (out.clamp_(0, 1).mul_(255).round_().to(torch.uint8)).permute(1, 2, 0).numpy()


def _uint8_levels(chw: torch.Tensor) -> torch.Tensor:
    return chw.clamp(0, 1).mul(255).round().div(255)


def fit_to_input(chw: torch.Tensor, size: int, source_size: int | None = None) -> torch.Tensor:
    """A classifier's resize: square and resize to ``size``; with ``source_size`` (smaller than ``size``),
    through that resolution first. A CNN trained on 64-px synthetic images upsampled to 128 px must see
    real images with no more detail than those had, so they too pass through 64 px.

    Through ``source_size``, the result is rounded to 8-bit levels at both resolutions, exactly as
    training stores its images (``square_resize_uint8``): an upsampled image is smooth, and a CNN
    trained on its rounded levels answers differently without them (a Lite0 at 96 px through 64:
    0.880 on the 810 brain_mri selection images rounded, 0.868 unrounded).
    """
    if source_size and source_size < size:
        return _uint8_levels(square_resize(_uint8_levels(square_resize(chw, source_size)), size))
    return square_resize(chw, size)


class Normalize(torch.nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[:, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ToSymmetric(torch.nn.Module):
    """[0, 1] -> [-1, 1], the range diffusion models work in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1


class RandomRot90(torch.nn.Module):
    """Rotate by 0, 90, 180 or 270 degrees, uniformly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(0, 4, ()).item())
        return torch.rot90(x, k, dims=(-2, -1)) if k else x


class ReflectAffine(torch.nn.Module):
    """A random affine transform whose uncovered corners show reflected content, not black."""

    def __init__(self, degrees: float, translate: float, scale: tuple[float, float]) -> None:
        super().__init__()
        self.affine = v2.RandomAffine(degrees=degrees, translate=(translate, translate), scale=scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        # Enough margin for the largest rotation + shift + zoom-out the affine can produce.
        pad = min(size - 1, int(math.ceil(size * 0.3)))
        padded = F.pad(x[None], (pad, pad, pad, pad), mode="reflect")[0]
        return self.affine(padded)[..., pad : pad + size, pad : pad + size]


class RandomGaussianNoise(torch.nn.Module):
    """With probability ``p``, add N(0, sigma^2) pixel noise, sigma uniform in [0, ``max_sigma``]."""

    def __init__(self, max_sigma: float, p: float = 0.5) -> None:
        super().__init__()
        self.max_sigma, self.p = max_sigma, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return x
        sigma = float(torch.rand(())) * self.max_sigma
        return (x + sigma * torch.randn_like(x)).clamp_(0.0, 1.0)


class RandomGamma(torch.nn.Module):
    """With probability ``p``, raise intensities to a power drawn log-uniformly from 1/g .. g."""

    def __init__(self, gamma: float, p: float = 0.5) -> None:
        super().__init__()
        self.log_gamma, self.p = math.log(gamma), p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return x
        g = math.exp((float(torch.rand(())) * 2 - 1) * self.log_gamma)
        return x.clamp(min=0.0).pow(g)


# The strengths ``--augment strong`` adds on top of a domain's own. The idea: a generator's samples
# differ from real scans in texture, sharpness, noise and intensity curves, so a CNN made to ignore
# those should rely more on anatomy. On our brain_mri synthetic set it did not help (one seed, 0.807
# against 0.823-0.842 for the domain's augmentations): benchmarks/RESULTS.md, "Training on synthetic
# images: the recipe".
STRONG = {
    "degrees": 15.0, "translate": 0.1, "scale": (0.8, 1.2), "brightness": 0.3, "contrast": 0.3,
    "blur_sigma": (0.1, 1.2), "noise": 0.06, "gamma": 1.5, "erase": 0.25,
}


def build_augmentation(aug: Augmentation, channels: int, strength: str = "domain") -> torch.nn.Module:
    """Training augmentations on float (C, H, W) tensors in [0, 1].

    ``strength`` "domain" uses the domain's record as it is; "strong" widens its affine and colour
    ranges to at least ``STRONG``'s and adds blur, gamma, pixel noise and random erasing.
    """
    if strength not in ("domain", "strong"):
        raise ValueError(f"augmentation strength must be 'domain' or 'strong', got {strength!r}")
    strong = strength == "strong"
    if strong:
        aug = replace(
            aug,
            degrees=max(aug.degrees, STRONG["degrees"]),
            translate=max(aug.translate, STRONG["translate"]),
            scale=(min(aug.scale[0], STRONG["scale"][0]), max(aug.scale[1], STRONG["scale"][1])),
            brightness=max(aug.brightness, STRONG["brightness"]),
            contrast=max(aug.contrast, STRONG["contrast"]),
        )
    steps: list[torch.nn.Module] = []
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.vflip:
        steps.append(v2.RandomVerticalFlip())
    if aug.rot90:
        steps.append(RandomRot90())
    if aug.degrees or aug.translate or aug.scale != (1.0, 1.0):
        steps.append(ReflectAffine(aug.degrees, aug.translate, aug.scale))
    color = channels == 3
    if aug.brightness or aug.contrast or (color and (aug.saturation or aug.hue)):
        steps.append(
            v2.ColorJitter(
                brightness=aug.brightness or None,
                contrast=aug.contrast or None,
                saturation=(aug.saturation or None) if color else None,
                hue=(aug.hue or None) if color else None,
            )
        )
    if strong:
        steps += [
            RandomGamma(STRONG["gamma"]),
            v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=STRONG["blur_sigma"])], p=0.5),
            RandomGaussianNoise(STRONG["noise"]),
            v2.RandomErasing(p=STRONG["erase"], scale=(0.02, 0.12), value=0.0),
        ]
    return torch.nn.Sequential(*steps)
