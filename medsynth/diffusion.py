"""Class-conditional diffusion: the UNet factory, our pipeline, and the samplers.

The model is a diffusers ``UNet2DModel`` with a class embedding of ``K + 1`` entries: the K
classes of the domain plus one "no class" index used for classifier-free guidance (Ho & Salimans
2022). ``ClassConditionalPipeline`` is a ``DiffusionPipeline`` subclass (``DDPMPipeline`` takes no
labels) whose ``save_pretrained`` folder is the checkpoint of docs/checkpoints.md: ``model_index.json`` (with the
domain and class names), ``unet/`` and ``scheduler/``. Loading it never touches the network.

Samplers are swapped by name on a copy of the training scheduler's config, so one checkpoint
samples with ``ddpm`` (the full 1000-step ancestral chain), ``ddim`` or ``dpmpp``
(DPM-Solver++ multistep), and a sampler choice never leaks into another call.
"""

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import MedsynthError
from .recipes import SAMPLERS, START_LOG_SNR, STARTS  # noqa: F401 (re-exported)
from .recipes import UNET_PRESETS as PRESETS


def create_unet(preset: str, num_classes: int, channels: int, **overrides) -> torch.nn.Module:
    """A class-conditional UNet2DModel from a named preset; any preset value can be overridden."""
    from diffusers import UNet2DModel

    if preset not in PRESETS:
        raise MedsynthError(f"unknown preset {preset!r}; expected one of: {', '.join(PRESETS)}")
    cfg = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    resolution = cfg.pop("resolution")
    levels = len(cfg["block_out_channels"])
    if resolution % (2 ** (levels - 1)):
        raise MedsynthError(f"resolution {resolution} must be divisible by {2 ** (levels - 1)} for preset {preset!r}")
    return UNet2DModel(
        sample_size=resolution, in_channels=channels, out_channels=channels,
        num_class_embeds=num_classes + 1,  # index num_classes = "no class" for guidance
        **cfg,
    )


def make_noise_scheduler(prediction_type: str = "epsilon", num_train_timesteps: int = 1000):
    """The training scheduler: DDPM with the cosine schedule (Nichol & Dhariwal 2021), good at low resolution."""
    from diffusers import DDPMScheduler

    if prediction_type not in ("epsilon", "v_prediction"):
        raise MedsynthError(f"prediction type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
        prediction_type=prediction_type, clip_sample=True, clip_sample_range=1.0,
        timestep_spacing="trailing", steps_offset=0, variance_type="fixed_small",
    )


PRIOR_FILE = "start_prior.safetensors"
PRIOR_GRID = 8
PRIOR_RANK = 32


def coarse_prior(images: np.ndarray, labels: Sequence[int], num_classes: int, grid: int = PRIOR_GRID,
                 rank: int = PRIOR_RANK) -> dict[str, torch.Tensor]:
    """Per class, a Gaussian over the training images reduced to ``grid`` x ``grid`` (box average), in [-1, 1].

    Returns ``mean`` (K, C*grid*grid) and ``basis`` (K, rank, C*grid*grid), the top principal directions
    scaled by their standard deviations, so ``mean[k] + n @ basis[k]`` with n ~ N(0, I) is a draw. Only
    these statistics are kept, never an image; a class with fewer than 2 images gets a zero basis.
    """
    images = np.asarray(images)
    n, h, w, c = images.shape
    if h % grid or w % grid:
        raise MedsynthError(f"the start prior needs a resolution divisible by {grid}, got {h}x{w}")
    small = images.astype(np.float64).reshape(n, grid, h // grid, grid, w // grid, c).mean((2, 4)) / 127.5 - 1
    flat = small.transpose(0, 3, 1, 2).reshape(n, -1)  # (N, C*grid*grid), channel-major like the network
    labels = np.asarray(labels)
    d = flat.shape[1]
    means, bases = np.zeros((num_classes, d)), np.zeros((num_classes, rank, d))
    for k in range(num_classes):
        x = flat[labels == k]
        if not len(x):
            continue
        means[k] = x.mean(0)
        if len(x) < 2:
            continue
        _, sv, vt = np.linalg.svd(x - means[k], full_matrices=False)
        r = min(rank, len(sv))
        bases[k, :r] = vt[:r] * (sv[:r] / np.sqrt(len(x) - 1))[:, None]
    return {"mean": torch.tensor(means, dtype=torch.float32), "basis": torch.tensor(bases, dtype=torch.float32),
            "grid": torch.tensor(grid), "images": torch.tensor(n)}


def save_prior(prior: dict[str, torch.Tensor], folder: str | Path, classes: Sequence[str]) -> Path:
    """Write ``coarse_prior``'s tensors (and ``images``, the count it was fitted on, if given) atomically."""
    from safetensors.torch import save_file

    from . import atomic

    path = Path(folder) / PRIOR_FILE
    meta = {"classes": json.dumps(list(classes)), "images": str(int(prior.get("images", 0)))}
    prior = {k: prior[k] for k in ("mean", "basis")}
    atomic.write_with(path, lambda tmp: save_file({k: v.contiguous() for k, v in prior.items()}, str(tmp), metadata=meta))
    return path


def load_prior(folder: str | Path, classes: Sequence[str], channels: int) -> dict[str, torch.Tensor] | None:
    """The checkpoint's start prior, or None when it has none; a file that does not match it is an error."""
    from safetensors import safe_open

    path = Path(folder) / PRIOR_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            prior = {k: fh.get_tensor(k) for k in ("mean", "basis")}
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise MedsynthError(f"{path} cannot be read ({exc}); rebuild it with 'medsynth start-prior'") from None
    k, d = prior["mean"].shape
    grid = int(round((d / channels) ** 0.5))
    if json.loads(meta.get("classes", "[]")) != list(classes) or grid * grid * channels != d:
        raise MedsynthError(f"{path} was made for other classes or channels than this checkpoint; rebuild it with "
                            "'medsynth start-prior --checkpoint ... --data TRAINING_FOLDER'")
    prior["grid"] = torch.tensor(grid)
    prior["images"] = torch.tensor(int(meta.get("images", "0") or 0))
    return prior


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log(alpha / sigma) per timestep, DPM-Solver's lambda."""
    a = alphas_cumprod.double()
    return (0.5 * (a.log() - (1 - a).log())).float()


def sampler_scheduler(name: str, config, start_log_snr: float = START_LOG_SNR):
    """A fresh scheduler of the named kind, built from the training scheduler's config.

    The values that shape the sampling trajectory are set explicitly: diffusers otherwise fills
    them from each class's defaults or not, depending on whether the config was just built or
    read back from disk, and the same seed would give different images. "trailing" timestep
    spacing starts few-step sampling at the last training step (Lin et al. 2023).
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    common = dict(timestep_spacing="trailing", steps_offset=0)
    if name == "ddpm":
        return DDPMScheduler.from_config(config, **common, variance_type="fixed_small")
    if name == "ddim":
        return DDIMScheduler.from_config(config, **common, clip_sample=True, set_alpha_to_one=False)
    if name in ("dpmpp", "dpmpp_sde"):
        # dpmpp: the deterministic DPM-Solver++ 2M (an ODE solver); dpmpp_sde: its stochastic SDE variant
        # (Lu et al. 2022), which adds fresh noise at every step like DDPM's ancestral sampler and,
        # like it, corrects more of an imperfect network's errors, at the same cost per step.
        # On the cosine schedule a_T is ~0, and DPM-Solver++'s data prediction x0 = (x - s eps) / sqrt(a)
        # explodes at the first steps: dynamic thresholding (Saharia et al. 2022; diffusers' advice for
        # pixel-space models) clips x0, and lambda_min_clipped skips the steps where log-SNR < start_log_snr.
        # Without both, samples saturate to salt-and-pepper noise or take random colours.
        return DPMSolverMultistepScheduler.from_config(
            config, **common, algorithm_type="dpmsolver++" if name == "dpmpp" else "sde-dpmsolver++",
            solver_order=2, thresholding=True,
            dynamic_thresholding_ratio=0.995, sample_max_value=1.0, lambda_min_clipped=start_log_snr,
            lower_order_final=True, final_sigmas_type="zero",
        )
    raise MedsynthError(f"unknown sampler {name!r}; expected one of: {', '.join(SAMPLERS)}")


def _pipeline_base():
    from diffusers import DiffusionPipeline

    return DiffusionPipeline


class ClassConditionalPipeline(_pipeline_base()):
    """Generate images of chosen classes: ``pipe(["glioma", "notumor"], num_inference_steps=20)``."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, domain: str = "", classes: list | None = None,
                 class_means: list | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # class_means[k][c]: the mean of channel c over class k's training images, in [-1, 1]; sampling
        # starts from it (see START_LOG_SNR). None (checkpoints from before it) starts from mid-grey.
        self.register_to_config(domain=domain, classes=list(classes or []),
                                class_means=[list(map(float, m)) for m in class_means] if class_means else None)

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    @property
    def null_class(self) -> int:
        return self.unet.config.num_class_embeds - 1

    def class_ids(self, labels: Sequence[int | str]) -> list[int]:
        ids = []
        for label in labels:
            if isinstance(label, str):
                if label not in self.classes:
                    raise MedsynthError(f"unknown class {label!r}; this model knows: {', '.join(self.classes)}")
                ids.append(self.classes.index(label))
            else:
                if not 0 <= int(label) < self.null_class:
                    raise MedsynthError(f"class index {label} out of range 0..{self.null_class - 1}")
                ids.append(int(label))
        return ids

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int | str],
        num_inference_steps: int = 20,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        sampler: str = "dpmpp",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        output_type: str = "np",
        start_log_snr: float = START_LOG_SNR,
        start_from: str = "mean",
    ):
        """Sample one image per label. Returns uint8 (N, H, W, C) for ``output_type="np"``,
        a float tensor in [0, 1] for ``"pt"``, or a list of PIL images for ``"pil"``.

        ``generator``: one torch.Generator, or one per image (then image i depends only on its
        own generator, whatever else is in the batch). ``callback(step, total, preview)`` gets the
        current estimate of the clean images, in [0, 1], after every step. ``start_log_snr``: the
        noisiest log-SNR that sampling starts at (see ``START_LOG_SNR``); lower starts earlier, from more noise.
        ``start_from``: what lies under the starting noise, "mean" or "prior" (see ``STARTS``).
        """
        from diffusers.utils.torch_utils import randn_tensor

        if int(num_inference_steps) < 1:
            raise MedsynthError(f"steps must be at least 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise MedsynthError(f"guidance scale must be >= 0, got {guidance_scale}")
        if output_type not in ("np", "pt", "pil"):
            raise MedsynthError(f"output_type must be np, pt or pil, got {output_type!r}")
        labels = torch.tensor(self.class_ids(class_labels), device=self.device, dtype=torch.long)
        if not -12.0 <= float(start_log_snr) <= 0.0:
            raise MedsynthError(f"start log-SNR must be in [-12, 0] (the default {START_LOG_SNR} starts at t = 858 of "
                                f"the cosine schedule; lower starts from more noise), got {start_log_snr}")
        if start_from not in STARTS:
            raise MedsynthError(f"start must be one of {', '.join(STARTS)}, got {start_from!r}")
        prior = getattr(self, "start_prior", None)
        if start_from == "prior" and prior is None:
            raise MedsynthError(f"this checkpoint has no {PRIOR_FILE}, so sampling cannot start from the coarse prior; "
                                "add it with 'medsynth start-prior --checkpoint CHECKPOINT --data TRAINING_FOLDER', "
                                "or start from the class mean")
        scheduler = sampler_scheduler(sampler, self.scheduler.config, start_log_snr)
        unet = self.unet
        size = unet.config.sample_size
        shape = (len(labels), unet.config.in_channels, size, size)
        alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device)
        # Every sampler lays `num_inference_steps` steps over the full schedule ("trailing": stride
        # 1000 / steps from t = 999) and skips those below start_log_snr, as DPM-Solver's
        # lambda_min_clipped does: 20 steps run 17, 25 run 22, ddpm's 1000 run 859.
        scheduler.set_timesteps(int(num_inference_steps), device=self.device)
        if sampler in ("ddpm", "ddim"):
            lam = log_snr(self.scheduler.alphas_cumprod)
            keep = lam[scheduler.timesteps.long().cpu()] >= start_log_snr
            scheduler.timesteps = scheduler.timesteps[keep.to(scheduler.timesteps.device)]
        # x_t0 ~ N(sqrt(a_t0) mean_k, (1 - a_t0) I): the marginal at the first timestep, up to the
        # image's own variation around its class mean, which is small against the noise there.
        a0 = alphas_cumprod[int(scheduler.timesteps[0])].float()
        x = randn_tensor(shape, generator=generator, device=self.device, dtype=unet.dtype)
        x = x * (1 - a0).sqrt()
        if start_from == "prior":
            # Each image's coarse draw comes from its own generator, after its noise, so the noise is the
            # same as with the mean start and image i still depends only on generator i.
            gens = generator if isinstance(generator, list) else [generator] * len(labels)
            basis, grid = prior["basis"].to(self.device, x.dtype), int(prior["grid"])
            coeff = torch.stack([  # drawn where the generator lives (CPU generators also drive GPU sampling)
                torch.randn(basis.shape[1], generator=g, device=g.device if g is not None else self.device,
                            dtype=torch.float32) for g in gens]).to(self.device, x.dtype)
            coarse = prior["mean"].to(self.device, x.dtype)[labels] + torch.einsum("nr,nrd->nd", coeff, basis[labels])
            coarse = coarse.reshape(len(labels), shape[1], grid, grid).clamp(-1, 1)
            coarse = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
            x = x + a0.sqrt() * coarse
        elif self.config.get("class_means"):
            means = torch.tensor(self.config["class_means"], device=self.device, dtype=x.dtype)
            x = x + a0.sqrt() * means[labels][:, :, None, None]
        guided = guidance_scale != 1.0
        null = torch.full_like(labels, self.null_class)
        total = len(scheduler.timesteps)
        for i, t in enumerate(scheduler.timesteps):
            model_in = scheduler.scale_model_input(x, t)
            if guided:
                # Conditional and unconditional predictions in one batched forward pass.
                both = unet(torch.cat([model_in, model_in]), t, class_labels=torch.cat([labels, null])).sample
                cond, uncond = both.chunk(2)
                # classifier-free guidance: out = out_uncond + w * (out_cond - out_uncond)
                out = uncond + guidance_scale * (cond - uncond)
            else:
                out = unet(model_in, t, class_labels=labels).sample
            if callback is not None:
                callback(i, total, self._predict_clean(x, out, t, alphas_cumprod))
            x = scheduler.step(out, t, x, generator=generator).prev_sample
        images = (x.float() / 2 + 0.5).clamp(0, 1)  # [-1, 1] -> [0, 1]
        if output_type == "pt":
            return images
        array = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        if output_type == "np":
            return array
        from PIL import Image

        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array]

    def _predict_clean(self, x: torch.Tensor, out: torch.Tensor, t, alphas_cumprod: torch.Tensor) -> torch.Tensor:
        """x0 estimate for previews: x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), or from v."""
        a = alphas_cumprod[int(t)].float()
        if self.scheduler.config.prediction_type == "v_prediction":
            x0 = a.sqrt() * x.float() - (1 - a).sqrt() * out.float()  # x0 = sqrt(a) x_t - sqrt(1 - a) v
        else:
            x0 = (x.float() - (1 - a).sqrt() * out.float()) / a.sqrt()
        return (x0 / 2 + 0.5).clamp(0, 1)


def quiet_diffusers() -> None:
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()
    dlogging.set_verbosity_error()


def load_pipeline(path: str | Path, device: str | torch.device = "cpu") -> ClassConditionalPipeline:
    """Load a diffusion checkpoint folder in float32 (fp16 storage is cast up); never uses the network.

    Args:
        path: the folder (``model_index.json``, ``unet/``, ``scheduler/``), e.g. ``checkpoints/brain_mri/diffusion``.
        device: where sampling runs.

    Returns:
        The :class:`ClassConditionalPipeline`: ``pipe(["glioma"], num_inference_steps=20, ...)`` returns
        uint8 images (N, S, S, C).

    Raises:
        MedsynthError: for a folder that is not a diffusion checkpoint, or damaged weights (naming the file).
    """
    from .hub import resolve

    path = resolve(path, "diffusion checkpoint")
    if not (path / "model_index.json").is_file():
        raise MedsynthError(
            f"{path} is not a diffusion checkpoint (no model_index.json); expected the folder written by "
            "train-diffusion (model_index.json, unet/, scheduler/)"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_diffusers()
    try:
        pipe = ClassConditionalPipeline.from_pretrained(str(path), dtype=torch.float32, local_files_only=True,
                                                        use_safetensors=True)  # never a pickled .bin
    except (OSError, ValueError) as exc:
        raise MedsynthError(f"{path}: diffusion checkpoint cannot be loaded ({exc})") from None
    pipe.set_progress_bar_config(disable=True)
    pipe.start_prior = load_prior(path, pipe.classes, pipe.unet.config.in_channels)
    if not pipe.config.get("class_means"):
        import warnings

        warnings.warn(f"{path} has no class_means (trained before medsynth recorded them), so sampling starts from "
                      f"mid-grey and colours come out wrong; add them with 'medsynth class-means --checkpoint {path} "
                      "--data TRAINING_FOLDER'", stacklevel=2)
    return pipe.to(device)


def save_staged(out: str | Path, unet: torch.nn.Module, dtype: torch.dtype | None,
                write: Callable[[torch.nn.Module, Path], None]) -> Path:
    """Write a pipeline folder atomically: ``write(unet, staging)`` fills a staging folder inside ``out`` (with the
    UNet cast to ``dtype`` if given), then each file moves into place with an atomic rename, ``model_index.json``
    last (a folder that has it is a complete checkpoint; readers rely on that). A crash leaves every file either
    old or new."""
    import shutil
    import tempfile

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        if dtype is not None and dtype != unet.dtype:
            cast = type(unet).from_config(unet.config)
            cast.load_state_dict(unet.state_dict())
            unet = cast.to(dtype)
        write(unet, staging)
        files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: (p.name == "model_index.json", str(p)))
        umask = os.umask(0)
        os.umask(umask)
        for file in files:
            os.chmod(file, 0o666 & ~umask)  # safetensors writes 0600; a checkpoint is as readable as any file
            target = out / file.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


#: The code file in every pipeline folder, so that plain diffusers loads it:
#: ``DiffusionPipeline.from_pretrained(DIR, custom_pipeline="medsynth_diffusion", trust_remote_code=True)``
#: (``medsynth_upsampler`` for an upsampler), locally or from the Hub. The class is medsynth's own
#: (``pip install medsynth``). ``model_index.json`` keeps the plain class name, so medsynth's own loader
#: never runs code from a checkpoint folder. One file name per pipeline kind: diffusers caches local
#: pipeline modules by file name.
PIPELINE_FILE = """\"\"\"diffusers entry point of a medsynth checkpoint: the pipeline class is medsynth's own.

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("THIS_FOLDER", custom_pipeline="{stem}", trust_remote_code=True)
\"\"\"
from medsynth.{module} import {name}  # noqa: F401  (pip install medsynth)
"""


def write_pipeline_file(folder: str | Path, module: str, name: str) -> None:
    """Write ``medsynth_<module>.py`` (``PIPELINE_FILE``) into a pipeline folder."""
    from . import atomic

    stem = f"medsynth_{module}"
    atomic.write_text(Path(folder) / f"{stem}.py", PIPELINE_FILE.format(module=module, name=name, stem=stem))


def save_pipeline(pipe: ClassConditionalPipeline, out: str | Path, dtype: torch.dtype | None = None) -> Path:
    """``save_pretrained`` through ``save_staged``: every file old or new after a crash;
    ``dtype=torch.float16`` halves the weights."""

    def write(unet, staging: Path) -> None:
        ClassConditionalPipeline(unet=unet, scheduler=pipe.scheduler, domain=pipe.config.domain,
                                 classes=pipe.classes, class_means=pipe.config.get("class_means")
                                 ).save_pretrained(staging, safe_serialization=True)
        if getattr(pipe, "start_prior", None) is not None:
            save_prior(pipe.start_prior, staging, pipe.classes)
        write_pipeline_file(staging, "diffusion", "ClassConditionalPipeline")

    return save_staged(out, pipe.unet, dtype, write)
