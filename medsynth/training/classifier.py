"""Training a CNN classifier on a labelled image folder.

The recipe: ImageNet-pretrained timm backbone, AdamW (no decay on norms and biases), linear
warm-up then cosine decay per step, label smoothing, class-weighted cross-entropy (weights
inversely proportional to class frequency), domain augmentations, and early stopping on
validation macro-F1; the best weights are written atomically whenever validation improves.
For training on synthetic images there are three regularisers, off by default: stronger
augmentation, mixup, and freezing the first stages of the pretrained backbone; and a moving
average of the weights (``ema``), which is validated and kept in place of the live weights.

After every epoch the whole training state (live and averaged weights, optimiser, schedule, random
generators, the log and the best epoch so far) is written atomically to ``OUT/state/``; ``resume=True``
(``--resume``) continues a run that was stopped or killed from the last finished epoch, and a finished run
removes that folder.

It runs through ``accelerate``: plain ``python -m medsynth train-classifier`` on a CPU or a GPU,
or ``accelerate launch -m medsynth train-classifier`` on several GPUs, with no code change.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import atomic
from ..cards.render import classifier_card
from ..classify import WEIGHTS_NAME, ClassifierConfig, create_classifier, default_normalization, save_checkpoint
from ..data import ArrayDataset, load_resized, scan_dataset, stratified_split
from ..domains import get_domain
from ..errors import MedsynthError
from ..hardware import describe, make_accelerator
from ..metrics import classification_metrics
from ..recipes import DEFAULT_ARCH, ClassifierRecipe
from ..synthetic.provenance import read_provenance
from ..transforms import Normalize, RandomLowResolution, build_augmentation
from .schedule import warmup_cosine


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)  # norms and biases are 1-D
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def freeze_stages(model: torch.nn.Module, n: int) -> list[torch.nn.Module]:
    """Stop training the first ``n`` of timm's coarse module groups (the stem, then stage by stage).

    Returns the frozen modules: the training loop keeps them in eval mode, so their batch-norm
    statistics stay those of the initial weights too.
    """
    if n == 0:
        return []
    from timm.models._manipulate import group_modules

    if not hasattr(model, "group_matcher"):
        raise MedsynthError(f"--freeze-stages: {type(model).__name__} does not describe its stages; use 0")
    groups = group_modules(model, model.group_matcher(coarse=True))
    order = sorted(groups)
    if n >= len(order):
        raise MedsynthError(f"--freeze-stages {n}: this model has {len(order)} groups (stem, stages, head), so at "
                            f"most {len(order) - 1} can be frozen and the head still trains")
    frozen = [model.get_submodule(name) for gid in order[:n] for name in groups[gid]]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


class WeightAverage:
    """An exponential moving average of a model's weights and batch-norm statistics.

    Each optimiser step moves the average towards the live weights by ``1 - d``, with
    ``d = min(decay, (1 + t) / (10 + t))`` after ``t`` steps, so early steps, far from where
    training ends up, are forgotten fast. That warm-up reaches 0.995 only after about 1,800 steps:
    a shorter run ends at a lower decay (``current_decay``), and the average then spans about the
    last ``1 / (1 - current_decay)`` steps. It sits in the middle of the region those steps
    explored, where the validation score swings less from epoch to epoch than at any single
    point on the way.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self._ema = [v for v in self.module.state_dict().values() if v.dtype.is_floating_point]

    @property
    def current_decay(self) -> float:
        """The decay of the latest update (0 before any)."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.updates else 0.0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        live = [v for v in model.state_dict().values() if v.dtype.is_floating_point]
        torch._foreach_lerp_(self._ema, live, 1.0 - self.current_decay)

    @torch.no_grad()
    def sync(self) -> None:
        """Give every process rank 0's average.

        The weights are the same everywhere, but each process updates batch-norm statistics on
        its own batches, so without this the averages would validate as slightly different models.
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for buffer in self.module.buffers():
                torch.distributed.broadcast(buffer, src=0)


def _evaluate(model, loader, accelerator, classes) -> dict:
    model.eval()
    preds, trues = [], []
    with torch.inference_mode():
        for x, y in loader:
            p, t = accelerator.gather_for_metrics((model(x).argmax(1), y))
            preds.append(p.cpu())
            trues.append(t.cpu())
    return classification_metrics(torch.cat(trues).numpy(), torch.cat(preds).numpy(), classes)


def _source_size(recipe: ClassifierRecipe, size: int, base) -> int | None:
    """The resolution every image passes through before ``size`` (see ``ClassifierRecipe.source_size``)."""
    if recipe.source_size == 0:
        return None
    if recipe.source_size is not None:
        if recipe.source_size >= size:
            raise MedsynthError(f"--source-size {recipe.source_size} must be below the input size {size} "
                                "(it is the lower resolution the training images were made at); 0 turns it off")
        return recipe.source_size
    if base is not None and base.config.source_size:
        return base.config.source_size if base.config.source_size < size else None
    generated = (read_provenance(recipe.data) or {}).get("resolution")
    return int(generated) if isinstance(generated, int) and 0 < generated < size else None


STATE_DIR = "state"
#: Options a resumed run may change; every other one must be what the run recorded in args.json.
RESUMABLE_CHANGES = ("epochs", "patience", "max_minutes", "num_workers", "device", "mixed_precision", "progress",
                     "resume")


def unfinished_epoch(out: str | os.PathLike) -> int | None:
    """The last epoch whose training state ``out`` holds (a run that stopped before it finished), or None."""
    state = Path(out) / STATE_DIR / "state.json"
    if not state.is_file():
        return None
    try:
        return int(json.loads(state.read_text())["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


def _read_state(out: Path, recipe: ClassifierRecipe) -> dict:
    """The saved state of an interrupted run in ``out``, checked against ``recipe``."""
    folder = out / STATE_DIR
    if (out / "train_summary.json").is_file() and not (folder / "state.json").is_file():  # finished, not time-stopped
        raise MedsynthError(f"--resume: the run in {out} finished (train_summary.json); there is nothing to resume. "
                            "Start a new run with another --out, or fine-tune it with --init-from")
    if not (folder / "state.json").is_file():
        raise MedsynthError(f"--resume: {out} holds no {STATE_DIR}/state.json of an interrupted run; start without "
                            "--resume")
    try:
        state = json.loads((folder / "state.json").read_text())
        saved = json.loads((out / "args.json").read_text())
    except (OSError, ValueError) as exc:
        raise MedsynthError(f"--resume: {out} has an unreadable training state ({exc}); start again with --overwrite")
    mine = asdict(recipe)
    for key, value in mine.items():
        if key in RESUMABLE_CHANGES or key in ("out", "resumed_at_epochs"):
            continue
        if key in saved and saved[key] != value:
            raise MedsynthError(f"--resume: --{key.replace('_', '-')} was {saved[key]!r} in {out}/args.json but is "
                                f"{value!r} now; a resumed run keeps its recipe (only "
                                f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE_CHANGES[:-2])} may change)")
    state["resumed_at_epochs"] = saved.get("resumed_at_epochs", [])
    return state


def _write_state(out: Path, *, epoch, model, average, optimizer, scheduler, generator, log_rows, best, stale,
                 seconds) -> None:
    """The whole training state after ``epoch``, replacing the previous one in one rename."""
    from safetensors.torch import save_file

    def tensors(module):
        return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}

    with atomic.atomic_dir(out / STATE_DIR) as tmp:
        save_file(tensors(model), str(tmp / "model.safetensors"))
        if average is not None:
            save_file(tensors(average.module), str(tmp / "average.safetensors"))
        torch.save(getattr(optimizer, "optimizer", optimizer).state_dict(), tmp / "optimizer.pt")
        save_file({"torch": torch.get_rng_state(), "loader": generator.get_state()}, str(tmp / "rng.safetensors"))
        if best is not None and (out / WEIGHTS_NAME).is_file():
            try:  # the best weights so far, kept with the state they belong to (a hard link costs no space)
                os.link(out / WEIGHTS_NAME, tmp / "best.safetensors")
            except OSError:
                shutil.copy2(out / WEIGHTS_NAME, tmp / "best.safetensors")
        (tmp / "state.json").write_text(json.dumps({
            "epoch": epoch, "log_rows": log_rows, "best": best, "stale": stale, "seconds": seconds,
            "scheduler": getattr(scheduler, "scheduler", scheduler).state_dict(),
            "average_updates": average.updates if average is not None else None,
        }, indent=2) + "\n")


def train_classifier(recipe: ClassifierRecipe) -> dict:
    """Train, validate each epoch, keep the best weights in ``recipe.out``; returns a summary.

    Args:
        recipe: every option of the run; ``recipe.resume`` continues an interrupted run in ``recipe.out``.

    Returns:
        The run summary also written to ``train_summary.json`` (best epoch, validation metrics, timing).
    """
    from accelerate.utils import set_seed
    from safetensors.torch import load_file

    recipe.validate()
    domain = get_domain(recipe.domain)
    out = Path(recipe.out)
    atomic.check_writable(out, need_mb=100, option="--out")
    base = None
    if recipe.init_from:
        from ..classify import load_classifier

        base = load_classifier(recipe.init_from)
        if base.classes != list(domain.classes) or base.config.channels != domain.channels:
            raise MedsynthError(f"--init-from {recipe.init_from}: its classes {base.classes} do not match domain "
                                f"{domain.key} ({', '.join(domain.classes)})")
        if recipe.arch is None:
            recipe.arch = base.config.arch
        elif base.config.arch != recipe.arch:
            raise MedsynthError(f"--init-from {recipe.init_from} is a {base.config.arch}; pass --arch {base.config.arch}")
    recipe.arch = recipe.arch or DEFAULT_ARCH
    resume = _read_state(out, recipe) if recipe.resume else None
    size = recipe.image_size or (base.config.input_size if base else domain.classifier_size)
    source_size = _source_size(recipe, size, base)
    accelerator = make_accelerator(recipe.device, recipe.mixed_precision)
    main = accelerator.is_main_process
    show = recipe.progress and accelerator.is_local_main_process
    set_seed(recipe.seed)
    started = time.time()

    # -- data ------------------------------------------------------------------------------
    samples = scan_dataset(recipe.data, domain.classes, require_all=True)
    if recipe.val_data:
        train_samples, val_samples = samples, scan_dataset(recipe.val_data, domain.classes, require_all=False)
    else:
        train_samples, val_samples = stratified_split(samples, recipe.val_fraction, recipe.seed)
    train_images = load_resized(train_samples, domain.channels, size, show, "loading training images", source_size)
    val_images = load_resized(val_samples, domain.channels, size, show, "loading validation images", source_size)
    train_labels = [s.label for s in train_samples]
    counts = np.bincount(train_labels, minlength=domain.num_classes)

    if base is not None:
        model, pretrained_source = base.model.train(), f"fine-tuned from {recipe.init_from}"
        mean, std = base.config.mean, base.config.std
    else:
        model, pretrained_source = create_classifier(recipe.arch, domain.num_classes, domain.channels, recipe.pretrained)
        mean, std = default_normalization(model, domain.channels)
    config = ClassifierConfig(
        arch=recipe.arch, domain=domain.key, classes=list(domain.classes), channels=domain.channels,
        input_size=size, mean=mean, std=std, source_size=source_size, pretrained=pretrained_source,
    )
    normalize = Normalize(mean, std)
    frozen = freeze_stages(model, recipe.freeze_stages)
    augment = build_augmentation(domain.augmentation, domain.channels, recipe.augment)
    if recipe.low_res > 0:  # before the domain's augmentations: a small scan is then flipped, jittered, ...
        augment = torch.nn.Sequential(RandomLowResolution(recipe.low_res_floor, recipe.low_res), augment)
    train_ds = ArrayDataset(train_images, train_labels, torch.nn.Sequential(augment, normalize))
    val_ds = ArrayDataset(val_images, [s.label for s in val_samples], normalize)
    generator = torch.Generator().manual_seed(recipe.seed)
    train_loader = torch.utils.data.DataLoader(
        train_ds, batch_size=recipe.batch_size, shuffle=True, generator=generator,
        num_workers=recipe.num_workers, drop_last=len(train_ds) > recipe.batch_size,
        persistent_workers=recipe.num_workers > 0,
    )
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=max(64, recipe.batch_size), num_workers=recipe.num_workers)

    steps_per_epoch = len(train_loader)  # single-process count: accelerate steps the schedule per process
    total_steps = steps_per_epoch * recipe.epochs
    optimizer = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(int(recipe.warmup_epochs * steps_per_epoch), total_steps)
    )
    weights = None
    if recipe.balance == "weights":
        # w_c = N / (K * n_c): every class contributes equally to the loss.
        weights = torch.tensor(counts.sum() / (domain.num_classes * np.maximum(counts, 1)), dtype=torch.float32)
    if resume is not None:  # the interrupted run's weights, optimiser and schedule, before accelerate wraps them
        model.load_state_dict(load_file(str(out / STATE_DIR / "model.safetensors")))
        optimizer.load_state_dict(torch.load(out / STATE_DIR / "optimizer.pt", map_location="cpu", weights_only=True))
        scheduler.load_state_dict(resume["scheduler"])
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=recipe.label_smoothing).to(accelerator.device)
    mix = torch.distributions.Beta(recipe.mixup, recipe.mixup) if recipe.mixup > 0 else None
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )
    unwrapped = accelerator.unwrap_model(model)
    # Every process applies the same synchronised steps, so the averaged weights agree; batch-norm
    # statistics come from each process's own batches, so ``sync`` hands out rank 0's before use.
    average = WeightAverage(unwrapped, recipe.ema) if recipe.ema > 0 else None

    out.mkdir(parents=True, exist_ok=True)
    log_rows: list[dict] = []
    best: dict | None = None
    stale, first_epoch, resumed_at = 0, 1, []
    if resume is not None:
        log_rows, best, stale = resume["log_rows"], resume["best"], resume["stale"]
        first_epoch = resume["epoch"] + 1
        resumed_at = resume["resumed_at_epochs"] + [resume["epoch"]]
        started -= resume["seconds"]  # wall time accumulates across resumes
        if average is not None:
            average.module.load_state_dict(load_file(str(out / STATE_DIR / "average.safetensors")))
            average.updates = resume["average_updates"]
        rng = load_file(str(out / STATE_DIR / "rng.safetensors"))
        torch.set_rng_state(rng["torch"])
        generator.set_state(rng["loader"])
        if main and (out / STATE_DIR / "best.safetensors").is_file():
            # the weights of the recorded best epoch, even if a later epoch was saved before the run was killed
            atomic.write_with(out / WEIGHTS_NAME, lambda tmp: shutil.copyfile(out / STATE_DIR / "best.safetensors", tmp))
        if show:
            tqdm.write(f"resuming {out} after epoch {resume['epoch']} (best so far: epoch {best and best['epoch']})")
    if main:
        atomic.write_json(out / "args.json", {**asdict(recipe), **({"resumed_at_epochs": resumed_at} if resumed_at else {})})
        atomic.write_json(out / "split.json", {
            "train": [str(s.path) for s in train_samples],
            "val": [str(s.path) for s in val_samples],
        })
    hardware = describe(accelerator.device, accelerator.num_processes)
    stop_reason = "finished all epochs"
    for epoch in range(first_epoch, recipe.epochs + 1):
        model.train()
        for module in frozen:
            module.eval()
        running, seen = 0.0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{recipe.epochs}", unit="batch", disable=not show, leave=False)
        for x, y in bar:
            with accelerator.autocast():
                if mix is None:
                    loss = loss_fn(model(x), y)
                else:  # a convex mix of two images is labelled with the same mix of their labels
                    lam = float(mix.sample())
                    perm = torch.randperm(len(y), device=y.device)
                    logits = model(lam * x + (1 - lam) * x[perm])
                    loss = lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y[perm])
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 2.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if average is not None:
                average.update(unwrapped)
            running += loss.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        row = {"epoch": epoch, "train_loss": running / max(seen, 1), "lr": scheduler.get_last_lr()[0]}

        if average is not None:
            average.sync()
        if len(val_ds):
            if average is not None:  # the average is what is kept; the live weights are logged beside it
                # Each pass over a loader draws a seed from the global generator; restoring it keeps the
                # run step for step the run without the average, so the live columns are that run.
                with torch.random.fork_rng(devices=[]):
                    live = _evaluate(model, val_loader, accelerator, domain.classes)
                row.update(live_val_accuracy=live["accuracy"], live_val_macro_f1=live["macro_f1"])
            metrics = _evaluate(average.module if average else model, val_loader, accelerator, domain.classes)
            row.update(val_accuracy=metrics["accuracy"], val_macro_f1=metrics["macro_f1"])
            improved = best is None or metrics["macro_f1"] > best["metrics"]["macro_f1"]
        else:
            metrics, improved = None, True  # no validation data: keep the latest weights
        row["seconds"] = time.time() - started
        log_rows.append(row)
        if show:
            tqdm.write(
                f"epoch {epoch}: loss {row['train_loss']:.4f}"
                + (f"  val acc {row['val_accuracy']:.4f}  val macro-F1 {row['val_macro_f1']:.4f}" if metrics else "")
                + ("  (best, saved)" if improved else "")
            )
        if improved:
            best = {"epoch": epoch, "metrics": metrics}
            stale = 0
            accelerator.wait_for_everyone()
            if main:
                save_checkpoint(average.module if average else unwrapped, config, out)
        else:
            stale += 1
        if main:
            _write_log(out / "train_log.csv", log_rows)
            _write_state(out, epoch=epoch, model=unwrapped, average=average, optimizer=optimizer, scheduler=scheduler,
                         generator=generator, log_rows=log_rows, best=best, stale=stale, seconds=time.time() - started)
        if recipe.patience and stale >= recipe.patience:  # same metrics on every process: same decision
            stop_reason = f"early stop: no better validation macro-F1 for {recipe.patience} epochs"
            break
        # Clocks differ between processes: the main process decides and the trigger is all-reduced,
        # so that every process leaves the loop together.
        if main and recipe.max_minutes and (time.time() - started) / 60 >= recipe.max_minutes:
            accelerator.set_trigger()
        if accelerator.check_trigger():
            stop_reason = f"time budget of {recipe.max_minutes} minutes reached"
            break

    wall = time.time() - started
    if best is None:  # resumed after the last epoch had already run: nothing left to train
        raise MedsynthError(f"--resume: {out} has no epoch left to train (--epochs {recipe.epochs}); raise --epochs")
    summary = {
        "out": str(out),
        "best_epoch": best["epoch"],
        "epochs_run": len(log_rows),
        "stop_reason": stop_reason,
        "seconds": wall,
        "hardware": hardware,
        "n_train": len(train_samples),
        "n_val": len(val_samples),
        "train_class_counts": dict(zip(domain.classes, counts.tolist())),
        "pretrained": pretrained_source,
        "val_metrics": best["metrics"],
        "synthetic_training_data": read_provenance(recipe.data),
    }
    if average is not None:
        summary["ema"] = {"decay": recipe.ema, "steps": average.updates, "final_decay": average.current_decay}
    if resumed_at:
        summary["resumed_at_epochs"] = resumed_at
    if main:
        card = classifier_card(config, recipe, summary, log_rows)
        atomic.write_text(out / "README.md", card)
        atomic.write_json(out / "train_summary.json", summary)
        if not stop_reason.startswith("time budget"):  # a run stopped by --max-minutes can still be resumed
            shutil.rmtree(out / STATE_DIR, ignore_errors=True)  # finished: the checkpoint is the product
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _write_log(path: Path, rows: list[dict]) -> None:
    order = ["epoch", "train_loss", "val_accuracy", "val_macro_f1", "live_val_accuracy", "live_val_macro_f1",
             "lr", "seconds"]
    fields = sorted({k for row in rows for k in row}, key=order.index)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buf.getvalue())
