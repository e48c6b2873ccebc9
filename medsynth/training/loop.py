"""One training loop for medsynth's step-based trainers; each model kind brings only its objective.

The loop owns the machinery every trainer needs and that must be right once: accelerate (one process,
or several under ``accelerate launch`` / ``torchrun``), seeding, AdamW with warm-up and cosine decay,
gradient clipping, an EMA of the weights, logging, the time budget, atomic checkpoints and ``--resume``.
An :class:`Objective` says what one step computes (``loss``) and what a loadable export is
(``export``); ``train-diffusion`` and ``train-upsampler`` are such objectives.

Several processes: the learning-rate schedule advances once per optimiser step (it is not handed to
``accelerator.prepare``, whose wrapper would step it once per process and so run a 2-process run's
schedule twice as fast); each process draws its own noise (its seed is offset by its rank, as
``set_seed(..., device_specific=True)`` does), and the logged loss is the mean over processes.

Checkpoint layout (``OUT/checkpoints/step_NNNNNNN/``, written only by the main process, each file
atomically, ``state.json`` last so that only complete checkpoints are resumed): ``<model_file>``
(live weights), ``ema.safetensors`` (the average, by parameter name), ``optimizer.pt`` (tensors only,
read with ``weights_only=True``) and ``state.json`` (step, EMA step, schedule state, seconds so far).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import atomic
from .schedule import warmup_cosine

#: Seeds of different processes are this far apart, so that no two ranks draw the same noise.
RANK_SEED_STRIDE = 1_000_003


class Objective(Protocol):
    """What one kind of model adds to the loop."""

    model: torch.nn.Module

    def loss(self, batch, model: torch.nn.Module) -> torch.Tensor:
        """The scalar loss of one batch under ``model`` (the prepared, trainable one); noise comes from
        torch's global generator, which the loop seeds per process."""

    def export(self, averaged: torch.nn.Module, step: int, log_rows: list[dict], final: bool) -> None:
        """Write the loadable model (from the averaged weights), sample figures and the card. Main process only."""


@dataclass
class LoopState:
    """What a run has done so far; ``train`` returns it."""

    step: int = 0
    log_rows: list[dict] = field(default_factory=list)
    stop_reason: str = "reached --max-steps"
    seconds: float = 0.0
    resumed_at: list[int] = field(default_factory=list)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete ``OUT/checkpoints/step_*`` (one with ``state.json``), or None."""
    found = sorted((Path(out) / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    complete = [p for p in found if (p / "state.json").is_file()]
    return complete[-1] if complete else None


def resume_point(recipe, fixed: tuple[str, ...], kind: str) -> Path | None:
    """Where ``recipe.out`` continues from: its latest checkpoint under ``--resume`` (the options in ``fixed``
    must equal the run's ``args.json``), else None, refusing a folder that already holds a ``kind`` run."""
    from ..errors import MedsynthError

    out = Path(recipe.out)
    if not recipe.resume:
        if (out / "model_index.json").exists() or latest_checkpoint(out) is not None:
            raise MedsynthError(f"{out} already holds {kind} run; pass --resume to continue it or choose another --out")
        return None
    found = latest_checkpoint(out)
    if found is None:
        raise MedsynthError(f"--resume: {out} has no checkpoints/step_*/ to resume from; start without --resume")
    saved = json.loads((out / "args.json").read_text())
    for key in fixed:
        mine = getattr(recipe, key)
        mine = list(mine) if isinstance(mine, tuple) else mine
        if saved.get(key) != mine:
            raise MedsynthError(f"--resume: {key} was {saved.get(key)!r} in {out}/args.json but is {mine!r} now")
    return found


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed torch for the batches after ``step`` on process ``rank``: a resumed run does not replay the
    same noise, and no two processes draw the same (rank 0 of any run keeps ``seed + step``)."""
    torch.manual_seed(seed + step + RANK_SEED_STRIDE * rank)


def write_loss_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["step", "loss", "lr", "seconds"])
    writer.writeheader()
    for r in rows:
        writer.writerow({"step": int(r["step"]), "loss": f"{r['loss']:.6f}", "lr": f"{r['lr']:.6g}",
                         "seconds": f"{r['seconds']:.1f}"})
    atomic.write_text(path, buf.getvalue())


def read_loss_csv(path: Path, up_to_step: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as fh:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh) if int(float(r["step"])) <= up_to_step]


def train(objective: Objective, loader, recipe, out: Path, accelerator, resume_from: Path | None = None,
          model_file: str = "model.safetensors", on_step: Callable[[int], None] | None = None) -> LoopState:
    """Run ``objective`` over ``loader`` until ``recipe.max_steps`` or ``recipe.max_minutes``.

    ``recipe`` supplies lr, weight_decay, warmup_steps, max_steps, max_minutes, ema_decay, grad_clip, seed,
    log_every, sample_every, checkpoint_every, keep_checkpoints and progress. ``resume_from``: a checkpoint
    folder from :func:`latest_checkpoint`. The export runs at every sample/checkpoint step and at the end.
    """
    from diffusers.training_utils import EMAModel
    from safetensors.torch import load_file, save_file

    out = Path(out)
    main = accelerator.is_main_process
    show = recipe.progress and accelerator.is_local_main_process
    rank = accelerator.process_index
    started = time.time()
    model = objective.model
    ema = EMAModel(model.parameters(), decay=recipe.ema_decay, use_ema_warmup=True, power=2 / 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    # Stepped by hand once per optimiser step, on every process alike: not prepared (see the module docstring).
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.warmup_steps, recipe.max_steps))
    state = LoopState()
    if resume_from is not None:
        saved = json.loads((resume_from / "state.json").read_text())
        model.load_state_dict(load_file(str(resume_from / model_file)))
        ema_state = load_file(str(resume_from / "ema.safetensors"))
        ema.shadow_params = [ema_state[name].clone() for name, _ in model.named_parameters()]
        ema.optimization_step = saved["ema_optimization_step"]
        optimizer.load_state_dict(torch.load(resume_from / "optimizer.pt", map_location="cpu", weights_only=True))
        lr_scheduler.load_state_dict(saved["lr_scheduler"])
        state.step = saved["step"]
        state.log_rows = read_loss_csv(out / "loss.csv", state.step)
        started -= saved.get("seconds", 0.0)  # wall time accumulates across resumes
        if show:
            tqdm.write(f"resuming from {resume_from} at step {state.step}")
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    ema.to(accelerator.device)
    cpu = accelerator.device.type == "cpu"
    averaged = copy.deepcopy(accelerator.unwrap_model(model)).eval().to("cpu" if cpu else accelerator.device)

    def export(final: bool = False) -> None:
        if not main:
            return
        raw = accelerator.unwrap_model(model)
        names = [name for name, _ in raw.named_parameters()]
        ckpt = out / "checkpoints" / f"step_{state.step:07d}"
        ckpt.mkdir(parents=True, exist_ok=True)
        atomic.write_with(ckpt / model_file, lambda p: save_file(
            {k: v.detach().cpu().contiguous() for k, v in raw.state_dict().items()}, str(p)))
        atomic.write_with(ckpt / "ema.safetensors", lambda p: save_file(
            {n: t.detach().cpu().contiguous() for n, t in zip(names, ema.shadow_params)}, str(p)))
        inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        atomic.write_with(ckpt / "optimizer.pt", lambda p: torch.save(inner.state_dict(), p))
        atomic.write_json(ckpt / "state.json", {"step": state.step, "ema_optimization_step": ema.optimization_step,
                                                "lr_scheduler": lr_scheduler.state_dict(),
                                                "seconds": time.time() - started})
        for old in sorted((out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[:-recipe.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        ema.copy_to(averaged.parameters())
        write_loss_csv(out / "loss.csv", state.log_rows)
        objective.export(averaged, state.step, state.log_rows, final)

    bar = tqdm(total=recipe.max_steps, initial=state.step, desc=getattr(recipe, "name", "train"), unit="step",
               disable=not show)
    running: list[float] = []
    done = state.step >= recipe.max_steps
    while not done:
        seed_step(recipe.seed, state.step, rank)
        for batch in loader:
            model.train()
            with accelerator.autocast():
                loss = objective.loss(batch, model)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(accelerator.unwrap_model(model).parameters())
            state.step += 1
            running.append(accelerator.gather(loss.detach()[None]).mean().item())  # mean over processes
            bar.update(1)
            if on_step is not None:
                on_step(state.step)
            if state.step % recipe.log_every == 0:
                row = {"step": state.step, "loss": float(np.mean(running)), "lr": lr_scheduler.get_last_lr()[0],
                       "seconds": time.time() - started}
                state.log_rows.append(row)
                running.clear()
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                if main:
                    write_loss_csv(out / "loss.csv", state.log_rows)
            if main and recipe.max_minutes and (time.time() - started) / 60 >= recipe.max_minutes:
                accelerator.set_trigger()
            out_of_time = accelerator.check_trigger()
            if out_of_time:
                state.stop_reason = f"time budget of {recipe.max_minutes} minutes reached"
            if state.step >= recipe.max_steps or out_of_time:
                done = True
                break
            if state.step % recipe.checkpoint_every == 0 or state.step % recipe.sample_every == 0:
                accelerator.wait_for_everyone()
                export()
    bar.close()
    if running:
        state.log_rows.append({"step": state.step, "loss": float(np.mean(running)), "lr": lr_scheduler.get_last_lr()[0],
                               "seconds": time.time() - started})
    accelerator.wait_for_everyone()
    export(final=True)
    state.seconds = time.time() - started
    return state


def flips(domain) -> torch.nn.Module:
    """The domain's flips and quarter turns (only those its images allow), applied per image."""
    from torchvision.transforms import v2

    from ..transforms import RandomRot90

    aug = domain.augmentation
    steps = ([v2.RandomHorizontalFlip()] if aug.hflip else []) + ([v2.RandomVerticalFlip()] if aug.vflip else [])
    steps += [RandomRot90()] if aug.rot90 else []
    return torch.nn.Sequential(*steps)


def save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    atomic.write_with(path, lambda tmp: img.save(tmp, format="PNG"))
