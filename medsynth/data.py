"""Labelled image folders: ``<root>/<class>/<images>``, split and served to training.

Class folder names come from the domain registry (or a checkpoint's config). Files beside the
class folders (a ``manifest.csv``, a README) and hidden entries are ignored; a folder that is not
a class is an error naming it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import MedsynthError
from .io import is_dicom, is_image_name, load_image
from .transforms import square_resize_uint8, to_float_chw


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def natural_key(text: str) -> list:
    """'img2' < 'img10': digits compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _looks_like_image(path: Path) -> bool:
    if is_image_name(path):
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


@dataclass
class ImageSet:
    """Images of one folder at one resolution, with labels, source files and content hashes."""

    folder: Path
    images: np.ndarray  # uint8 (N, S, S, C)
    labels: np.ndarray  # int (N,)
    files: list[str]
    hashes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "ImageSet":
        index = np.asarray(index, dtype=int)
        return ImageSet(self.folder, self.images[index], self.labels[index],
                        [self.files[i] for i in index], [self.hashes[i] for i in index])


def pick_per_class(labels: np.ndarray, n_max: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``n_max`` indices, each class keeping its share (seeded, sorted)."""
    if n_max is None or len(labels) <= n_max:
        return np.arange(len(labels))
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = max(1, int(round(len(members) * n_max / len(labels))))
        keep.append(rng.choice(members, min(n, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def load_set(folder: str | Path, classes: Sequence[str], channels: int, size: int, n_max: int | None = None,
             seed: int = 0, require_all: bool = False) -> ImageSet:
    """Every image of ``folder/<class>/`` (at most ``n_max``, a seeded per-class pick), square-resized to ``size``."""
    samples = scan_dataset(folder, classes, require_all=require_all)
    labels = np.array([s.label for s in samples], dtype=int)
    index = pick_per_class(labels, n_max, np.random.default_rng(seed))
    samples = [samples[i] for i in index]
    images = load_resized(samples, channels, size, progress=False)
    hashes = [hashlib.sha256(s.path.read_bytes()).hexdigest() + f":{size}:{channels}" for s in samples]
    return ImageSet(Path(folder), images, labels[index], [str(s.path) for s in samples], hashes)
