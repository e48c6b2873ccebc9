"""The super-resolution stage of the cascade: a diffusion model that turns a 64-px image into a 128-px one.

Cascaded diffusion (Ho et al. 2021; SR3, Saharia et al. 2021; diffusers' x4 upscaler): a second
``UNet2DModel`` predicts the high-resolution image from noise, given the low-resolution image enlarged
to the output size (bicubic) as extra input channels: the network sees ``concat(x_t, up)`` and
returns C channels. It is fully convolutional, so it trains on random crops and runs on whole images.

**Residual target** (SRDiff, Li et al. 2022): the diffusion models ``r = residual_scale * (high - base)``,
what the enlarged input ``base`` lacks, rather than the image itself. At worst (an untrained network, or
the first, noisiest steps) the output is the bicubic enlargement; the network spends its capacity on
detail. The residual of a 2x enlargement is small (standard deviation 0.05-0.10 in [-1, 1] units on our
domains), so it is multiplied by ``residual_scale`` (3) before diffusion and divided after.

**Conditioning augmentation** is what makes a cascade work on a base generator's imperfect samples:
in training the low-resolution image is degraded (mild blur, then Gaussian noise at a random level
``s``), and ``s`` reaches the network through its class embedding (``class_embed_type="timestep"``, the
same sinusoidal embedding as the diffusion time), as the x4 upscaler passes ``noise_level``. At
sampling one fixed level is used, chosen by measurement and recorded in the checkpoint.

The noise level follows a DDPM linear schedule over 1000 levels (beta 1e-4 .. 0.02, the x4 upscaler's
``low_res_scheduler``): ``lo_s = sqrt(a_s) lo + sqrt(1 - a_s) n``; level 10 adds noise of standard
deviation 0.04 in [-1, 1] units, 25 0.09, 50 0.17, 100 0.32.

``UpsamplerPipeline`` is a ``DiffusionPipeline`` subclass whose ``save_pretrained`` folder is the
checkpoint (``model_index.json`` with the domain, scale and recommended sampling settings, ``unet/``,
``scheduler/``); :func:`load_upsampler` reads it without the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .diffusion import log_snr, quiet_diffusers, sampler_scheduler, save_staged, write_pipeline_file
from .errors import MedsynthError

#: Levels of the conditioning-noise schedule (a DDPM linear schedule, as the x4 upscaler's).
NOISE_LEVELS = 1000


def noise_level_alphas() -> torch.Tensor:
    """a_s, the cumulative product of (1 - beta) of the linear schedule beta 1e-4 .. 0.02 over 1000 levels."""
    betas = torch.linspace(1e-4, 0.02, NOISE_LEVELS, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


def noise_level_std(level: int) -> float:
    """The standard deviation, in [-1, 1] image units, of the noise that ``level`` adds (before scaling)."""
    a = noise_level_alphas()[int(level)]
    return float((1 - a).sqrt())


def create_upsampler_unet(channels: int, block_out_channels=(32, 64, 128, 128), layers_per_block: int = 1,
                          sample_size: int = 128, norm_num_groups: int = 32) -> torch.nn.Module:
    """The super-resolution UNet: ``2 * channels`` in (noisy image, enlarged low-res image), ``channels``
    out, no attention (it must run on any image size), the conditioning level as a timestep-style embedding."""
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    if min(block_out_channels) % norm_num_groups:
        raise MedsynthError(f"UNet widths {tuple(block_out_channels)} must be multiples of {norm_num_groups} "
                            "(its group-norm groups)")
    return UNet2DModel(
        sample_size=sample_size, in_channels=2 * channels, out_channels=channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
        add_attention=False, class_embed_type="timestep", norm_num_groups=norm_num_groups,
    )


def enlarge(low: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic enlargement by ``scale`` of images in [-1, 1], clamped back to [-1, 1]."""
    return F.interpolate(low, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


def shrink(high: torch.Tensor, scale: int) -> torch.Tensor:
    """The low-resolution image as the base generator's training images were made: bilinear with
    antialiasing (``transforms.square_resize``), then 8-bit levels (generated images are uint8)."""
    size = high.shape[-1] // scale
    low = F.interpolate(high, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (((low.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1)


def degrade(low: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Conditioning augmentation: ``sqrt(a_s) low + sqrt(1 - a_s) noise`` at each image's level s."""
    a = noise_level_alphas().to(low.device)[level.long()].to(low.dtype)[:, None, None, None]
    return a.sqrt() * low + (1 - a).sqrt() * noise


def _pipeline_base():
    from diffusers import DiffusionPipeline

    return DiffusionPipeline


class UpsamplerPipeline(_pipeline_base()):
    """Enlarge images by ``scale``: ``pipe(low_res_uint8, num_inference_steps=10)`` -> uint8 (N, sH, sW, C)."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, domain: str = "", scale: int = 2, base_resolution: int = 64,
                 noise_level: int = 0, max_noise_level: int = 100, num_inference_steps: int = 10,
                 sampler: str = "dpmpp", start_log_snr: float = -4.0, target: str = "residual",
                 residual_scale: float = 3.0):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # The recommended settings (chosen by measurement) travel with the weights.
        self.register_to_config(domain=domain, scale=int(scale), base_resolution=int(base_resolution),
                                noise_level=int(noise_level), max_noise_level=int(max_noise_level),
                                num_inference_steps=int(num_inference_steps), sampler=sampler,
                                start_log_snr=float(start_log_snr), target=target,
                                residual_scale=float(residual_scale))

    def sampling_settings(self) -> dict:
        """The recommended sampling settings recorded in the checkpoint."""
        return {k: self.config[k] for k in ("sampler", "num_inference_steps", "noise_level", "start_log_snr")}

    def target_settings(self) -> dict:
        """What the network predicts: "residual" (with its scale) or "image"."""
        return {"target": self.config.get("target", "image"), "residual_scale": self.config.get("residual_scale", 1.0)}

    @property
    def channels(self) -> int:
        return self.unet.config.out_channels

    @property
    def scale(self) -> int:
        return int(self.config.scale)

    @torch.no_grad()
    def __call__(
        self,
        images: np.ndarray | torch.Tensor,
        num_inference_steps: int | None = None,
        noise_level: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        sampler: str | None = None,
        start_log_snr: float | None = None,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        output_type: str = "np",
    ):
        """Enlarge each image by ``scale``.

        Args:
            images: uint8 (N, H, W, C), or a float tensor (N, C, H, W) in [0, 1].
            num_inference_steps, noise_level, sampler, start_log_snr: None takes the checkpoint's recommended
                value. ``noise_level``: the conditioning augmentation applied to the input (0 = none).
                ``start_log_snr``: sampling starts at this noise level from the enlarged input under noise
                (the input's coarse content is already right; lower starts from more noise).
            generator: one torch.Generator, or one per image (image i then depends only on its own).
            callback: ``callback(step, total, preview)`` with the current clean estimate in [0, 1].
            output_type: "np" (uint8 N, H, W, C), "pt" (float N, C, H, W in [0, 1]) or "pil".

        Returns:
            The enlarged images in ``output_type``.
        """
        from diffusers.utils.torch_utils import randn_tensor

        cfg = self.config
        steps = int(cfg.num_inference_steps if num_inference_steps is None else num_inference_steps)
        level = int(cfg.noise_level if noise_level is None else noise_level)
        sampler = sampler or cfg.sampler
        start = float(cfg.start_log_snr if start_log_snr is None else start_log_snr)
        if steps < 1:
            raise MedsynthError(f"upsampling steps must be at least 1, got {steps}")
        if not 0 <= level < NOISE_LEVELS:
            raise MedsynthError(f"upsampling noise level must be in 0..{NOISE_LEVELS - 1} (the checkpoint "
                                f"recommends {cfg.noise_level}; it trained on 0..{cfg.max_noise_level}), got {level}")
        if not -12.0 <= start <= 0.0:
            raise MedsynthError(f"upsampling start log-SNR must be in [-12, 0], got {start}")
        if output_type not in ("np", "pt", "pil"):
            raise MedsynthError(f"output_type must be np, pt or pil, got {output_type!r}")
        low = self._as_tensor(images)
        n, c, h, w = low.shape
        if c != self.channels:
            raise MedsynthError(f"this upsampler takes {self.channels}-channel images, got {c} channels")
        gens = generator if isinstance(generator, list) else None
        if gens is not None and len(gens) != n:
            raise MedsynthError(f"{len(gens)} generators for {n} images; give one per image or a single one")
        low = low.to(self.device, self.unet.dtype) * 2 - 1
        residual = cfg.get("target", "image") == "residual"
        scale = float(cfg.get("residual_scale", 1.0)) if residual else 1.0
        # Conditioning: the input degraded at the fixed level, then enlarged (as in training).
        cond_noise = randn_tensor(low.shape, generator=generator, device=self.device, dtype=low.dtype)
        levels = torch.full((n,), level, device=self.device, dtype=torch.long)
        base = enlarge(low, self.scale)
        up = enlarge(degrade(low, levels, cond_noise), self.scale) if level else base
        scheduler = sampler_scheduler(sampler, self.scheduler.config, start)
        if residual:  # the scaled residual is not an image in [-1, 1]: no clipping of its estimates
            scheduler = type(scheduler).from_config(scheduler.config, thresholding=False, clip_sample=False)
        scheduler.set_timesteps(steps, device=self.device)
        lam = log_snr(self.scheduler.alphas_cumprod)
        if sampler in ("ddpm", "ddim"):
            keep = lam[scheduler.timesteps.long().cpu()] >= start
            scheduler.timesteps = scheduler.timesteps[keep.to(scheduler.timesteps.device)]
        alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device)
        a0 = alphas_cumprod[int(scheduler.timesteps[0])].to(low.dtype)
        # x_t0 ~ N(sqrt(a_t0) m, (1 - a_t0) I): for a residual m = 0, else the enlarged input.
        noise = randn_tensor(up.shape, generator=generator, device=self.device, dtype=low.dtype)
        x = (1 - a0).sqrt() * noise + (0 if residual else a0.sqrt() * base)
        total = len(scheduler.timesteps)
        for i, t in enumerate(scheduler.timesteps):
            model_in = torch.cat([scheduler.scale_model_input(x, t), up], dim=1)
            out = self.unet(model_in, t, class_labels=levels).sample
            if callback is not None:
                callback(i, total, self._predict_clean(x, out, t, alphas_cumprod, base if residual else None, scale))
            x = scheduler.step(out, t, x, generator=generator).prev_sample
        if residual:
            x = base + x / scale  # high = base + r / residual_scale
        result = (x.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return result
        array = (result.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        if output_type == "np":
            return array
        from PIL import Image

        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array]

    @staticmethod
    def _as_tensor(images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            if images.ndim != 4:
                raise MedsynthError(f"expected images as a (N, C, H, W) tensor, got shape {tuple(images.shape)}")
            return images.float()
        array = np.asarray(images)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.dtype != np.uint8:
            raise MedsynthError(f"expected uint8 images (N, H, W, C), got {array.dtype} of shape {array.shape}")
        return torch.from_numpy(array.copy()).permute(0, 3, 1, 2).float() / 255

    def _predict_clean(self, x: torch.Tensor, out: torch.Tensor, t, alphas_cumprod: torch.Tensor,
                       base: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
        """The current estimate of the output image in [0, 1] (for previews)."""
        a = alphas_cumprod[int(t)].float()
        if self.scheduler.config.prediction_type == "v_prediction":
            x0 = a.sqrt() * x.float() - (1 - a).sqrt() * out.float()  # x0 = sqrt(a) x_t - sqrt(1 - a) v
        else:
            x0 = (x.float() - (1 - a).sqrt() * out.float()) / a.sqrt()
        if base is not None:
            x0 = base.float() + x0 / scale
        return (x0 / 2 + 0.5).clamp(0, 1)


def is_upsampler(path: str | Path) -> bool:
    index = Path(path) / "model_index.json"
    try:
        return json.loads(index.read_text()).get("_class_name") == "UpsamplerPipeline"
    except (OSError, ValueError):
        return False


def load_upsampler(path: str | Path, device: str | torch.device = "cpu") -> UpsamplerPipeline:
    """Load an upsampler checkpoint folder in float32 (fp16 storage is cast up); never uses the network.

    Args:
        path: the folder written by ``train-upsampler`` (``model_index.json``, ``unet/``, ``scheduler/``).
        device: where it runs.

    Raises:
        MedsynthError: for a folder that is not an upsampler checkpoint, or damaged weights.
    """
    from .hub import resolve

    path = resolve(path, "upsampler checkpoint")
    if not (path / "model_index.json").is_file():
        raise MedsynthError(f"{path} is not an upsampler checkpoint (no model_index.json); expected the folder "
                            "written by train-upsampler (model_index.json, unet/, scheduler/)")
    if not is_upsampler(path):
        raise MedsynthError(f"{path} is a checkpoint, but not an upsampler (model_index.json names another "
                            "pipeline); pass the folder written by train-upsampler, e.g. checkpoints/<domain>/upsampler")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_diffusers()
    try:
        pipe = UpsamplerPipeline.from_pretrained(str(path), dtype=torch.float32, local_files_only=True,
                                                 use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise MedsynthError(f"{path}: upsampler checkpoint cannot be loaded ({exc})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def save_upsampler(pipe: UpsamplerPipeline, out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """``save_pretrained`` through ``diffusion.save_staged`` (each file moved into place atomically,
    ``model_index.json`` last); ``dtype=torch.float16`` halves the weights."""
    quiet_diffusers()  # the fp16 cast's advice about modules kept in float32 does not apply (there are none)
    settings = {k: v for k, v in pipe.config.items() if not k.startswith("_") and k not in ("unet", "scheduler")}

    def write(unet, staging: Path) -> None:
        UpsamplerPipeline(unet=unet, scheduler=pipe.scheduler, **settings).save_pretrained(staging,
                                                                                           safe_serialization=True)
        write_pipeline_file(staging, "upsampler", "UpsamplerPipeline")

    return save_staged(out, pipe.unet, dtype, write)


#: A diffusion checkpoint names its second stage in this file: ``{"upsampler": "../upsampler"}``, a path
#: relative to the diffusion folder (or absolute). ``generate`` then writes the stage's resolution by default.
CASCADE_FILE = "cascade.json"


def named_upsampler(diffusion_checkpoint: str | Path) -> Path | None:
    """The upsampler a diffusion checkpoint names in ``cascade.json``, or None when it names none."""
    folder = Path(diffusion_checkpoint)
    path = folder / CASCADE_FILE
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text()).get("upsampler")
    except (OSError, ValueError, AttributeError) as exc:
        raise MedsynthError(f"{path} is not a valid cascade record ({exc}); expected "
                            '{"upsampler": "../upsampler"}') from None
    if not name:
        return None
    target = Path(os.path.normpath(Path(name) if Path(name).is_absolute() else (folder / name)))
    if not (target / "model_index.json").is_file():
        raise MedsynthError(f"{path} names the upsampler {name!r}, but {target} holds no checkpoint; restore it, "
                            "or pass --resolution with the base generator's size to generate without it")
    return target


def name_upsampler(diffusion_checkpoint: str | Path, upsampler: str | Path) -> Path:
    """Write ``cascade.json`` into a diffusion checkpoint, naming ``upsampler`` relative to it."""
    import os as _os

    from . import atomic

    folder = Path(diffusion_checkpoint)
    relative = _os.path.relpath(Path(upsampler).resolve(), folder.resolve())
    atomic.write_json(folder / CASCADE_FILE, {"upsampler": relative})
    return folder / CASCADE_FILE


def check_cascade(base, stage: UpsamplerPipeline, stage_path: str | Path = "the upsampler") -> None:
    """Refuse a base generator and an upsampler that do not fit: other domain, channels or size."""
    domain = base.config.get("domain")
    if stage.config.domain and domain and stage.config.domain != domain:
        raise MedsynthError(f"{stage_path} upsamples {stage.config.domain} images, but the generator makes {domain} "
                            f"images; use checkpoints/{domain}/upsampler or an upsampler trained on {domain}")
    channels = base.unet.config.in_channels
    if stage.channels != channels:
        raise MedsynthError(f"{stage_path} takes {stage.channels}-channel images, but the generator makes "
                            f"{channels}-channel images; use an upsampler trained on the generator's domain")
    size = base.unet.config.sample_size
    if int(stage.config.base_resolution) != int(size):
        raise MedsynthError(f"{stage_path} enlarges {stage.config.base_resolution}-px images, but the generator makes "
                            f"{size}-px images; use an upsampler trained with --base-resolution {size}")


def upsample_settings(stage: UpsamplerPipeline, path: str | Path, steps: int | None = None,
                      noise_level: int | None = None) -> dict:
    """What a record says about the second stage: its checkpoint, training steps and sampling settings."""
    settings = stage.sampling_settings()
    if steps is not None:
        settings["num_inference_steps"] = int(steps)
    if noise_level is not None:
        settings["noise_level"] = int(noise_level)
    trained = None
    summary = Path(path) / "train_summary.json"
    if summary.is_file():
        try:
            trained = json.loads(summary.read_text()).get("steps")
        except (OSError, ValueError):
            trained = None
    return {"checkpoint": str(path), "training_steps": trained, "scale": stage.scale,
            "resolution": int(stage.config.base_resolution) * stage.scale, **settings}
