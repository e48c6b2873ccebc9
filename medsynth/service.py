"""The functions behind the app's events, testable without a server.

``ModelStore`` finds the checkpoints under a root folder (the layout of docs/checkpoints.md:
``<root>/<domain>/{diffusion,classifier,classifier_synthetic}``) and the models that the app's
training jobs wrote under a second folder, and loads each one once, lazily,
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
    """``MEDSYNTH_CHECKPOINTS`` (a folder, or a Hub id ``hf://OWNER/NAME`` holding <domain>/<model>/), else the
    repository's ``checkpoints/`` beside the package."""
    from .hub import is_hub_id, resolve

    given = os.environ.get("MEDSYNTH_CHECKPOINTS")
    if given and is_hub_id(given):
        return resolve(given, "checkpoints")
    return Path(given or Path(__file__).resolve().parent.parent / "checkpoints")


SHIPPED_FOLDERS = ("diffusion", "upsampler", "classifier", "classifier_synthetic")
#: Names a user model may not take: the shipped folders and the kinds the Classify tab names them by.
RESERVED_NAMES = (*SHIPPED_FOLDERS, *CLASSIFIER_KINDS)


def _plain_name(value, what: str) -> str:
    """A model name from the UI or an API client: one plain folder name, or a clear error."""
    if not isinstance(value, str) or not value or value in (".", "..") or Path(value).name != value:
        raise MedsynthError(f"{what} must be one model name from the list, got {str(value)[:60]!r}")
    return value


class ModelStore:
    """Lazily loaded, cached models per checkpoint folder (thread-safe).

    Args:
        root: the shipped checkpoints, ``<root>/<domain>/{diffusion,classifier,classifier_synthetic}``
            (and older job outputs named ``diffusion-*`` / ``classifier-*``).
        user_root: models that the app's Train tab wrote, ``<user_root>/<domain>/<name>``, any name;
            a diffusion model is a folder with ``model_index.json``, a classifier one with ``config.json``.
        max_models: how many loaded models stay cached (least recently used are dropped).
    """

    def __init__(self, root: str | Path | None = None, max_models: int = MAX_CACHED_MODELS,
                 user_root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_checkpoint_root()
        self.user_root = Path(user_root) if user_root is not None else None
        self.max_models = max_models
        self._cache: OrderedDict[str, tuple[float, object]] = OrderedDict()  # path -> (files' stamp, model)
        self._lock = threading.Lock()  # guards the cache dict only; loading happens under a per-path lock
        self._path_locks: dict[str, threading.Lock] = {}
        self._ood: dict[tuple[str, float], object] = {}  # (file, mtime) -> ood.Reference

    def _user_models(self, domain: str, prefix: str) -> list[str]:
        base = self.user_root / get_domain(domain).key if self.user_root is not None else None
        if base is None or not base.is_dir():
            return []
        is_diffusion = prefix == "diffusion"
        return sorted(p.name for p in base.iterdir() if not p.name.startswith(".") and p.name not in RESERVED_NAMES
                      and (p / "model_index.json").is_file() == is_diffusion
                      and (is_diffusion or (p / "config.json").is_file()))

    def path(self, domain: str, folder: str) -> Path:
        key = get_domain(domain).key
        folder = _plain_name(folder, "a model")  # never a path: '..', '/', 'a/b' are refused
        if self.user_root is not None and folder not in SHIPPED_FOLDERS and not (self.root / key / folder).is_dir() \
                and (self.user_root / key / folder).is_dir():
            return self.user_root / key / folder
        return self.root / key / folder

    def has(self, domain: str, folder: str) -> bool:
        p = self.path(domain, folder)
        return (p / "model_index.json").is_file() if folder == "diffusion" else (p / "config.json").is_file()

    def domains_with(self, folder: str) -> list[str]:
        return [key for key in DOMAINS if self.models(key, folder)]

    def models(self, domain: str, prefix: str) -> list[str]:
        """Model names of a domain, ``prefix`` "diffusion" or "classifier": the shipped ones first, then
        older job outputs under the shipped root (``<prefix>-<timestamp>``), then ``user_root``'s by name."""
        base = self.root / get_domain(domain).key
        found = []
        if base.is_dir():
            marker = "model_index.json" if prefix == "diffusion" else "config.json"
            found = sorted(p.name for p in base.iterdir()
                           if p.name.startswith(prefix) and not p.name.startswith(".") and (p / marker).is_file())
        shipped = [n for n in found if n in SHIPPED_FOLDERS]
        rest = [n for n in found if n not in shipped]
        return shipped + rest + [n for n in self._user_models(domain, prefix) if n not in found]

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
        _plain_name(model, "the diffusion model")
        if model not in self.models(domain, "diffusion"):
            raise MedsynthError(
                f"no diffusion model {model!r} for {domain}; choose one from the list, or train one with "
                f"'python -m medsynth train-diffusion --domain {domain} ...' or in the Train tab"
            )
        return self._load(self.path(domain, model), load_pipeline)

    def upsampler(self, domain: str, model: str = "diffusion"):
        """The second stage that diffusion model ``model`` names (its ``cascade.json``), or None."""
        from .upsampler import check_cascade, load_upsampler, named_upsampler

        pipe = self.pipeline(domain, model)
        path = named_upsampler(self.path(domain, model))
        if path is None:
            return None
        stage = self._load(path, load_upsampler)
        check_cascade(pipe, stage, f"{model}'s upsampler")
        return stage

    def classifier(self, domain: str, kind: str = "real-trained") -> Classifier:
        _plain_name(kind, "the classifier")
        if kind in CLASSIFIER_KINDS:
            folder = CLASSIFIER_KINDS[kind]
        elif kind in self.models(domain, "classifier"):
            folder = kind  # a classifier that a training job wrote
        else:
            raise MedsynthError(f"unknown classifier kind {kind!r}; expected one of: "
                                f"{', '.join(list(CLASSIFIER_KINDS) + self.models(domain, 'classifier'))}")
        if not self.has(domain, folder):
            raise MedsynthError(
                f"no {kind} classifier is installed for {domain}; train one with "
                f"'python -m medsynth train-classifier --domain {domain} ...' or in the Train tab"
            )
        return self._load(self.path(domain, folder), load_classifier)

    def size_profile(self, domain: str, kind: str = "real-trained") -> dict | None:
        """The classifier's measured accuracy by input size (``resolution.profile``), or None."""
        from .resolution import profile

        folder = CLASSIFIER_KINDS.get(_plain_name(kind, "the classifier"), kind)
        return profile(self.path(domain, folder))

    def ood_reference(self, domain: str, kind: str = "real-trained"):
        """The out-of-domain reference guarding a classifier: beside it, else the domain's shipped one."""
        from . import ood

        folder = CLASSIFIER_KINDS.get(_plain_name(kind, "the classifier"), kind)
        candidates = [self.path(domain, folder), self.root / get_domain(domain).key]
        for path in candidates:
            file = path / ood.REFERENCE_NAME
            if file.is_file():
                key = (str(file), file.stat().st_mtime)
                with self._lock:
                    hit = self._ood.get(key)
                if hit is None:
                    try:
                        hit = ood.load(path)
                    except MedsynthError as exc:  # damaged: classify still answers, unchecked, and says why
                        import warnings

                        warnings.warn(str(exc))
                        return None
                    with self._lock:
                        self._ood[key] = hit
                if hit.info.get("domain", domain) == domain:
                    return hit
        return None

    def card(self, domain: str, folder: str) -> str | None:
        readme = self.path(domain, folder) / "README.md"
        return readme.read_text(encoding="utf-8") if readme.is_file() else None


@dataclass
class Generated:
    image: np.ndarray  # uint8 (H, W, C)
    class_name: str
    seed: int
    marks: dict | None = None  # the synthetic-image marking fields (synthetic.marking) its PNG carries

    def save_png(self, path: str | Path) -> Path:
        """The image as a PNG marked as synthetic (IPTC trainedAlgorithmicMedia + medsynth provenance)."""
        from .synthetic.marking import save_marked_png

        save_marked_png(self.image, path, **(self.marks or {"class": self.class_name, "seed": self.seed}))
        return Path(path)

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


def real_number(value, name: str, low: float, high: float) -> float:
    """A UI number field as a finite float in [low, high], or a clear error."""
    if value is None or value == "":
        raise MedsynthError(f"{name} is empty; enter a number from {low:g} to {high:g}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise MedsynthError(f"{name} must be a number, got {value!r}") from None
    if not low <= number <= high:  # NaN fails this too
        raise MedsynthError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
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
    on_stage: Callable[[str, int], None] | None = None,
) -> list[Generated]:
    """Sample images; ``on_step(step, total, preview)`` gets a uint8 preview of the first image.
    ``start_from``: "mean" or "prior" (see ``diffusion.STARTS``). Where the model names an upsampler
    (the cascade), its base images are enlarged by it, each with a fresh generator of its seed, as the
    ``generate`` command does; ``on_stage(name, size)`` is told "base" or "upsampler" and the stage's
    output size in px as each stage starts, and ``on_step`` then counts that stage's steps."""
    import torch

    from .recipes import SAMPLERS, STARTS

    steps = whole_number(steps, "steps", 1, MAX_STEPS)
    guidance = real_number(guidance, "guidance", 1.0, 8.0)  # the app's slider; 1 = no guidance
    if sampler not in SAMPLERS:
        raise MedsynthError(f"unknown sampler {sampler!r}; expected one of: {', '.join(SAMPLERS)}")
    if (start_from or "mean") not in STARTS:
        raise MedsynthError(f"unknown start {start_from!r}; expected one of: {', '.join(STARTS)}")
    plan_jobs(get_domain(domain).classes, class_choice, count, seed)  # bad counts and seeds fail before loading
    pipe = store.pipeline(domain, model)
    jobs = plan_jobs(pipe.classes, class_choice, count, seed)

    def callback(step: int, total: int, preview: torch.Tensor) -> None:
        if on_step is not None:
            on_step(step, total, (preview[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))

    stage = store.upsampler(domain, model)
    if on_stage is not None:
        on_stage("base", int(pipe.unet.config.sample_size))
    images = pipe([c for c, _ in jobs], num_inference_steps=int(steps), guidance_scale=float(guidance),
                  generator=[torch.Generator().manual_seed(s) for _, s in jobs], sampler=sampler, callback=callback,
                  start_from=start_from or "mean")
    if stage is not None:
        if on_stage is not None:
            on_stage("upsampler", int(pipe.unet.config.sample_size) * stage.scale)
        images = stage(images, generator=[torch.Generator().manual_seed(s) for _, s in jobs], callback=callback)
    size = int(images.shape[1])
    common = dict(generator=f"{get_domain(domain).key}/{model}", domain=get_domain(domain).key, sampler=sampler,
                  steps=int(steps), guidance=float(guidance), start=start_from or "mean", resolution=size,
                  upsampler=f"{get_domain(domain).key}/{model}/cascade.json" if stage is not None else None,
                  upsample_steps=stage.config.num_inference_steps if stage is not None else None,
                  upsample_noise=stage.config.noise_level if stage is not None else None)
    return [Generated(img, c, s, {**common, "class": c, "seed": s}) for img, (c, s) in zip(images, jobs)]


def to_display(image: np.ndarray) -> np.ndarray:
    """(H, W, 1) -> (H, W) for image components; colour images unchanged."""
    return image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image


def write_zip(items: list[Generated], path: str | Path, domain: str) -> Path:
    """All images as PNGs marked as synthetic, plus labels.csv (file, class, seed), written atomically."""
    from . import atomic
    from .synthetic.marking import png_info

    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            rows = io.StringIO()
            writer = csv.writer(rows)
            writer.writerow(["file", "class", "seed", "domain"])
            for item in items:
                name = f"{item.class_name}/{item.class_name}_{item.seed:06d}.png"
                from PIL import Image

                buf = io.BytesIO()
                marks = item.marks or {"class": item.class_name, "seed": item.seed, "domain": domain}
                Image.fromarray(to_display(item.image)).save(buf, format="PNG", pnginfo=png_info(**marks))
                zf.writestr(name, buf.getvalue())
                writer.writerow([name, item.class_name, item.seed, domain])
            zf.writestr("labels.csv", rows.getvalue())
    return path


def display_name(source) -> str:
    """How messages name an uploaded file: its own name, never the server's temporary folder."""
    return Path(str(source)).name if isinstance(source, (str, os.PathLike)) else "the image"


def read_image(source, domain: str, frame: int | None = None) -> np.ndarray:
    """An uploaded file path (PNG, JPEG, DICOM, NIfTI, ...) or an array -> uint8 (H, W, C) in the domain's
    channels. ``frame``: a multi-frame file's frame or a volume's slice (default: the middle one)."""
    from .io import load_image, to_channels

    channels = get_domain(domain).channels
    if source is None:
        raise MedsynthError("no image: upload a file, pick an example, or send a generated image")
    if isinstance(source, np.ndarray):
        arr = source if source.dtype == np.uint8 else np.clip(source, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        return to_channels(arr, channels)
    if isinstance(source, dict) and "path" in source:  # a FileData-like dict from an API client
        source = source["path"]
    if not isinstance(source, (str, os.PathLike)):
        raise MedsynthError(f"expected an image file, got {type(source).__name__}")
    return load_image(source, channels, name=display_name(source), frame=frame)


def frames(source) -> int:
    """How many frames (multi-frame DICOM, animation) or slices (NIfTI) an uploaded file holds; 1 for an
    array or a file that cannot be read (``read_image`` then gives the message)."""
    from .io import frame_count

    if isinstance(source, dict) and "path" in source:
        source = source["path"]
    if not isinstance(source, (str, os.PathLike)):
        return 1
    try:
        return frame_count(source, name=display_name(source))
    except MedsynthError:
        return 1


def frame_note(source, frame: int | None) -> str:
    """" (frame 3 of 10)" for a file with several frames or slices, else ""."""
    count = frames(source)
    if count <= 1:
        return ""
    shown = count // 2 if frame is None else int(frame)
    return f" (frame/slice {shown} of {count}, counted from 0)"


def upscale_for_display(image: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor so a 64-px image is visible pixel for pixel."""
    factor = max(1, -(-min_side // max(min(image.shape[:2]), 1)))
    image = to_display(image)
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def preview(store: ModelStore, source, domain: str, kind: str, frame: int | None = None) -> np.ndarray:
    """What the chosen classifier sees of an uploaded file (its frame or slice), enlarged for the screen."""
    clf = store.classifier(domain, kind)
    return upscale_for_display(clf.model_view(read_image(source, domain, frame)))


def domain_note(verdict: dict) -> str:
    """The out-of-domain guard's verdict as one Markdown line."""
    if verdict.get("in_domain") is False:
        return f"⚠️ **Out of domain:** this image {verdict['note']}."
    if verdict.get("in_domain") is True:
        return "In domain: the image looks like the domain's real images."
    return f"Not checked for out-of-domain input: {verdict.get('note', '')}."


def assess(store: ModelStore, source, domain: str, kind: str,
           frame: int | None = None) -> tuple[dict[str, float], dict]:
    """Every class probability (for a gr.Label) and the out-of-domain guard's verdict."""
    from . import ood

    from .resolution import warning_for

    clf = store.classifier(domain, kind)
    image = read_image(source, domain, frame)
    probs = clf.predict_proba([image])[0]
    verdict = ood.check(store.ood_reference(domain, kind), [image])[0]
    # the input's own resolution and, below the measured drop, a warning: kept apart from the domain check
    verdict["resolution"] = warning_for(store.size_profile(domain, kind), image.shape)
    return {c: float(p) for c, p in zip(clf.classes, probs)}, verdict


def classify(store: ModelStore, source, domain: str, kind: str, frame: int | None = None) -> dict[str, float]:
    """Every class probability, for a gr.Label."""
    return assess(store, source, domain, kind, frame)[0]


def synthetic_note(source) -> str:
    """A Markdown line when the uploaded file says it is synthetic (medsynth's or an IPTC XMP mark), else ""."""
    from .synthetic.marking import describe, read_marking

    if not isinstance(source, (str, os.PathLike)):
        return ""
    marking = read_marking(source)
    return f"\n\n**Synthetic image:** {describe(marking)}." if marking else ""


def headline(probs: dict[str, float], verdict: dict) -> str:
    """The prediction's headline: the top class, or "blank image" / "out of domain" (``ood.headline``)."""
    from .ood import headline as ood_headline

    return ood_headline(max(probs, key=probs.get), verdict)


def size_note(verdict: dict) -> str:
    """The input's own resolution as a Markdown line, with the small-scan warning where it applies."""
    size = verdict.get("resolution")
    if not size:
        return ""
    if size.get("low"):
        return f"\n\n⚠️ **Small scan:** {size['note']}"
    return f"\n\nInput: {size['width']}x{size['height']} px."


def summary_line(kind: str, probs: dict[str, float], verdict: dict, source=None, frame: int | None = None) -> str:
    top = max(probs, key=probs.get)
    head = headline(probs, verdict)
    if head != top:  # blank or out of domain: no diagnosis, and the probabilities say they mean nothing
        return (f"{kind} classifier: **{head}**{frame_note(source, frame)}: no class is given. "
                f"{domain_note(verdict)} The class probabilities are what the CNN outputs for any input "
                f"(top: {top}, {probs[top]:.1%}) and are **not meaningful** for this image.{synthetic_note(source)}")
    return (f"{kind} classifier: **{top}** ({probs[top]:.1%}){frame_note(source, frame)}.\n\n{domain_note(verdict)}"
            f"{size_note(verdict)}{synthetic_note(source)}")


def explain_both(store: ModelStore, source, domain: str, kind: str, seed: int = 0,
                 progress: Callable[[float], None] | None = None, frame: int | None = None
                 ) -> tuple[dict[str, float], np.ndarray | None, np.ndarray | None, str, dict]:
    """Probabilities (exactly as ``classify``), LIME and Grad-CAM overlays (None for a blank image, which has
    nothing to explain), a summary, and the out-of-domain verdict."""
    from .explain import explain

    seed = whole_number(seed, "LIME seed", 0, MAX_SEED)
    clf = store.classifier(domain, kind)
    image = read_image(source, domain, frame)
    probs, verdict = assess(store, source, domain, kind, frame)
    if verdict.get("blank"):  # one flat colour: every region is the same, so there is nothing to attribute
        return probs, None, None, (summary_line(kind, probs, verdict, source, frame)
                                   + " **Nothing to explain:** a blank image has no regions that could support "
                                   "one class more than another; LIME and Grad-CAM were not run."), verdict
    cam = explain(image, clf, "gradcam")
    lime = explain(image, clf, "lime", seed=seed, progress=progress)
    from .explain_check import faithfulness_line

    summary = (summary_line(kind, probs, verdict, source, frame)
               + f" LIME {lime.seconds:.1f} s, Grad-CAM {cam.seconds:.2f} s (both explain **{lime.target_class}**).")
    # beside every overlay: does the map mean anything for this scan? (~0.05 s each, one batched forward pass)
    checks = {name: faithfulness_line(clf, image, exp) for name, exp in (("LIME", lime), ("Grad-CAM", cam))}
    summary += "\n\n**Do the maps mean anything here?** " + " ".join(
        f"{name}: {check['text']}." for name, check in checks.items())
    if verdict.get("in_domain") is False:
        summary += (f" The image is out of domain: the overlays show where the CNN looks to produce "
                    f"{lime.target_class}, a class that is not meaningful for this image, not a finding.")
    return probs, upscale_for_display(lime.overlay), upscale_for_display(cam.overlay), summary, verdict


def sampling_defaults(store: ModelStore, domain: str, model: str = "diffusion") -> dict:
    """The settings the model's audited synthetic set was drawn with (its ``audit.json``), else the
    shipped recipe's defaults: sampler, steps, guidance, start_from."""
    import json

    from .recipes import DEFAULT_SAMPLING

    found = dict(DEFAULT_SAMPLING)
    if not isinstance(model, str) or model not in store.models(domain, "diffusion"):
        return found
    try:
        record = json.loads((store.path(domain, model) / "audit.json").read_text(encoding="utf-8"))
        gen = record.get("generation") or {}
        found.update({k: gen[k] for k in DEFAULT_SAMPLING if k in gen})
    except (OSError, ValueError, AttributeError, MedsynthError):
        pass
    return found
