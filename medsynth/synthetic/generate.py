"""Writing generated images to disk: a flat set for one class, or a labelled ``<class>/`` dataset.

Image i of a run uses the seed ``seed + i`` (its own generator), so a file can be regenerated on
its own from its class and seed; both are listed in ``labels.csv``. With a second stage (the cascade's
upsampler) the base image is enlarged with a fresh generator of the same seed, so ``upsample --seed``
on a base image written alone reproduces the cascade's file.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .. import atomic
from ..diffusion import START_LOG_SNR, ClassConditionalPipeline
from ..errors import MedsynthError


def generate_to_folder(
    pipe: ClassConditionalPipeline,
    jobs: Sequence[tuple[str, int]],
    out: str | Path,
    sampler: str = "dpmpp",
    steps: int = 20,
    guidance: float = 1.0,
    batch_size: int = 16,
    labelled: bool = False,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    labels_name: str = "labels.csv",
    start_log_snr: float = START_LOG_SNR,
    start_from: str = "mean",
    upsampler=None,
    upsample: dict | None = None,
    checkpoint: str | Path | None = None,
    upsampler_path: str | Path | None = None,
) -> dict:
    """Generate one image per (class name, seed) job and save PNGs; returns the summary of docs/cli.md.

    ``upsampler``: an ``UpsamplerPipeline`` that enlarges every base image (the cascade), with
    ``upsample`` = {"num_inference_steps", "noise_level"} (None: the checkpoint's recommended values).

    ``labelled``: write ``out/<class>/<class>_<seed>.png`` (a dataset for train-classifier),
    else ``out/<class>_<seed>.png``. ``labels.csv`` (file, class, seed) lists every image. Every PNG is
    marked as synthetic (``synthetic.marking``: IPTC trainedAlgorithmicMedia and the generation settings,
    ``checkpoint`` and ``upsampler_path`` naming the models).
    """
    from .marking import save_marked_png

    if batch_size < 1:
        raise MedsynthError(f"batch size must be at least 1, got {batch_size}")
    pipe.class_ids([c for c, _ in jobs])  # fail on an unknown class before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    rows: list[tuple[str, str, int]] = []
    started = time.time()
    stage = f" + upsampler x{upsampler.scale}" if upsampler is not None else ""
    settings = upsample or {}
    marks = dict(generator=str(checkpoint) if checkpoint else None, domain=pipe.config.get("domain") or None,
                 sampler=sampler, steps=int(steps), guidance=float(guidance), start=start_from,
                 resolution=int(pipe.unet.config.sample_size) * (upsampler.scale if upsampler is not None else 1),
                 upsampler=str(upsampler_path or "upsampler") if upsampler is not None else None,
                 upsample_steps=settings.get("num_inference_steps", upsampler.config.num_inference_steps)
                 if upsampler is not None else None,
                 upsample_noise=settings.get("noise_level", upsampler.config.noise_level) if upsampler is not None else None)
    bar = tqdm(total=len(jobs), desc=f"generating ({sampler}, {steps} steps{stage})", unit="img", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed) for _, seed in chunk]
        images = pipe([c for c, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                      generator=generators, sampler=sampler, start_log_snr=start_log_snr,
                      start_from=start_from)
        if upsampler is not None:
            stage_generators = [torch.Generator().manual_seed(seed) for _, seed in chunk]
            images = upsampler(images, generator=stage_generators, **(upsample or {}))
        for (cls, seed), array in zip(chunk, images):
            rel = Path(cls) / f"{cls}_{seed:06d}.png" if labelled else Path(f"{cls}_{seed:06d}.png")
            save_marked_png(array, out / rel, **marks, **{"class": cls, "seed": seed})
            files.append(str(out / rel))
            rows.append((str(rel), cls, seed))
        bar.update(len(chunk))
        if on_batch is not None:
            on_batch(len(files), len(jobs))
    bar.close()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "class", "seed"])
    writer.writerows(rows)
    atomic.write_text(out / labels_name, buf.getvalue())
    seconds = time.time() - started
    return {"n": len(files), "seconds": round(seconds, 3),
            "images_per_second": round(len(files) / seconds, 4) if seconds > 0 else None, "files": files}


def merge_label_files(out: str | Path, parts: Sequence[str | Path]) -> None:
    """Join per-process ``labels.<rank>.csv`` files into one ``labels.csv`` (header once, rank order)."""
    rows: list[str] = []
    for part in parts:
        lines = Path(part).read_text().splitlines()
        rows.extend(lines[1:])
        Path(part).unlink()
    rows.sort(key=lambda row: int(row.rsplit(",", 1)[1]))  # seed order, as a single process writes it
    atomic.write_text(Path(out) / "labels.csv", "file,class,seed\n" + "".join(r + "\n" for r in rows))


def plan_jobs(classes: Sequence[str], *, cls: str | None = None, n: int = 0, n_per_class: int | None = None,
              seed: int = 0) -> list[tuple[str, int]]:
    """The (class, seed) of every image a ``generate`` run draws.

    Args:
        classes: the checkpoint's class names.
        cls, n: ``n`` images of one class, seeds ``seed .. seed + n - 1``.
        n_per_class: instead, a labelled set: class i takes seeds ``seed + i * n_per_class + j``.
        seed: the first seed.

    Returns:
        One (class name, seed) per image, in file order.
    """
    if n_per_class is not None:
        if cls is not None:
            raise MedsynthError("give either --class (with --n) or --n-per-class, not both")
        return [(c, seed + i * n_per_class + j) for i, c in enumerate(classes) for j in range(n_per_class)]
    if cls is None:
        raise MedsynthError(f"--class is required (one of: {', '.join(classes)}), or use --n-per-class")
    return [(cls, seed + j) for j in range(n)]


def generate_set(pipe: ClassConditionalPipeline, jobs: Sequence[tuple[str, int]], out: str | Path, *,
                 checkpoint: str | Path, sampler: str, steps: int, guidance: float, batch_size: int,
                 start_log_snr: float, start_from: str, labelled: bool, seed: int, n_per_class: int | None,
                 cpu: bool = False, progress: bool = True, upsampler=None, upsample: dict | None = None,
                 upsampler_path: str | Path | None = None) -> dict | None:
    """Draw ``jobs`` into ``out``, sharded over the processes of ``accelerate launch`` / ``torchrun`` when
    there are several (each takes every world-th image; the first one merges the label files), and write
    the set's ``generation.json`` for a labelled set.

    Returns:
        The run summary (see :func:`generate_to_folder`) on the first process; None on the others.
    """
    from .provenance import write_provenance

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        from accelerate import PartialState

        state = PartialState(cpu=cpu or not torch.cuda.is_available())
        pipe.to(state.device)
        if upsampler is not None:
            upsampler.to(state.device)
        summary = generate_to_folder(pipe, jobs[state.process_index :: world], out, sampler, steps, guidance,
                                     batch_size, labelled=labelled, progress=progress and state.is_main_process,
                                     labels_name=f"labels.{state.process_index}.csv", start_log_snr=start_log_snr,
                                     start_from=start_from, upsampler=upsampler, upsample=upsample,
                                     checkpoint=checkpoint, upsampler_path=upsampler_path)
        state.wait_for_everyone()
        if not state.is_main_process:
            return None
        merge_label_files(out, [Path(out) / f"labels.{r}.csv" for r in range(world)])
        summary["n"] = len(jobs)
        summary["files"] = [str(Path(out) / line.split(",")[0]) for line in
                            (Path(out) / "labels.csv").read_text().splitlines()[1:]]
        summary["images_per_second"] = round(len(jobs) / summary["seconds"], 4) if summary["seconds"] else None
    else:
        summary = generate_to_folder(pipe, jobs, out, sampler, steps, guidance, batch_size, labelled=labelled,
                                     progress=progress, start_log_snr=start_log_snr, start_from=start_from,
                                     upsampler=upsampler, upsample=upsample, checkpoint=checkpoint,
                                     upsampler_path=upsampler_path)
    stage = None
    if upsampler is not None:
        from ..upsampler import upsample_settings

        stage = upsample_settings(upsampler, upsampler_path or "upsampler", **{
            "steps": (upsample or {}).get("num_inference_steps"), "noise_level": (upsample or {}).get("noise_level")})
        summary["resolution"] = stage["resolution"]
        summary["upsampler"] = stage
    else:
        summary["resolution"] = int(pipe.unet.config.sample_size)
    if labelled:  # provenance of a synthetic dataset; train-classifier puts it on its card
        write_provenance(out, checkpoint, pipe, n_per_class=n_per_class, sampler=sampler, steps=steps,
                         guidance=guidance, seed=seed, start_log_snr=start_log_snr, start_from=start_from,
                         seconds=summary["seconds"], upsampler=stage)
    return summary
