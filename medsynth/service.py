"""The functions behind the app's events, testable without a server.

``ModelStore`` finds the checkpoints under a root folder (SPEC's layout:
``<root>/<domain>/{diffusion,classifier,classifier_synthetic}``) and loads each one once, lazily,
on first use; a checkpoint rewritten on disk (a finished training job) is loaded afresh. The
functions below turn UI inputs into package calls and package results into what components show.
"""

from __future__ import annotations

import csv
import io
import os
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .classify import Classifier, load_classifier
from .diffusion import ClassConditionalPipeline, load_pipeline
from .domains import DOMAINS, get_domain
from .errors import MedsynthError

#: Classifier kinds as the UI names them -> checkpoint sub-folder.
CLASSIFIER_KINDS = {"real-trained": "classifier", "synthetic-trained": "classifier_synthetic"}
MAX_IMAGES = 16  # per Generate click: bounded, so one visitor cannot occupy a shared CPU for minutes
MAX_STEPS = 100
MAX_SEED = 2**32 - 1
MAX_CACHED_MODELS = 6  # least recently used models are dropped beyond this


def default_checkpoint_root() -> Path:
    return Path(os.environ.get("MEDSYNTH_CHECKPOINTS", Path(__file__).resolve().parent.parent / "checkpoints"))


class ModelStore:
    """Lazily loaded, cached models per checkpoint folder (thread-safe)."""

    def __init__(self, root: str | Path | None = None, max_models: int = MAX_CACHED_MODELS) -> None:
        self.root = Path(root) if root is not None else default_checkpoint_root()
        self.max_models = max_models
        self._cache: OrderedDict[str, tuple[float, object]] = OrderedDict()  # path -> (files' stamp, model)
        self._lock = threading.Lock()  # guards the cache dict only; loading happens under a per-path lock
        self._path_locks: dict[str, threading.Lock] = {}

    def path(self, domain: str, folder: str) -> Path:
        return self.root / get_domain(domain).key / folder

    def has(self, domain: str, folder: str) -> bool:
        p = self.path(domain, folder)
        return (p / "model_index.json").is_file() if folder == "diffusion" else (p / "config.json").is_file()

    def domains_with(self, folder: str) -> list[str]:
        return [key for key in DOMAINS if self.models(key, folder)]

    def models(self, domain: str, prefix: str) -> list[str]:
        """Checkpoint folders of a domain whose name starts with ``prefix`` ("diffusion" or "classifier"):
        the shipped ones first, then those that training jobs wrote (``<prefix>-<timestamp>``), newest last."""
        base = self.root / get_domain(domain).key
        if not base.is_dir():
            return []
        marker = "model_index.json" if prefix == "diffusion" else "config.json"
        found = sorted(p.name for p in base.iterdir()
                       if p.name.startswith(prefix) and not p.name.startswith(".") and (p / marker).is_file())
        shipped = [n for n in found if n in ("diffusion", "classifier", "classifier_synthetic")]
        return shipped + [n for n in found if n not in shipped]

    def classifier_kinds(self, domain: str) -> list[str]:
        """What the Classify tab offers: 'real-trained', 'synthetic-trained', then job outputs by folder name."""
        folders = self.models(domain, "classifier")
        named = [kind for kind, folder in CLASSIFIER_KINDS.items() if folder in folders]
        return named + [f for f in folders if f not in CLASSIFIER_KINDS.values()]

    @staticmethod
    def _stamp(path: Path) -> float:
        """Newest modification time of the checkpoint's config and weights (not hidden staging folders)."""
        files = [p for p in (*path.glob("*.json"), *path.glob("*.safetensors"), *path.glob("[!.]*/*")) if p.is_file()]
        try:
            return max(p.stat().st_mtime for p in files)
        except (OSError, ValueError) as exc:  # being rewritten right now, or emptied
            raise MedsynthError(f"checkpoint {path} is being written or is incomplete ({exc}); try again") from None

    def _load(self, path: Path, loader: Callable):
        key = str(path)
        with self._lock:
            lock = self._path_locks.setdefault(key, threading.Lock())
        with lock:  # one load per checkpoint at a time; other checkpoints are not blocked
            stamp = self._stamp(path)
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None and hit[0] == stamp:
                    self._cache.move_to_end(key)
                    return hit[1]
            model = loader(path)  # a rewritten checkpoint (a finished job) is loaded afresh
            with self._lock:
                self._cache[key] = (stamp, model)
                self._cache.move_to_end(key)
                while len(self._cache) > self.max_models:
                    self._cache.popitem(last=False)
            return model

    def pipeline(self, domain: str, model: str = "diffusion") -> ClassConditionalPipeline:
        if model not in self.models(domain, "diffusion"):
            raise MedsynthError(
                f"no diffusion model {model!r} for {domain} under {self.root / domain}; train one with "
                f"'python -m medsynth train-diffusion --domain {domain} ...' or in the Train tab"
            )
        return self._load(self.path(domain, model), load_pipeline)

    def classifier(self, domain: str, kind: str = "real-trained") -> Classifier:
        if kind in CLASSIFIER_KINDS:
            folder = CLASSIFIER_KINDS[kind]
        elif kind in self.models(domain, "classifier"):
            folder = kind  # a classifier that a training job wrote
        else:
            raise MedsynthError(f"unknown classifier kind {kind!r}; expected one of: "
                                f"{', '.join(list(CLASSIFIER_KINDS) + self.models(domain, 'classifier'))}")
        if not self.has(domain, folder):
            raise MedsynthError(
                f"no {kind} classifier for {domain} under {self.path(domain, folder)}; train one with "
                f"'python -m medsynth train-classifier --domain {domain} ...' or in the Train tab"
            )
        return self._load(self.path(domain, folder), load_classifier)

    def card(self, domain: str, folder: str) -> str | None:
        readme = self.path(domain, folder) / "README.md"
        return readme.read_text(encoding="utf-8") if readme.is_file() else None


@dataclass
class Generated:
    image: np.ndarray  # uint8 (H, W, C)
    class_name: str
    seed: int

    @property
    def caption(self) -> str:
        return f"{self.class_name} · seed {self.seed}"


def whole_number(value, name: str, low: int, high: int) -> int:
    """A UI number field as an int in [low, high], or a clear error (empty fields arrive as None)."""
    if value is None or value == "":
        raise MedsynthError(f"{name} is empty; enter a whole number from {low} to {high}")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: infinity
        raise MedsynthError(f"{name} must be a whole number, got {value!r}") from None
    if isinstance(value, float) and not value.is_integer():
        raise MedsynthError(f"{name} must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise MedsynthError(f"{name} must be between {low} and {high}, got {number}")
    return number


def number_list(text, name: str, kind: type, low: float, high: float, example: str) -> tuple:
    """A UI text field of comma-separated numbers (``kind`` int or float, each in [low, high]), or a clear error."""
    parts = [p.strip() for p in str(text if text is not None else "").split(",") if p.strip()]
    if not parts:
        raise MedsynthError(f"{name} is empty; enter comma-separated numbers, e.g. {example}")
    values = []
    for part in parts:
        word = "a whole number" if kind is int else "a number"
        try:
            value = kind(part)
        except (TypeError, ValueError, OverflowError):
            raise MedsynthError(f"{name}: {part!r} is not {word}; enter comma-separated values, e.g. {example}") from None
        if not (low <= value <= high):  # NaN fails this too
            bounds = f"{low} to {high}" if kind is int else f"{low:g} to {high:g}"
            raise MedsynthError(f"{name}: {part} is outside {bounds}; e.g. {example}")
        values.append(value)
    return tuple(dict.fromkeys(values))  # each once, in the order given


def plan_jobs(classes: list[str], class_choice: str, count: int, seed: int) -> list[tuple[str, int]]:
    """(class, seed) per image: ``count`` of one class, or ``count`` spread over all classes in turn."""
    count = whole_number(count, "count", 1, MAX_IMAGES)
    seed = whole_number(seed, "seed", 0, MAX_SEED - count)
    if class_choice == "all classes":
        return [(classes[i % len(classes)], seed + i) for i in range(count)]
    if class_choice not in classes:
        raise MedsynthError(f"unknown class {class_choice!r}; expected one of: {', '.join(classes)}")
    return [(class_choice, seed + i) for i in range(count)]


def generate(
    store: ModelStore,
    domain: str,
    class_choice: str,
    count: int,
    sampler: str,
    steps: int,
    guidance: float,
    seed: int,
    on_step: Callable[[int, int, np.ndarray], None] | None = None,
    model: str = "diffusion",
    start_from: str = "mean",
) -> list[Generated]:
    """Sample images; ``on_step(step, total, preview)`` gets a uint8 preview of the first image.
    ``start_from``: "mean" or "prior" (see ``diffusion.STARTS``)."""
    import torch

    steps = whole_number(steps, "steps", 1, MAX_STEPS)
    if guidance is None or not 0 <= float(guidance) <= 20:
        raise MedsynthError(f"guidance must be between 0 and 20, got {guidance}")
    pipe = store.pipeline(domain, model)
    jobs = plan_jobs(pipe.classes, class_choice, count, seed)

    def callback(step: int, total: int, preview: torch.Tensor) -> None:
        if on_step is not None:
            on_step(step, total, (preview[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))

    images = pipe([c for c, _ in jobs], num_inference_steps=int(steps), guidance_scale=float(guidance),
                  generator=[torch.Generator().manual_seed(s) for _, s in jobs], sampler=sampler, callback=callback,
                  start_from=start_from or "mean")
    return [Generated(img, c, s) for img, (c, s) in zip(images, jobs)]


def to_display(image: np.ndarray) -> np.ndarray:
    """(H, W, 1) -> (H, W) for image components; colour images unchanged."""
    return image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image


def write_zip(items: list[Generated], path: str | Path, domain: str) -> Path:
    """All images as PNGs plus labels.csv (file, class, seed), written atomically."""
    from PIL import Image

    from . import atomic

    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            rows = io.StringIO()
            writer = csv.writer(rows)
            writer.writerow(["file", "class", "seed", "domain"])
            for item in items:
                name = f"{item.class_name}/{item.class_name}_{item.seed:06d}.png"
                buf = io.BytesIO()
                Image.fromarray(to_display(item.image)).save(buf, format="PNG")
                zf.writestr(name, buf.getvalue())
                writer.writerow([name, item.class_name, item.seed, domain])
            zf.writestr("labels.csv", rows.getvalue())
    return path


def read_image(source, domain: str) -> np.ndarray:
    """An uploaded file path (PNG, JPEG, DICOM, ...) or an array -> uint8 (H, W, C) in the domain's channels."""
    from .io import load_image, to_channels

    channels = get_domain(domain).channels
    if source is None:
        raise MedsynthError("no image: upload a file, pick an example, or send a generated image")
    if isinstance(source, np.ndarray):
        arr = source if source.dtype == np.uint8 else np.clip(source, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        return to_channels(arr, channels)
    return load_image(source, channels)


def classify(store: ModelStore, source, domain: str, kind: str) -> dict[str, float]:
    """Every class probability, for a gr.Label."""
    clf = store.classifier(domain, kind)
    probs = clf.predict_proba([read_image(source, domain)])[0]
    return {c: float(p) for c, p in zip(clf.classes, probs)}


def explain_both(store: ModelStore, source, domain: str, kind: str, seed: int = 0,
                 progress: Callable[[float], None] | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """LIME and Grad-CAM overlays side by side, with a one-line summary."""
    from .explain import explain

    clf = store.classifier(domain, kind)
    image = read_image(source, domain)
    seed = whole_number(seed, "LIME seed", 0, MAX_SEED)
    cam = explain(image, clf, "gradcam")
    lime = explain(image, clf, "lime", seed=seed, progress=progress)
    summary = (f"{kind} classifier: **{lime.target_class}** ({lime.probability:.1%}). "
               f"LIME {lime.seconds:.1f} s, Grad-CAM {cam.seconds:.2f} s.")
    return lime.overlay, cam.overlay, summary
