"""``generation.json``: the record of how a labelled synthetic set was made, and its one owner.

``generate --n-per-class`` writes it (:func:`write_provenance`); ``merge``, ``curate`` and ``match`` read
their input's record (:func:`read_synthetic_set`), derive the new set's record from it and write it with
:func:`write_record`; ``train-classifier`` finds it in its data folder (:func:`read_provenance`), marks
the model as trained on synthetic images and copies it onto the model card.
"""

from __future__ import annotations

from pathlib import Path

from .. import atomic
from ..errors import MedsynthError

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
    seeds) onto the model card. ``upsampler``: the second stage's record (checkpoint, training steps,
    scale, sampling settings) when a cascade made the images, else None; ``resolution`` is then the
    stage's output size and ``base_resolution`` the generator's.
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
    stage = settings.get("upsampler")
    record = {
        "synthetic": True,
        "diffusion_checkpoint": str(checkpoint),
        "diffusion_domain": pipe.config.domain,
        "diffusion_training_steps": trained,
        "resolution": int(stage["resolution"]) if stage else int(pipe.unet.config.sample_size),
        "base_resolution": int(pipe.unet.config.sample_size),
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


def write_record(folder: str | Path, record: dict) -> None:
    """Write a set's ``generation.json`` atomically (a derived set's record: merged, curated, matched)."""
    if not record.get("synthetic"):
        raise MedsynthError(f"{folder}: a generation.json record must say synthetic: true")
    atomic.write_json(Path(folder) / PROVENANCE, record)


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
