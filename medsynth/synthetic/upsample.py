"""Enlarging existing images with the cascade's second stage: files, flat folders, labelled sets.

Each input is a file or a folder. A folder with ``<class>/`` sub-folders keeps that layout in the output
(a labelled synthetic set stays one, and its ``generation.json`` gains the stage's record); a flat
folder's images land side by side. Image i takes seed ``seed + i``, except in a folder written by
``generate``, whose ``labels.csv`` gives each image its own seed: then the stage draws exactly what
``generate`` with the same upsampler writes for that seed.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import atomic
from ..data import list_images
from ..errors import MedsynthError
from ..io import load_image
from .provenance import PROVENANCE, read_provenance, write_record


def _recorded_seeds(folder: Path) -> dict[str, int]:
    """file (relative to ``folder``) -> seed, from a ``labels.csv`` written by generate."""
    path = folder / "labels.csv"
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as fh:
            return {row["file"]: int(row["seed"]) for row in csv.DictReader(fh) if row.get("file") and row.get("seed")}
    except (OSError, ValueError, KeyError):
        return {}


def plan_inputs(inputs: Sequence[str | Path], seed: int = 0) -> list[tuple[Path, Path, int]]:
    """(source file, output path relative to OUT, seed) for every image the inputs hold, in order."""
    plan: list[tuple[Path, Path, int]] = []
    for given in inputs:
        src = Path(given)
        if src.is_file():
            plan.append((src, Path(src.stem + ".png"), None))
        elif src.is_dir():
            seeds = _recorded_seeds(src)
            subdirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
            found = [(f, Path(d.name) / (f.stem + ".png")) for d in subdirs for f in list_images(d)]
            found += [(f, Path(f.stem + ".png")) for f in list_images(src)]
            if not found:
                raise MedsynthError(f"{src}: no images found (expected image files, or <class>/ folders of them)")
            for f, rel in found:
                plan.append((f, rel, seeds.get(str(f.relative_to(src)))))
        else:
            raise MedsynthError(f"{src}: no such file or folder")
    names = [rel for _, rel, _ in plan]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise MedsynthError(f"two inputs would both be written as {dup}; upsample them into separate --out folders")
    return [(f, rel, s if s is not None else seed + i) for i, (f, rel, s) in enumerate(plan)]


def upsample_files(stage, inputs: Sequence[str | Path], out: str | Path, *, stage_path: str | Path,
                   seed: int = 0, steps: int | None = None, noise_level: int | None = None, batch_size: int = 8,
                   progress: bool = True) -> dict:
    """Enlarge every image of ``inputs`` with ``stage`` into ``out`` (atomic PNGs, ``labels.csv``).

    Returns:
        {"n", "seconds", "images_per_second", "files", "resolution", "upsampler"}.
    """
    from ..upsampler import upsample_settings
    from .marking import read_marking, save_marked_png

    if batch_size < 1:
        raise MedsynthError(f"batch size must be at least 1, got {batch_size}")
    plan = plan_inputs(inputs, seed)
    out = Path(out)
    for given in inputs:
        if Path(given).resolve() == out.resolve():
            raise MedsynthError(f"--out {out} is one of the inputs; choose a new folder")
    arrays = []
    for src, _, _ in plan:
        array = load_image(src, stage.channels)
        h, w = array.shape[:2]
        multiple = 2 ** (len(stage.unet.config.block_out_channels) - 1)
        if (h * stage.scale) % multiple or (w * stage.scale) % multiple:
            raise MedsynthError(f"{src} is {w}x{h} px; this upsampler needs sides that become multiples of {multiple} "
                                f"when enlarged {stage.scale}x (it is made for {stage.config.base_resolution}-px images)")
        arrays.append(array)
    settings = {k: v for k, v in (("num_inference_steps", steps), ("noise_level", noise_level)) if v is not None}
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    files, rows = [], []
    bar = tqdm(total=len(plan), desc=f"upsampling x{stage.scale}", unit="img", disable=not progress)
    i = 0
    while i < len(plan):
        # a batch holds images of one size
        j = i + 1
        while j < len(plan) and j - i < batch_size and arrays[j].shape == arrays[i].shape:
            j += 1
        batch = np.stack(arrays[i:j])
        generators = [torch.Generator().manual_seed(s) for _, _, s in plan[i:j]]
        high = stage(batch, generator=generators, **settings)
        for (src, rel, s), array in zip(plan[i:j], high):
            # enlarged detail is generated: the output is marked, keeping what the input's mark said
            before = read_marking(src) or {}
            kept = {k: before[k] for k in ("generator", "domain", "class", "seed", "sampler", "steps", "guidance", "start")
                    if k in before}
            save_marked_png(array, out / rel, **{**kept, "domain": kept.get("domain") or stage.config.domain,
                                                  "resolution": int(array.shape[0]), "upsampler": str(stage_path),
                                                  "upsample_steps": steps or stage.config.num_inference_steps,
                                                  "upsample_noise": stage.config.noise_level if noise_level is None
                                                  else noise_level})
            files.append(str(out / rel))
            rows.append((rel.as_posix(), rel.parent.name if rel.parent != Path(".") else "", s))
        bar.update(j - i)
        i = j
    bar.close()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "class", "seed"])
    writer.writerows(rows)
    atomic.write_text(out / "labels.csv", buf.getvalue())
    seconds = time.time() - started
    stage_record = upsample_settings(stage, stage_path, steps, noise_level)
    # A synthetic set stays one: its record gains the stage (a single input folder with generation.json).
    folders = [Path(p) for p in inputs if Path(p).is_dir()]
    if len(inputs) == 1 and folders:
        record = read_provenance(folders[0])
        if record and record.get("synthetic"):
            base = record.get("resolution")
            write_record(out, {**record, "resolution": int(base) * stage.scale if base else None,
                               "base_resolution": base, "upsampler": stage_record,
                               "upsampled_from": str(folders[0])})
    return {"n": len(files), "seconds": round(seconds, 3),
            "images_per_second": round(len(files) / seconds, 4) if seconds > 0 else None, "files": files,
            "resolution": stage_record["resolution"], "upsampler": stage_record,
            "provenance": str(out / PROVENANCE) if (out / PROVENANCE).is_file() else None}
