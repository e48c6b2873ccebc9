"""Labelled image folders: ``<root>/<class>/<images>``, split and served to training.

Class folder names come from the domain registry (or a checkpoint's config). Files beside the
class folders (a ``manifest.csv``, a README) and hidden entries are ignored; a folder that is not
a class is an error naming it.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import atomic
from .errors import MedsynthError
from .io import IMAGE_SUFFIXES, is_dicom, load_image
from .transforms import square_resize_uint8, to_float_chw


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def natural_key(text: str) -> list:
    """'img2' < 'img10': digits compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if path.suffix == "":  # DICOM files often have no suffix
        try:
            with path.open("rb") as fh:
                return is_dicom(fh.read(132))
        except OSError:
            return False
    return False


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, in natural order; hidden files are skipped."""
    folder = Path(folder)
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise MedsynthError(f"{folder}: cannot be read ({exc.strerror or exc})") from None
    files = [p for p in entries if p.is_file() and not p.name.startswith(".") and _looks_like_image(p)]
    return sorted(files, key=lambda p: (natural_key(p.name), p.name))  # raw name breaks ties (a1 vs a01)


def scan_dataset(root: str | Path, classes: Sequence[str], require_all: bool = True) -> list[Sample]:
    """All images under ``root/<class>/`` with their label indices.

    ``require_all`` (training) makes a missing or empty class folder an error; evaluation sets
    may cover only some classes.
    """
    root = Path(root)
    if not root.exists():
        raise MedsynthError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise MedsynthError(f"data folder {root} is not a folder")
    try:
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise MedsynthError(f"data folder {root} cannot be read ({exc.strerror or exc})") from None
    unknown = [name for name in folders if name not in classes]
    if unknown:
        raise MedsynthError(
            f"{root}: folder {unknown[0]!r} is not a known class; expected sub-folders named "
            f"{', '.join(classes)} (rename or move {root / unknown[0]})"
        )
    samples: list[Sample] = []
    for label, name in enumerate(classes):
        folder = root / name
        files = list_images(folder) if folder.is_dir() else []
        if not files and require_all:
            what = "has no images" if folder.is_dir() else "is missing"
            raise MedsynthError(
                f"{root}: class folder {name!r} {what}; every class ({', '.join(classes)}) needs images"
            )
        samples.extend(Sample(path, label) for path in files)
    if not samples:
        raise MedsynthError(
            f"{root}: no images found; expected sub-folders named {', '.join(classes)} holding PNG/JPEG/DICOM files"
        )
    return samples


def stratified_split(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Deterministic per-class split: the same samples, fraction and seed give the same split.

    Each class with at least two images keeps at least one on each side.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise MedsynthError(f"val fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    labels = sorted({s.label for s in samples})
    for label in labels:
        members = sorted((s for s in samples if s.label == label), key=lambda s: (natural_key(str(s.path)), str(s.path)))
        order = rng.permutation(len(members))
        n_val = int(round(len(members) * val_fraction))
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        chosen = set(order[:n_val].tolist())
        for i, sample in enumerate(members):
            (val if i in chosen else train).append(sample)
    return train, val


def load_resized(
    samples: Sequence[Sample],
    channels: int,
    size: int,
    progress: bool = True,
    desc: str = "loading images",
    source_size: int | None = None,
) -> np.ndarray:
    """Decode every sample once and square-resize it (through ``source_size`` first, if given, as a
    classifier with that ``source_size`` does): uint8 (N, size, size, channels)."""
    out = np.empty((len(samples), size, size, channels), dtype=np.uint8)
    for i, sample in enumerate(tqdm(samples, desc=desc, unit="img", disable=not progress, leave=False)):
        out[i] = square_resize_uint8(load_image(sample.path, channels), size, source_size)
    return out


class ArrayDataset(torch.utils.data.Dataset):
    """Pre-resized uint8 images and labels; returns (float tensor, label) after ``transform``."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], transform: Callable | None = None) -> None:
        self.images = images
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        x = to_float_chw(self.images[index])
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[index]


def read_synthetic_set(folder: Path, purpose: str) -> dict:
    """The ``generation.json`` record of a labelled synthetic folder, or a clear error: ``purpose`` says
    what the calling command does with such sets (e.g. "merge joins labelled sets written by ...")."""
    if not folder.is_dir():
        raise MedsynthError(f"{folder}: no such folder")
    record = read_provenance(folder)
    if not record or not record.get("synthetic"):
        raise MedsynthError(f"{folder} has no {PROVENANCE}: {purpose}, and keeps real images out of synthetic-only "
                            "training")
    return record


def check_out_apart(out: Path, sources: "list[Path]", what: str) -> None:
    """Refuse an output folder that is, holds or lies inside one of ``sources``: writing it (or
    replacing it with --overwrite) would add a non-class folder to a source or delete one."""
    o = out.resolve()
    for src in sources:
        s = src.resolve()
        if o == s or s in o.parents or o in s.parents:
            raise MedsynthError(f"--out {out} is, holds or lies inside {what} {src}; choose a folder outside it")


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` at ``dst`` (no second copy of the image); copy where links fail (another file system)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


PROVENANCE = "generation.json"


def total_training_steps(summary: dict) -> int | None:
    """A diffusion run's steps over its whole ``--init-from`` chain: its own plus each base's
    (``train_summary.json`` ``base``, nested), so a continued model is not mistaken for a short run."""
    steps = summary.get("steps")
    if steps is None:
        return None
    base = summary.get("base")
    while isinstance(base, dict):
        steps += base.get("steps") or 0
        base = base.get("base")
    return steps


def write_provenance(out: str | Path, checkpoint: str | Path, pipe, **settings) -> dict:
    """Record how a labelled synthetic dataset was made, as ``OUT/generation.json``.

    ``train-classifier`` finds this file in its data folder, marks the model as trained on synthetic
    images and copies the record (diffusion checkpoint, its training steps, sampler, steps, guidance,
    seeds) onto the model card.
    """
    import json

    ckpt = Path(checkpoint)
    trained = None
    summary = ckpt / "train_summary.json"
    if summary.is_file():
        try:
            trained = total_training_steps(json.loads(summary.read_text()))
        except (ValueError, OSError):
            trained = None
    record = {
        "synthetic": True,
        "diffusion_checkpoint": str(checkpoint),
        "diffusion_domain": pipe.config.domain,
        "diffusion_training_steps": trained,
        "resolution": int(pipe.unet.config.sample_size),
        "classes": list(pipe.classes),
        **settings,
    }
    atomic.write_json(Path(out) / PROVENANCE, record)
    return record


def read_provenance(folder: str | Path) -> dict | None:
    """The ``generation.json`` record of a synthetic dataset folder, or None for real data."""
    import json

    path = Path(folder) / PROVENANCE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError as exc:
        raise MedsynthError(f"{path} is not valid JSON ({exc}); delete it if the folder holds real images") from None
    return record if isinstance(record, dict) else None
