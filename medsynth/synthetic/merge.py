"""Joining labelled synthetic sets from several ``generate --n-per-class`` runs into one training set.

A CNN trained on the union of differently drawn sets (another guidance scale, another checkpoint,
other seeds) transferred better to real scans than one trained on any of them alone
(benchmarks/RESULTS.md, "Which synthetic set"). ``merge_sets`` builds that union without copying:
each image is hard-linked (copied only across file systems) under a per-set prefix, ``a_``, ``b_``,
..., so names never collide, and ``generation.json`` lists every set's record under ``parts``, which
``train-classifier`` copies onto the model card.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

from .. import atomic
from ..data import check_out_apart, link_or_copy, scan_dataset
from ..errors import MedsynthError
from .provenance import read_synthetic_set, write_record

# What a part keeps of its set's record: how it was drawn. Domain, classes and resolution are common.
_PART_KEYS = ("diffusion_checkpoint", "diffusion_training_steps", "n_per_class", "sampler", "steps", "guidance",
              "start_log_snr", "start_from", "seed", "seconds", "curation")
# Two sets drawn with all of these equal and overlapping seeds hold the same images twice.
_SAME_DRAW = ("diffusion_checkpoint", "diffusion_training_steps", "sampler", "steps", "guidance", "start_log_snr",
              "start_from")


def _prefix(index: int) -> str:
    return f"{chr(ord('a') + index)}_" if index < 26 else f"p{index + 1}_"


def _seeds(folder: Path) -> dict[str, int]:
    """file (relative, as in labels.csv) -> seed, from the set's labels.csv (empty when it has none)."""
    path = folder / "labels.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        return {row["file"]: int(row["seed"]) for row in csv.DictReader(fh) if row.get("seed", "").strip()}


def _parts_of(folder: Path, record: dict) -> list[dict]:
    """The draws a set is made of: its own record, or the parts of a set that was itself merged."""
    if record.get("parts"):
        parts = [dict(p) for p in record["parts"]]  # a curated merged set: each part records its own curation
        for part in parts:  # sets curated before parts did: the part's counts stood beside it
            before = part.pop("class_counts_before_curation", None)
            if record.get("curation") and before is not None and "curation" not in part:
                part["curation"] = {k: v for k, v in record["curation"].items() if k != "earlier"} | {
                    "offered": before, "kept": dict(part.get("class_counts") or {})}
        return parts
    return [{k: record[k] for k in _PART_KEYS if k in record} | {"folder": str(folder)}]


def merge_sets(sets: Sequence[str | os.PathLike], out: str | os.PathLike, note: str | None = None,
               overwrite: bool = False) -> dict:
    """Join labelled synthetic folders into ``out``; returns the merged ``generation.json`` record.

    Every set needs the ``generation.json`` that ``generate --n-per-class`` writes, and all must share
    domain, classes and resolution. ``out`` appears whole or not at all: it is built in a temporary
    folder beside it and renamed into place.
    """
    folders = [Path(s) for s in sets]
    if len(folders) < 2:
        raise MedsynthError("merge needs at least two synthetic sets to join")
    resolved = [f.resolve() for f in folders]
    for i, f in enumerate(resolved):
        if f in resolved[:i]:
            raise MedsynthError(f"{folders[i]} is given twice; each set can be joined once")
    out = Path(out)
    if out.resolve() in resolved:
        raise MedsynthError(f"--out {out} is one of the sets to join; choose a new folder")
    check_out_apart(out, folders, "the set")
    if out.exists() and not overwrite:
        raise MedsynthError(f"{out} already exists; choose a new folder or pass --overwrite to replace it")

    records = [read_synthetic_set(folder, "merge joins labelled sets written by 'medsynth generate --n-per-class'")
               for folder in folders]
    first = records[0]
    for key in ("diffusion_domain", "classes", "resolution"):
        for folder, record in zip(folders[1:], records[1:]):
            if record.get(key) != first.get(key):
                raise MedsynthError(f"{folders[0]} and {folder} differ in {key} ({first.get(key)!r} against "
                                    f"{record.get(key)!r}); only sets of the same domain and resolution can be joined")
    classes = list(first["classes"])

    # One prefix per draw, also for the parts of a set that was itself merged (they keep theirs inside it).
    parts: list[dict] = []
    plans: list[tuple[str, list, dict[str, int]]] = []
    for index, (folder, record) in enumerate(zip(folders, records)):
        samples = scan_dataset(folder, classes)
        prefix = _prefix(index)
        seeds = _seeds(folder)
        for part in _parts_of(folder, record):
            inner = part.get("file_prefix", "")
            part["file_prefix"] = prefix + inner
            part.setdefault("folder", str(folder))
            label = str(folder) if part["folder"] == str(folder) else f"{part['folder']} (joined in {folder})"
            part["class_counts"] = dict(Counter(
                classes[s.label] for s in samples if s.path.name.startswith(inner)))
            part["given_as"] = label
            part["seed_list"] = sorted(seed for rel, seed in seeds.items() if Path(rel).name.startswith(inner))
            parts.append(part)
        plans.append((prefix, samples, seeds))

    for i, a in enumerate(parts):  # the same draw twice would train on duplicate images
        for b in parts[:i]:
            if all(a.get(k) == b.get(k) for k in _SAME_DRAW) and set(a["seed_list"]) & set(b["seed_list"]):
                raise MedsynthError(
                    f"{b['given_as']} and {a['given_as']} were drawn the same way (checkpoint, sampler, steps, guidance) "
                    "with overlapping seeds, so they hold the same images; draw one again with another --seed")
    for part in parts:
        del part["seed_list"], part["given_as"]

    counts = Counter()
    rows: list[tuple[str, str, str, str]] = []
    with atomic.atomic_dir(out) as tmp:
        for prefix, samples, seeds in plans:
            for sample in samples:
                cls = classes[sample.label]
                rel = Path(cls) / (prefix + sample.path.name)
                target = tmp / rel
                target.parent.mkdir(exist_ok=True)
                link_or_copy(sample.path, target)
                seed = seeds.get(str(Path(cls) / sample.path.name), "")
                rows.append((rel.as_posix(), cls, str(seed), prefix))
                counts[cls] += 1
        sources = Counter((p.get("diffusion_checkpoint"), p.get("diffusion_training_steps")) for p in parts)
        # The card names one checkpoint up front and each part drawn elsewhere beside that part: the most
        # common source, and on a tie the last one given (usually the newest model).
        checkpoint, trained = max(reversed(list(sources)), key=lambda s: sources[s])
        per_class = set(counts.values())
        merged = {
            "synthetic": True,
            "diffusion_checkpoint": checkpoint,
            "diffusion_domain": first.get("diffusion_domain"),
            "diffusion_training_steps": trained,
            "resolution": first.get("resolution"),
            "classes": classes,
            "n_per_class": per_class.pop() if len(per_class) == 1 else None,
            "class_counts": {c: counts[c] for c in classes},
            "parts": parts,
        }
        if note:
            merged["note"] = note
        with (tmp / "labels.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "class", "seed", "part"])
            writer.writerows(rows)
        write_record(tmp, merged)
    return merged
