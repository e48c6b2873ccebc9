"""Training the class-conditional diffusion model on a labelled image folder.

Recipe: images made square (edge padding) at the training resolution and scaled to [-1, 1];
flips/turns only where the domain allows them; DDPM forward process with the cosine schedule;
epsilon- or v-prediction; Min-SNR-gamma loss weighting (Hang et al. 2023), which converges
several times faster than the plain MSE on small data; ~10 % of labels replaced by the "no class"
index so that one network also learns the unconditional model used by classifier-free guidance;
AdamW with linear warm-up and cosine decay; gradient clipping; an EMA of the weights (the shipped
weights are the EMA ones); mixed precision on GPUs only.

The output folder is at every checkpoint a loadable pipeline (``model_index.json``, ``unet/``,
``scheduler/``) plus ``loss.csv``, ``samples/step_*.png`` grids, ``args.json``, a model card
``README.md`` and ``checkpoints/step_*/`` training states for ``--resume``. Everything is written
atomically. ``accelerate launch -m medsynth train-diffusion ...`` runs it on several GPUs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import atomic
from ..cards.render import base_run
from ..data import ArrayDataset, load_resized, scan_dataset, stratified_split
from ..diffusion import (
    PRIOR_GRID,
    ClassConditionalPipeline,
    coarse_prior,
    create_unet,
    make_noise_scheduler,
    save_pipeline,
    save_prior,
)
from ..domains import get_domain
from ..errors import MedsynthError
from ..hardware import describe, make_accelerator
from ..recipes import DiffusionRecipe
from ..transforms import ToSymmetric
from .loop import flips, resume_point, save_png, train
from .schedule import min_snr_weights


def class_means(images: np.ndarray, labels: Sequence[int], num_classes: int) -> list[list[float]]:
    """Per class, the mean of each channel over uint8 (N, H, W, C) training images, in [-1, 1]
    (what sampling starts from, see ``diffusion.START_LOG_SNR``). A class without images gets 0."""
    labels = np.asarray(labels)
    out = []
    for k in range(num_classes):
        chosen = images[labels == k]
        mean = chosen.reshape(-1, images.shape[-1]).mean(0, dtype=np.float64) if len(chosen) else np.full(images.shape[-1], 127.5)
        out.append([float(v) / 127.5 - 1 for v in mean])
    return out


def _training_images(checkpoint: str | Path, data: str | Path, show: bool):
    """The images a diffusion checkpoint trained on, at its resolution: (model_index, classes, images,
    labels, whether split.json chose them)."""
    checkpoint = Path(checkpoint)
    index_file, unet_file = checkpoint / "model_index.json", checkpoint / "unet" / "config.json"
    if not (index_file.is_file() and unet_file.is_file()):
        raise MedsynthError(f"{checkpoint} is not a diffusion checkpoint (no model_index.json and unet/config.json); "
                            "expected the folder written by train-diffusion")
    index, unet_config = json.loads(index_file.read_text()), json.loads(unet_file.read_text())
    classes = list(index.get("classes") or [])
    if not classes:
        raise MedsynthError(f"{index_file} names no classes; it was not written by medsynth train-diffusion")
    samples = scan_dataset(data, classes, require_all=True)
    split_file = checkpoint / "split.json"
    used_split = split_file.is_file()
    if used_split:
        trained = {(Path(p).parent.name, Path(p).name) for p in json.loads(split_file.read_text())["train"]}
        samples = [s for s in samples if (classes[s.label], s.path.name) in trained]
        missing = sorted({classes[k] for k in range(len(classes))} - {classes[s.label] for s in samples})
        if missing:
            raise MedsynthError(
                f"{data}: none of the training images that {split_file} lists for class {missing[0]!r} are there; "
                "pass the folder this model was trained on"
            )
    images = load_resized(samples, unet_config["in_channels"], unet_config["sample_size"], show, "reading training images")
    return index, classes, images, [s.label for s in samples], used_split


def add_class_means(checkpoint: str | Path, data: str | Path, show: bool = False) -> dict:
    """Record ``class_means`` in a diffusion checkpoint trained before train-diffusion wrote them.

    ``data`` is the labelled folder the model trained on. When the checkpoint has ``split.json``,
    only its training images count, matched by class folder and file name, so a dataset that has
    moved since still works. Rewrites ``model_index.json`` atomically; returns a summary.
    """
    index, classes, images, labels, used_split = _training_images(checkpoint, data, show)
    means = class_means(images, labels, len(classes))
    index["class_means"] = means
    atomic.write_json(Path(checkpoint) / "model_index.json", index)
    return {"checkpoint": str(checkpoint), "images": len(labels), "from_split": used_split,
            "class_means": dict(zip(classes, means))}


def add_start_prior(checkpoint: str | Path, data: str | Path, show: bool = False) -> dict:
    """Write ``start_prior.safetensors`` (see ``diffusion.STARTS``) into a diffusion checkpoint trained
    before train-diffusion wrote it, from the images it trained on (those its ``split.json`` lists)."""
    _, classes, images, labels, used_split = _training_images(checkpoint, data, show)
    prior = coarse_prior(images, labels, len(classes))
    path = save_prior(prior, checkpoint, classes)
    counts = np.bincount(labels, minlength=len(classes))
    return {"checkpoint": str(checkpoint), "file": str(path), "images": len(labels), "from_split": used_split,
            "grid": int(prior["grid"]), "class_counts": dict(zip(classes, map(int, counts)))}


def sample_grid(pipe: ClassConditionalPipeline, per_class: int = 4, seed: int = 0, steps: int = 25) -> np.ndarray:
    """One row per class, ``per_class`` columns, fixed seeds, SDE-DPM-Solver++ without guidance:
    uint8 (rows*S, cols*S, C) with 2-px gaps."""
    labels = [c for c in range(len(pipe.classes)) for _ in range(per_class)]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(labels))]
    images = pipe(labels, num_inference_steps=steps, generator=generators, sampler="dpmpp_sde")
    n, s, _, c = images.shape
    rows, gap = len(pipe.classes), 2
    grid = np.full((rows * (s + gap) - gap, per_class * (s + gap) - gap, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, per_class)
        grid[r * (s + gap) : r * (s + gap) + s, col * (s + gap) : col * (s + gap) + s] = img
    return grid


#: Recorded options that ``--resume`` may not change (they define the network or its inputs).
FIXED_ON_RESUME = ("domain", "preset", "resolution", "block_out_channels", "layers_per_block", "prediction_type")


class DiffusionObjective:
    """One step of the class-conditional model: drop ~10 % of labels to "no class", noise, predict, weight."""

    def __init__(self, model, recipe: DiffusionRecipe, noise_scheduler, null_class: int, export):
        self.model = model
        self.recipe = recipe
        self.noise_scheduler = noise_scheduler
        self.null_class = null_class
        self.export = export

    def loss(self, batch, model) -> torch.Tensor:
        x, y = batch
        r = self.recipe
        noise = torch.randn_like(x)  # eps ~ N(0, I)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x.shape[0],), device=x.device)
        drop = torch.rand(x.shape[0], device=x.device) < r.class_dropout
        labels = torch.where(drop, torch.full_like(y, self.null_class), y)
        x_t = self.noise_scheduler.add_noise(x, noise, t)  # x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
        target = noise if r.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(x, noise, t)
        pred = model(x_t, t, class_labels=labels).sample
        mse = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
        if r.snr_gamma > 0:
            mse = mse * min_snr_weights(self.noise_scheduler.alphas_cumprod.to(t.device), t, r.snr_gamma,
                                        r.prediction_type)
        return mse.mean()


def train_diffusion(recipe: DiffusionRecipe) -> dict:
    from accelerate.utils import set_seed

    recipe.validate()
    domain = get_domain(recipe.domain)
    out = Path(recipe.out)
    # two training states (weights, average, optimiser) and the exported pipeline, with room to spare
    atomic.check_writable(out, need_mb={"tiny": 20, "cpu": 300}.get(recipe.preset, 1500), option="--out")
    base_unet = None
    if recipe.init_from and not recipe.resume:
        from ..diffusion import load_pipeline

        base = load_pipeline(recipe.init_from)
        if base.classes != list(domain.classes) or base.unet.config.in_channels != domain.channels:
            raise MedsynthError(f"--init-from {recipe.init_from}: its classes {base.classes} do not match domain "
                                f"{domain.key} ({', '.join(domain.classes)})")
        base_unet = base.unet
        recipe.resolution = base_unet.config.sample_size  # fine-tuning keeps the base's resolution
    resolution = recipe.training_resolution
    base = base_run(recipe.init_from)  # the run this one continues, for the card's totals
    resume_from = resume_point(recipe, FIXED_ON_RESUME, "a diffusion")

    accelerator = make_accelerator(recipe.device, recipe.mixed_precision)
    main = accelerator.is_main_process
    show = recipe.progress and accelerator.is_local_main_process
    set_seed(recipe.seed)
    started = time.time()

    samples = scan_dataset(recipe.data, domain.classes, require_all=True)
    train_samples, val_samples = stratified_split(samples, recipe.val_fraction, recipe.seed)
    images = load_resized(train_samples, domain.channels, resolution, show, "loading training images")
    counts = np.bincount([s.label for s in train_samples], minlength=domain.num_classes)
    means = class_means(images, [s.label for s in train_samples], domain.num_classes)
    start_prior = coarse_prior(images, [s.label for s in train_samples], domain.num_classes) \
        if resolution % PRIOR_GRID == 0 else None
    dataset = ArrayDataset(images, [s.label for s in train_samples], torch.nn.Sequential(flips(domain), ToSymmetric()))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=recipe.batch_size, shuffle=True, drop_last=len(dataset) >= recipe.batch_size,
        num_workers=recipe.num_workers, generator=torch.Generator().manual_seed(recipe.seed),
    )

    overrides = dict(resolution=resolution, block_out_channels=recipe.block_out_channels,
                     layers_per_block=recipe.layers_per_block)
    if base_unet is not None:
        unet = type(base_unet).from_config(base_unet.config)
        unet.load_state_dict(base_unet.state_dict())
    else:
        unet = create_unet(recipe.preset, domain.num_classes, domain.channels, **overrides)
    noise_scheduler = make_noise_scheduler(recipe.prediction_type)
    hardware = describe(accelerator.device, accelerator.num_processes)

    out.mkdir(parents=True, exist_ok=True)
    resumed_at = []
    if resume_from is not None:  # the steps at which earlier invocations of this run were resumed
        resumed_at = json.loads((out / "args.json").read_text()).get("resumed_at_steps", [])
        resumed_at += [json.loads((resume_from / "state.json").read_text())["step"]]
    if main:
        # args.json is the latest invocation (a resume may change --max-steps or --max-minutes), so the
        # shipped recipe and a rebuilt card say what actually ran; resumed_at_steps keeps the history.
        atomic.write_json(out / "args.json", {**asdict(recipe), **({"resumed_at_steps": resumed_at} if resumed_at else {})})
    if main and resume_from is None:
        atomic.write_json(out / "split.json", {"train": [str(s.path) for s in train_samples],
                                               "val": [str(s.path) for s in val_samples]})

    def export(averaged, step: int, log_rows: list[dict], final: bool) -> None:
        """The EMA pipeline, the sample grid and the card."""
        pipe = ClassConditionalPipeline(unet=averaged, scheduler=noise_scheduler, domain=domain.key,
                                        classes=list(domain.classes), class_means=means)
        pipe.start_prior = start_prior
        save_pipeline(pipe, out, torch.float16 if recipe.save_dtype == "fp16" else None)
        grid = sample_grid(pipe)
        save_png(grid, out / "samples" / f"step_{step:07d}.png")
        save_png(grid, out / "sample_grid.png")
        from ..cards.render import diffusion_card

        atomic.write_text(out / "README.md", diffusion_card(domain, recipe, {
            "step": step, "seconds": time.time() - started, "hardware": hardware, "n_train": len(train_samples),
            "n_val": len(val_samples), "train_class_counts": dict(zip(domain.classes, counts.tolist())),
            "parameters": sum(p.numel() for p in averaged.parameters()), "final": final, "base": base,
            "resumed_at_steps": resumed_at,
        }, log_rows))

    objective = DiffusionObjective(unet, recipe, noise_scheduler, domain.num_classes, export)
    state = train(objective, loader, recipe, out, accelerator, resume_from, model_file="unet.safetensors")
    summary = {"out": str(out), "steps": state.step, "stop_reason": state.stop_reason, "seconds": state.seconds,
               "hardware": hardware, "n_train": len(train_samples), "n_val": len(val_samples),
               "final_loss": state.log_rows[-1]["loss"] if state.log_rows else None, "resolution": resolution,
               "base": base, "resumed_at_steps": resumed_at}
    if main:
        atomic.write_json(out / "train_summary.json", summary)
    accelerator.end_training()
    return summary
