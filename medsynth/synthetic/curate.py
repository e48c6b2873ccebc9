"""Keeping the synthetic images that a CNN trained on real images assigns to their own class.

A class-conditional generator's samples do not all show their class: some are ambiguous and some
look like another class. A CNN trained on such a set learns those mistakes as labels. ``curate_set``
runs a classifier over a labelled synthetic folder (from ``generate --n-per-class`` or ``merge``)
and keeps an image only if the classifier's most probable class is the one it was generated for
(and, with ``min_prob``, if it gives that class at least that probability). Nothing is relabelled.

The images stay synthetic, but the set now carries the filter's knowledge of real images, so the
filter is recorded: ``generation.json`` gains a ``curation`` record (the classifier, the data it was
trained on, the threshold, and what each class kept; an earlier filter under ``earlier``), which
``train-classifier`` copies onto the model card. In a merged set each part gets the same record with
its own counts, so a curated set stays truthful when it is merged again. For an honest train-on-synthetic / test-on-real score, train the filter on the same real
training images the diffusion model learned from, never on the images the result is judged on.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from .. import atomic
from ..data import check_out_apart, link_or_copy, scan_dataset
from ..errors import MedsynthError
from ..io import load_image
from .provenance import read_synthetic_set, write_record


def _classifier_origin(checkpoint: Path) -> dict:
    """What the filter was trained on, from the records ``train-classifier`` leaves beside its weights."""
    origin: dict = {}
    for name in ("train_summary.json", "args.json"):
        path = checkpoint / name
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        if name == "train_summary.json":
            origin["trained_on_synthetic"] = bool(record.get("synthetic_training_data"))
            metrics = record.get("val_metrics") or {}
            if "accuracy" in metrics:
                origin["val_accuracy"] = metrics["accuracy"]
        else:
            origin["data"] = record.get("data")
            origin["val_data"] = record.get("val_data")
    return origin


def curate_set(
    data: str | os.PathLike,
    classifier: str | os.PathLike,
    out: str | os.PathLike,
    min_prob: float = 0.0,
    overwrite: bool = False,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write to ``out`` the images of synthetic set ``data`` that ``classifier`` assigns to their class.

    Returns the new set's ``generation.json`` record. ``out`` holds hard links (copies across file
    systems) under the same names, a ``labels.csv`` with each kept image's probability, and the
    record; it appears whole or not at all. ``progress(done, total)`` is called after each batch.
    """
    from ..classify import load_classifier

    if not 0.0 <= min_prob < 1.0:
        raise MedsynthError(f"--min-prob must be in [0, 1) (0 = keep whatever the classifier ranks first), got {min_prob}")
    data, out, checkpoint = Path(data), Path(out), Path(classifier)
    record = read_synthetic_set(data, "curate filters labelled sets written by 'medsynth generate --n-per-class' "
                                      "or 'medsynth merge'")
    if out.resolve() == data.resolve():
        raise MedsynthError(f"--out {out} is the set being curated; choose a new folder")
    check_out_apart(out, [data], "the set being curated")
    if out.exists() and not overwrite:
        raise MedsynthError(f"{out} already exists; choose a new folder or pass --overwrite to replace it")
    clf = load_classifier(checkpoint)
    classes = list(record.get("classes") or [])
    if clf.config.domain != record.get("diffusion_domain") or clf.classes != classes:
        raise MedsynthError(f"classifier {checkpoint} is for {clf.config.domain} ({', '.join(clf.classes)}), the set "
                            f"{data} is {record.get('diffusion_domain')} ({', '.join(classes)}); use a classifier of "
                            "the same domain")
    origin = _classifier_origin(checkpoint)
    if "trained_on_synthetic" not in origin:
        raise MedsynthError(f"classifier {checkpoint} has no readable train_summary.json, so what it was trained on "
                            "is unknown; curate with a checkpoint that 'medsynth train-classifier' wrote from real images")
    if origin.get("trained_on_synthetic"):
        raise MedsynthError(f"classifier {checkpoint} was trained on synthetic images; it tells a generator's own classes "
                            "apart almost perfectly, so it would keep nearly everything. Curate with a CNN trained on "
                            "real images (e.g. train-classifier on the diffusion model's training split at its resolution)")

    samples = scan_dataset(data, classes)
    probs = np.zeros(len(samples), dtype=np.float32)
    ranked_first = np.zeros(len(samples), dtype=bool)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        p = clf.predict_proba([load_image(s.path, clf.config.channels) for s in chunk], batch_size=batch_size)
        labels = np.array([s.label for s in chunk])
        probs[start : start + len(chunk)] = p[np.arange(len(chunk)), labels]
        ranked_first[start : start + len(chunk)] = p.argmax(1) == labels
        if progress:
            progress(min(start + batch_size, len(samples)), len(samples))
    keep = ranked_first & (probs >= min_prob)

    offered = Counter(classes[s.label] for s in samples)
    kept = Counter(classes[s.label] for s, k in zip(samples, keep) if k)
    empty = [c for c in classes if not kept[c]]
    if empty:
        raise MedsynthError(f"no image of class {', '.join(empty)} passed (classifier {checkpoint}, min-prob {min_prob}); "
                            "lower --min-prob, or check that the classifier suits these images (domain, resolution)")

    old_rows: dict[str, dict] = {}
    labels_path = data / "labels.csv"
    fields = ["file", "class"]
    if labels_path.is_file():
        with labels_path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = [f for f in (reader.fieldnames or fields) if f != "prob"]
            if "file" in fields:  # a labels.csv without file names adds nothing to keep
                old_rows = {row["file"]: row for row in reader}
            else:
                fields = ["file", "class"]
    curated = {k: v for k, v in record.items() if k not in ("class_counts", "curation")}
    curated["class_counts"] = {c: kept[c] for c in classes}
    curated["curation"] = {
        "source": str(data),
        "classifier": str(checkpoint),
        **{f"classifier_{k}": v for k, v in origin.items()},
        "rule": "kept an image when the classifier ranks its generated class first"
        + (f" with probability at least {min_prob}" if min_prob else ""),
        "min_prob": min_prob,
        "offered": {c: offered[c] for c in classes},
        "kept": {c: kept[c] for c in classes},
    }
    if record.get("curation"):  # curated before: the earlier filters stay on record, newest first
        curated["curation"]["earlier"] = record["curation"]
    if record.get("parts"):  # a merged set: each draw records what it kept, found by its file prefix (the longest that fits)
        prefixes = sorted((p.get("file_prefix", "") for p in record["parts"]), key=len, reverse=True)
        per_part = Counter((next(x for x in prefixes if s.path.name.startswith(x)), classes[s.label])
                           for s, k in zip(samples, keep) if k and any(s.path.name.startswith(x) for x in prefixes))
        parts = []
        for part in record["parts"]:
            counts = {c: per_part[(part.get("file_prefix", ""), c)] for c in classes}
            # The same filter with this draw's own numbers, so the part stays true when it is merged again.
            own = {k: v for k, v in curated["curation"].items() if k != "earlier"}
            own.update(offered=part.get("class_counts"), kept=counts)
            if part.get("curation"):
                own["earlier"] = part["curation"]
            parts.append({**part, "class_counts": counts, "curation": own})
        curated["parts"] = parts
    with atomic.atomic_dir(out) as tmp:
        rows = []
        for sample, k, prob in zip(samples, keep, probs):
            if not k:
                continue
            rel = sample.path.relative_to(data).as_posix()
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(sample.path, target)
            row = old_rows.get(rel) or {"file": rel, "class": classes[sample.label]}
            rows.append([row.get(f, "") for f in fields] + [f"{prob:.4f}"])
        with (tmp / "labels.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(fields + ["prob"])
            writer.writerows(rows)
        write_record(tmp, curated)
    return curated
