"""Weighting a labelled synthetic set towards real images by nearest neighbours, without training on them.

A class-conditional generator covers its classes unevenly: some of its samples look like many real
scans, others like none (distorted slices, rare layouts drawn too often). ``match_set`` keeps every
sample once and adds extra copies where real images are: each real image of class c gives 1/k to
each of its k nearest synthetic samples of class c (cosine similarity of ImageNet
EfficientNet-Lite0 features, the FD-Lite0 extractor, on images at the set's resolution), and each
class receives ``extra`` times its size in further copies, in proportion to those scores (largest
remainder). The CNN trained on the result still sees synthetic pixels only; the real images only
decide how often each sample appears, as a curate filter decides which appear at all. Use the real
images the diffusion model trained on, never those the result will be judged on.

On brain_mri this lifted the synthetic-only CNN from 0.873 / 0.873 to 0.880 / 0.879 on the selection
images, and from 0.8396 to 0.8597 on the validation images (benchmarks/RESULTS.md, "weighting the
synthetic set by its real nearest neighbours"). The same weighting in a real-trained CNN's own
features did nothing: it must see layout, not only what the classes look like to a classifier.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable

import numpy as np

from .. import atomic
from ..data import check_out_apart, link_or_copy, load_resized, scan_dataset
from ..domains import get_domain
from ..errors import MedsynthError
from .provenance import PROVENANCE, read_provenance, read_synthetic_set, write_record

FEATURES = "ImageNet EfficientNet-Lite0 pooled features at 224 px (the FD-Lite0 extractor), cosine similarity"


def _normalised(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def extra_copies(real: np.ndarray, synthetic: np.ndarray, k: int, total: int) -> np.ndarray:
    """Per synthetic row, how many extra copies: ``total`` spread by k-nearest-neighbour scores of ``real``.

    Rows are L2-normalised features of one class. Each real row gives 1/k to each of its k most
    similar synthetic rows; the copies follow those scores, rounded by largest remainder so that they
    sum to ``total`` exactly.
    """
    k = min(k, len(synthetic))
    sims = real @ synthetic.T
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # k = all samples is valid too (kth = n - 1)
    scores = np.zeros(len(synthetic))
    np.add.at(scores, nearest.ravel(), 1.0 / k)
    want = total * scores / scores.sum()
    copies = np.floor(want).astype(int)
    rest = total - int(copies.sum())
    copies[np.argsort(-(want - copies), kind="stable")[:rest]] += 1
    return copies


def match_set(
    data: str | os.PathLike,
    real: str | os.PathLike,
    out: str | os.PathLike,
    k: int = 10,
    extra: float = 1.0,
    overwrite: bool = False,
    features: Callable[[list], np.ndarray] | None = None,
) -> dict:
    """Write to ``out`` synthetic set ``data`` with every image once plus extra copies towards ``real``.

    Returns the new set's ``generation.json`` record (with a ``matching`` entry). Copies are hard
    links named ``m<j>_<name>``; ``out`` appears whole or not at all. ``features`` maps a list of
    uint8 images to feature rows (default: ImageNet EfficientNet-Lite0).
    """
    data, real, out = Path(data), Path(real), Path(out)
    if k < 1:
        raise MedsynthError(f"--k must be at least 1, got {k}")
    if not extra > 0:
        raise MedsynthError(f"--extra must be above 0 (1 doubles the set), got {extra}")
    record = read_synthetic_set(data, "match weights labelled sets written by 'medsynth generate --n-per-class', "
                                      "'merge' or 'curate'")
    if not real.is_dir():
        raise MedsynthError(f"--real {real}: no such folder (give real images, one sub-folder per class)")
    if (read_provenance(real) or {}).get("synthetic"):
        raise MedsynthError(f"--real {real} is a synthetic set (it has a {PROVENANCE}); give the real images the "
                            "diffusion model trained on")
    check_out_apart(out, [data, real], "an input folder")
    if out.exists() and not overwrite:
        raise MedsynthError(f"{out} already exists; choose a new folder or pass --overwrite to replace it")
    classes = list(record.get("classes") or [])
    resolution = int(record.get("resolution") or 0)
    channels = get_domain(record.get("diffusion_domain")).channels
    if resolution < 1:
        raise MedsynthError(f"{data}/{PROVENANCE} records no resolution; was it written by 'medsynth generate'?")
    synthetic = scan_dataset(data, classes)
    reals = scan_dataset(real, classes, require_all=False)
    missing = [c for i, c in enumerate(classes) if not any(s.label == i for s in reals)]
    if missing:
        raise MedsynthError(f"--real {real} has no images of class {', '.join(missing)}; every class of the set needs "
                            "real images to match (one sub-folder per class, named as in the set)")
    if features is None:
        from ..quality import Lite0Features

        features = Lite0Features()
    f_syn = _normalised(np.asarray(features(load_resized(synthetic, channels, resolution, progress=False)), dtype=np.float64))
    f_real = _normalised(np.asarray(features(load_resized(reals, channels, resolution, progress=False)), dtype=np.float64))
    y_syn = np.array([s.label for s in synthetic])
    y_real = np.array([s.label for s in reals])
    copies = np.zeros(len(synthetic), dtype=int)
    per_class = {}
    for index, name in enumerate(classes):
        si, ri = np.where(y_syn == index)[0], np.where(y_real == index)[0]
        total = int(round(extra * len(si)))
        copies[si] = extra_copies(f_real[ri], f_syn[si], k, total)
        per_class[name] = {"samples": int(len(si)), "real": int(len(ri)), "extra_copies": total,
                           "samples_with_copies": int((copies[si] > 0).sum()), "most_copies": int(copies[si].max())}

    old_rows: dict[str, dict] = {}
    fields = ["file", "class"]
    labels_path = data / "labels.csv"
    if labels_path.is_file():
        with labels_path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if "file" in (reader.fieldnames or []):
                fields = list(reader.fieldnames)
                old_rows = {row["file"]: row for row in reader}
    fields = [f for f in fields if f != "copy_of"] + ["copy_of"]
    matched = {k_: v for k_, v in record.items() if k_ not in ("class_counts", "matching", "note")}
    matched["class_counts"] = {c: per_class[c]["samples"] + per_class[c]["extra_copies"] for c in classes}
    matched["matching"] = {"source": str(data), "real": str(real), "k": k, "extra": extra, "features": FEATURES,
                           "per_class": per_class}
    matched["note"] = (
        f"Weighted towards real images: every sample of `{data}` once, plus {extra:g} times as many extra copies, "
        f"spread by how often a sample is among the {k} nearest synthetic samples of its class to a real image of "
        f"`{real}` ({FEATURES}; `medsynth match`). Real images only weight the samples; no real pixel is trained on."
    )
    with atomic.atomic_dir(out) as tmp:
        rows = []
        for sample, n in zip(synthetic, copies):
            rel = sample.path.relative_to(data)
            base = old_rows.get(rel.as_posix()) or {"file": rel.as_posix(), "class": classes[sample.label]}
            for j in range(n + 1):
                name = rel.name if j == 0 else f"m{j}_{rel.name}"
                target = tmp / rel.parent / name
                target.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(sample.path, target)
                row = {**base, "file": (rel.parent / name).as_posix(), "copy_of": "" if j == 0 else rel.as_posix()}
                rows.append([row.get(f, "") for f in fields])
        with (tmp / "labels.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(fields)
            writer.writerows(rows)
        write_record(tmp, matched)
    return matched
