"""Training the super-resolution stage of the cascade on real images (see ``medsynth.upsampler``).

Recipe: the domain's training images at the output resolution (``base_resolution * scale``, made square
as everywhere), the domain's flips; each image's low-resolution version made as the base generator's
training images were (bilinear with antialiasing, 8-bit levels), blurred for a share of the batch and
noised at a random conditioning level ``s`` in 0..max_noise_level, then enlarged (bicubic); a random
``crop`` x ``crop`` window of the pair trains the network (it is convolutional, so whole images work at
sampling). The network denoises the scaled residual ``residual_scale * (high - base)``, ``base`` being the
enlarged (blurred, not noised) low-resolution image (see ``medsynth.upsampler``). v-prediction on the cosine schedule with Min-SNR-gamma weights; EMA; AdamW with warm-up and
cosine decay; all of it the shared loop's (``training.loop``). The split is ``train-diffusion``'s with the
same ``--val-fraction`` and ``--seed``, so the base generator's held-out images stay unseen here too.

The output folder is at every checkpoint a loadable upsampler (``model_index.json``, ``unet/``,
``scheduler/``) plus ``loss.csv``, ``samples/step_*.png`` (held-out images: bicubic | stage | original),
``args.json``, ``split.json``, a model card and ``checkpoints/step_*/`` for ``--resume``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .. import atomic
from ..data import ArrayDataset, load_resized, scan_dataset, stratified_split
from ..diffusion import make_noise_scheduler
from ..domains import get_domain
from ..hardware import describe, make_accelerator
from ..recipes import UpsamplerRecipe
from ..transforms import ToSymmetric
from ..upsampler import UpsamplerPipeline, create_upsampler_unet, degrade, enlarge, save_upsampler, shrink
from .loop import flips, resume_point, save_png, train
from .schedule import min_snr_weights

#: Recorded options that ``--resume`` may not change (they define the network or its inputs).
FIXED_ON_RESUME = ("domain", "scale", "base_resolution", "block_out_channels", "layers_per_block", "prediction_type",
                   "target", "residual_scale")


def random_blur(low: torch.Tensor, share: float) -> torch.Tensor:
    """Blur a random ``share`` of the images with a Gaussian of sigma uniform in [0.4, 1.0] px."""
    from torchvision.transforms.v2 import functional as TF

    if share <= 0:
        return low
    out = low.clone()
    chosen = torch.nonzero(torch.rand(len(low)) < share).flatten().tolist()
    for i in chosen:
        sigma = float(torch.empty(()).uniform_(0.4, 1.0))
        out[i] = TF.gaussian_blur(low[i], kernel_size=[5, 5], sigma=[sigma, sigma])
    return out


def random_crops(high: torch.Tensor, up: torch.Tensor, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``crop`` x ``crop`` window of each (target, enlarged input) pair."""
    n, _, h, w = high.shape
    if crop >= h and crop >= w:
        return high, up
    top = torch.randint(0, h - crop + 1, (n,)).tolist()
    left = torch.randint(0, w - crop + 1, (n,)).tolist()
    hs = torch.stack([high[i, :, y:y + crop, x:x + crop] for i, (y, x) in enumerate(zip(top, left))])
    us = torch.stack([up[i, :, y:y + crop, x:x + crop] for i, (y, x) in enumerate(zip(top, left))])
    return hs, us


class UpsamplerObjective:
    """One step: degrade the low-resolution input, crop, noise the target, predict v (or epsilon)."""

    def __init__(self, model, recipe: UpsamplerRecipe, noise_scheduler, export):
        self.model = model
        self.recipe = recipe
        self.noise_scheduler = noise_scheduler
        self.alphas_cumprod = noise_scheduler.alphas_cumprod
        self.export = export

    def inputs(self, high: torch.Tensor, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For targets ``high`` in [-1, 1]: the enlarged low-resolution image (shrunk, blurred for a share)
        and the network's conditioning channels (the same, also noised at ``levels`` before enlarging)."""
        low = random_blur(shrink(high, self.recipe.scale), self.recipe.blur)
        base = enlarge(low, self.recipe.scale)
        return base, enlarge(degrade(low, levels, torch.randn_like(low)), self.recipe.scale)

    def loss(self, batch, model) -> torch.Tensor:
        high, _ = batch
        r = self.recipe
        levels = torch.randint(0, r.max_noise_level + 1, (high.shape[0],), device=high.device)  # s ~ U{0..max}
        base, up = self.inputs(high, levels)
        # the diffused quantity: r = residual_scale * (high - base), or the image itself
        target_image = (high - base) * r.residual_scale if r.target == "residual" else high
        x0, cond = random_crops(target_image, up, r.crop)
        noise = torch.randn_like(x0)  # eps ~ N(0, I)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)  # x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
        target = noise if r.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(x0, noise, t)
        pred = model(torch.cat([x_t, cond], dim=1), t, class_labels=levels).sample
        mse = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
        if r.snr_gamma > 0:
            mse = mse * min_snr_weights(self.alphas_cumprod.to(t.device), t, r.snr_gamma, r.prediction_type)
        return mse.mean()


def comparison_grid(pipe: UpsamplerPipeline, high: np.ndarray, seed: int = 0) -> np.ndarray:
    """For each uint8 (S, S, C) image of ``high``: bicubic | stage | original, one row each, 2-px gaps."""
    scale = pipe.scale
    t = torch.from_numpy(high.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1
    low = shrink(t, scale)
    low_u8 = ((low + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    bicubic = ((enlarge(low, scale) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(high))]
    stage = pipe(low_u8, generator=generators)
    n, s, _, c = high.shape
    gap = 2
    grid = np.full((n * (s + gap) - gap, 3 * (s + gap) - gap, c), 255, dtype=np.uint8)
    for r in range(n):
        for col, img in enumerate((bicubic[r], stage[r], high[r])):
            grid[r * (s + gap): r * (s + gap) + s, col * (s + gap): col * (s + gap) + s] = img
    return grid


def train_upsampler(recipe: UpsamplerRecipe) -> dict:
    """Train (or, with ``recipe.resume``, continue) a super-resolution stage; returns the run summary."""
    from accelerate.utils import set_seed

    recipe.validate()
    domain = get_domain(recipe.domain)
    out = Path(recipe.out)
    atomic.check_writable(out, need_mb=200, option="--out")
    resume_from = resume_point(recipe, FIXED_ON_RESUME, "an upsampler")

    accelerator = make_accelerator(recipe.device, recipe.mixed_precision)
    main = accelerator.is_main_process
    show = recipe.progress and accelerator.is_local_main_process
    set_seed(recipe.seed)
    started = time.time()
    size = recipe.output_resolution
    samples = scan_dataset(recipe.data, domain.classes, require_all=True)
    train_samples, val_samples = stratified_split(samples, recipe.val_fraction, recipe.seed)
    images = load_resized(train_samples, domain.channels, size, show, "loading training images")
    val_show = load_resized((val_samples or train_samples)[:: max(1, len(val_samples or train_samples) // 4)][:4],
                            domain.channels, size, False)
    dataset = ArrayDataset(images, [s.label for s in train_samples], torch.nn.Sequential(flips(domain), ToSymmetric()))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=recipe.batch_size, shuffle=True, drop_last=len(dataset) >= recipe.batch_size,
        num_workers=recipe.num_workers, generator=torch.Generator().manual_seed(recipe.seed),
    )
    unet = create_upsampler_unet(domain.channels, recipe.block_out_channels, recipe.layers_per_block, size)
    noise_scheduler = make_noise_scheduler(recipe.prediction_type)
    hardware = describe(accelerator.device, accelerator.num_processes)
    out.mkdir(parents=True, exist_ok=True)
    resumed_at = []
    if resume_from is not None:
        resumed_at = json.loads((out / "args.json").read_text()).get("resumed_at_steps", [])
        resumed_at += [json.loads((resume_from / "state.json").read_text())["step"]]
    if main:
        atomic.write_json(out / "args.json", {**asdict(recipe), **({"resumed_at_steps": resumed_at} if resumed_at else {})})
    if main and resume_from is None:
        atomic.write_json(out / "split.json", {"train": [str(s.path) for s in train_samples],
                                               "val": [str(s.path) for s in val_samples]})
    settings = dict(domain=domain.key, scale=recipe.scale, base_resolution=recipe.base_resolution,
                    max_noise_level=recipe.max_noise_level, target=recipe.target, residual_scale=recipe.residual_scale)

    def export(averaged, step: int, log_rows: list[dict], final: bool) -> None:
        # The recommended sampling settings of an earlier export (set by 'medsynth upsampler-settings'
        # after measuring) survive re-exports.
        previous = json.loads((out / "model_index.json").read_text()) if (out / "model_index.json").is_file() else {}
        kept = {k: previous[k] for k in ("noise_level", "num_inference_steps", "sampler", "start_log_snr") if k in previous}
        pipe = UpsamplerPipeline(unet=averaged, scheduler=noise_scheduler, **settings, **kept)
        save_upsampler(pipe, out, torch.float16 if recipe.save_dtype == "fp16" else None)
        grid = comparison_grid(pipe, val_show)
        save_png(grid, out / "samples" / f"step_{step:07d}.png")
        save_png(grid, out / "sample_grid.png")
        from ..cards.render import replace_section, upsampler_card

        card = upsampler_card(domain, recipe, {
            "step": step, "seconds": time.time() - started, "hardware": hardware, "n_train": len(train_samples),
            "n_val": len(val_samples), "parameters": sum(p.numel() for p in averaged.parameters()), "final": final,
            "resumed_at_steps": resumed_at, "sampling": pipe.sampling_settings(),
        }, log_rows)
        # sections measured after training (benchmarks/upsampler.py card) survive a resumed run's re-export
        previous = (out / "README.md").read_text() if (out / "README.md").is_file() else ""
        for heading in ("## Measured against bicubic enlargement",):
            start = previous.find(heading + "\n")
            if start >= 0:
                end = previous.find("\n## ", start + len(heading))
                card = replace_section(card, heading, previous[start:end + 1 if end >= 0 else None])
        atomic.write_text(out / "README.md", card)

    objective = UpsamplerObjective(unet, recipe, noise_scheduler, export)
    state = train(objective, loader, recipe, out, accelerator, resume_from, model_file="unet.safetensors")
    summary = {"out": str(out), "steps": state.step, "stop_reason": state.stop_reason, "seconds": state.seconds,
               "hardware": hardware, "n_train": len(train_samples), "n_val": len(val_samples),
               "final_loss": state.log_rows[-1]["loss"] if state.log_rows else None, "resolution": size,
               "resumed_at_steps": resumed_at}
    if main:
        atomic.write_json(out / "train_summary.json", summary)
    accelerator.end_training()
    return summary
