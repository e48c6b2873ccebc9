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


class RandomLowResolution(torch.nn.Module):
    """Training augmentation for small uploads: with probability ``p``, the image (float (C, H, W) in
    [0, 1]) is reduced to a random size between ``floor`` and its own (longer side; antialiased bicubic,
    as an export of a small copy), JPEG re-compressed at a random quality with probability ``p_jpeg``,
    enlarged back (bilinear, as the classifier's own resize) and, with probability ``p_blur``, mildly
    blurred: the scans a classifier meets as screenshots, thumbnails and viewer exports.

    ``draw(generator)`` gives one draw's parameters; ``apply`` is the deterministic transform; ``forward``
    draws from torch's global generator (seeded per process and DataLoader worker).
    """

    def __init__(self, floor: int = 32, p: float = 0.5, jpeg_quality: tuple[int, int] = (40, 95),
                 p_jpeg: float = 0.5, blur_sigma: tuple[float, float] = (0.3, 1.0), p_blur: float = 0.25) -> None:
        super().__init__()
        if floor < 8:
            raise ValueError(f"the low-resolution floor must be at least 8 px, got {floor}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"the low-resolution probability must be in [0, 1], got {p}")
        self.floor, self.p, self.jpeg_quality, self.p_jpeg = int(floor), float(p), jpeg_quality, float(p_jpeg)
        self.blur_sigma, self.p_blur = blur_sigma, float(p_blur)

    def draw(self, full: int, generator: torch.Generator | None = None) -> dict | None:
        """One draw for an image of longer side ``full``: {"size", "jpeg_quality" or None, "blur_sigma" or
        None}, or None (left as it is)."""
        u = torch.rand(4, generator=generator)
        if u[0] >= self.p or full <= self.floor:
            return None
        size = int(torch.randint(self.floor, full + 1, (1,), generator=generator))
        lo, hi = self.jpeg_quality
        quality = int(lo + (hi - lo) * float(u[2])) if u[1] < self.p_jpeg else None
        sigma = (self.blur_sigma[0] + (self.blur_sigma[1] - self.blur_sigma[0]) * float(u[2])
                 if u[3] < self.p_blur else None)
        return {"size": size, "jpeg_quality": quality, "blur_sigma": sigma}

    @staticmethod
    def apply(chw: torch.Tensor, size: int, jpeg_quality: int | None = None,
              blur_sigma: float | None = None) -> torch.Tensor:
        """Reduce to longer side ``size``, optionally JPEG, enlarge back to the input's shape, optionally blur."""
        from torchvision.io import decode_jpeg, encode_jpeg

        h, w = chw.shape[-2:]
        scale = size / max(h, w)
        small = F.interpolate(chw[None], size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bicubic",
                              antialias=True, align_corners=False)[0].clamp(0, 1)
        if jpeg_quality is not None:
            levels = small.mul(255).round().to(torch.uint8)
            small = decode_jpeg(encode_jpeg(levels, quality=int(jpeg_quality))).to(torch.float32).div(255)
        out = F.interpolate(small[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        if blur_sigma is not None:
            out = v2.functional.gaussian_blur(out, kernel_size=5, sigma=float(blur_sigma))
        return out.clamp(0, 1)

    def forward(self, chw: torch.Tensor) -> torch.Tensor:
        params = self.draw(max(chw.shape[-2:]))
        return chw if params is None else self.apply(chw, **params)
