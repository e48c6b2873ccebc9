"""Out-of-domain guard: does an input look like the real images of the domain at all?

A CNN answers confidently for anything, a holiday photo included. The guard measures how far an
input lies from the domain's real training images in a fixed, domain-agnostic feature space: the
ImageNet EfficientNet-Lite0 that medsynth installs (``features.Lite0Features``), fed the image
square-resized to the domain's training resolution (64 px) in the domain's channels. The features
are projected on the ``k`` leading principal axes of the within-class scatter and whitened; the
score is the squared Mahalanobis distance to the nearest class mean plus the whitened energy left
outside those axes. The threshold is a high quantile of the scores of real held-out images of the
domain (``quantile``, 0.99): about 1 in 100 real images is flagged by design.

Chosen by measurement (``benchmarks/ood.py``, benchmarks/RESULTS.md "Out-of-domain guard"): the
classifiers' own features, max-softmax and energy scores miss most chest CTs given to the brain
classifier; this space flags other modalities, photos and blank images nearly always.

One reference per domain, ``checkpoints/<domain>/ood.safetensors`` (tensors plus threshold and
provenance in its metadata; nothing is unpickled); it guards every classifier of the domain.
``find_reference`` looks beside a classifier checkpoint, then in the folder above it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import atomic
from .errors import MedsynthError

REFERENCE_NAME = "ood.safetensors"
FORMAT = "medsynth-ood"
DEFAULT_COMPONENTS = 64
DEFAULT_QUANTILE = 0.99


@dataclass
class Reference:
    """What the guard needs: the feature space's axes and scales, class means and the threshold."""

    mean: np.ndarray  # (D,) feature mean of the training images
    components: np.ndarray  # (k, D) leading within-class principal axes (orthonormal rows)
    scale: np.ndarray  # (k,) within-class standard deviation along each axis
    residual_scale: float  # within-class RMS per dimension outside the k axes
    class_means: np.ndarray  # (C, k) class means, projected
    threshold: float = float("inf")
    info: dict = field(default_factory=dict)  # quantile, image counts, folders: provenance for the report

    def score(self, features: np.ndarray) -> np.ndarray:
        """Out-of-domain score per row of ``features`` (N, D): larger is further from the domain."""
        x = np.asarray(features, dtype=np.float64) - self.mean
        proj = x @ self.components.T  # (N, k)
        residual = np.maximum((x * x).sum(1) - (proj * proj).sum(1), 0.0)
        dims = max(self.mean.shape[0] - self.components.shape[0], 1)
        z = (proj[:, None, :] - self.class_means[None]) / self.scale  # (N, C, k)
        nearest = (z * z).sum(2).min(1)
        return nearest + residual / (self.residual_scale**2 * dims) * min(dims, self.components.shape[0])

    def flags(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) > self.threshold


def fit(features: np.ndarray, labels: np.ndarray, n_components: int = DEFAULT_COMPONENTS) -> Reference:
    """A reference from training features (N, D) and integer class labels (N,); threshold unset."""
    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if f.ndim != 2 or len(f) != len(labels) or len(f) < 2:
        raise MedsynthError(f"ood.fit needs features (N, D) with N >= 2 and one label per row, got {f.shape}, "
                            f"{labels.shape}")
    classes = np.unique(labels)
    mean = f.mean(0)
    class_means = np.stack([f[labels == c].mean(0) for c in classes])
    within = f - class_means[np.searchsorted(classes, labels)]
    k = int(min(n_components, f.shape[1] - 1, len(f) - len(classes)))
    if k < 1:
        raise MedsynthError(f"too few training images ({len(f)}) for an out-of-domain reference")
    _, s, vt = np.linalg.svd(within, full_matrices=False)
    var = s**2 / max(len(f) - len(classes), 1)
    components = vt[:k]
    floor = max(var[0] * 1e-6, 1e-12)  # a flat direction must not divide by ~0
    scale = np.sqrt(np.maximum(var[:k], floor))
    rest = var[k:]
    residual_scale = float(np.sqrt(max(rest.sum() / max(f.shape[1] - k, 1), floor)))
    return Reference(mean=mean, components=components, scale=scale, residual_scale=residual_scale,
                     class_means=(class_means - mean) @ components.T)


def calibrate(reference: Reference, features: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> float:
    """Set and return the threshold: the ``quantile`` of the scores of held-out in-domain images."""
    if not 0.5 <= quantile < 1.0:
        raise MedsynthError(f"quantile must be in [0.5, 1), got {quantile}")
    scores = reference.score(features)
    if len(scores) < 10:
        raise MedsynthError(f"calibrating the out-of-domain threshold needs at least 10 held-out images, "
                            f"got {len(scores)}")
    reference.threshold = float(np.quantile(scores, quantile, method="higher"))
    reference.info["quantile"] = quantile
    reference.info["n_calibration"] = int(len(scores))
    return reference.threshold


def save(reference: Reference, checkpoint: str | Path) -> Path:
    """Write ``checkpoint/ood.safetensors`` atomically."""
    import torch
    from safetensors.torch import save_file

    path = Path(checkpoint) / REFERENCE_NAME
    tensors = {name: torch.from_numpy(np.ascontiguousarray(getattr(reference, name), dtype=np.float32))
               for name in ("mean", "components", "scale", "class_means")}
    meta = {"format": FORMAT, "threshold": repr(float(reference.threshold)),
            "residual_scale": repr(float(reference.residual_scale)), "info": json.dumps(reference.info)}
    atomic.write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path


def load(checkpoint: str | Path) -> Reference | None:
    """The reference saved beside a classifier, or None when it has none."""
    from safetensors import SafetensorError, safe_open

    path = Path(checkpoint) / REFERENCE_NAME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            arrays = {name: fh.get_tensor(name).astype(np.float64) for name in fh.keys()}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        return Reference(mean=arrays["mean"], components=arrays["components"], scale=arrays["scale"],
                         residual_scale=float(meta["residual_scale"]), class_means=arrays["class_means"],
                         threshold=float(meta["threshold"]), info=json.loads(meta.get("info", "{}")))
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise MedsynthError(f"{path}: not a valid out-of-domain reference ({exc}); rebuild it with "
                            f"'python -m medsynth ood-fit --classifier {Path(checkpoint)} ...'") from None


def verdict(reference: Reference | None, features: np.ndarray) -> dict:
    """The guard's answer for one image's features (1, D), as a JSON-ready dict."""
    if reference is None:
        return {"checked": False, "in_domain": None,
                "note": "this classifier has no out-of-domain reference (python -m medsynth ood-fit)"}
    score = float(reference.score(features)[0])
    in_domain = score <= reference.threshold
    quantile = reference.info.get("quantile", DEFAULT_QUANTILE)
    return {"checked": True, "in_domain": bool(in_domain), "score": round(score, 2),
            "threshold": round(float(reference.threshold), 2),
            "note": ("looks like the domain's images" if in_domain else
                     f"does not look like this domain's images: further from them than {quantile:.0%} of real "
                     "held-out images; the prediction is meaningless for it")}


def find_reference(checkpoint: str | Path, domain: str) -> Reference | None:
    """The domain's reference for a classifier checkpoint: in its folder, else in the folder above it
    (``checkpoints/<domain>/``); None when neither has one of this domain."""
    for folder in (Path(checkpoint), Path(checkpoint).parent):
        ref = load(folder)
        if ref is not None and ref.info.get("domain", domain) == domain:
            return ref
    return None


_EXTRACTOR = None
_EXTRACTOR_LOCK = threading.Lock()


def _lite0():
    """One ImageNet Lite0 per process, built on first use (thread-safe)."""
    global _EXTRACTOR
    with _EXTRACTOR_LOCK:
        if _EXTRACTOR is None:
            from .features import Lite0Features

            _EXTRACTOR = Lite0Features()
        return _EXTRACTOR


def guard_features(images, size: int) -> np.ndarray:
    """The guard's feature space: uint8 (H, W, C) images, square-resized to ``size``, through ImageNet Lite0."""
    from .transforms import square_resize_uint8

    return _lite0()([square_resize_uint8(np.asarray(im), size) for im in images])


#: An image whose pixels vary less than this (standard deviation, in 0..255 levels) is blank: no scan.
BLANK_STD = 2.0


def check(reference: Reference | None, images) -> list[dict]:
    """The guard's verdict for each image (uint8 (H, W, C) in the domain's channels). ``blank`` is true for
    an image of one flat colour, which is never in the domain, with or without a reference."""
    images = [np.asarray(im) for im in images]
    if reference is None:
        out = [verdict(None, np.zeros((1, 1))) for _ in images]
    else:
        feats = guard_features(images, int(reference.info.get("size", 64)))
        out = [verdict(reference, feats[i : i + 1]) for i in range(len(images))]
    for image, answer in zip(images, out):
        answer["blank"] = float(image.std()) < BLANK_STD
        if answer["blank"]:
            answer.update(in_domain=False, note="is blank (one flat colour): there is nothing to classify")
    return out


def headline(top_class: str, answer: dict) -> str:
    """What a prediction's headline says: the top class, or why there is none ("blank image",
    "out of domain"). The class probabilities of a blank or out-of-domain image are not meaningful."""
    if answer.get("blank"):
        return "blank image"
    if answer.get("in_domain") is False:
        return "out of domain"
    return top_class


def sentence(top_class: str, probability: float, answer: dict) -> str:
    """The verdict and the prediction in one plain sentence, for the CLI and the app's summary."""
    if answer.get("blank"):
        return (f"Blank image: it is one flat colour, so there is nothing to classify (the CNN's output, "
                f"{top_class} {probability:.1%}, means nothing here).")
    if answer.get("in_domain") is False:
        return (f"Out of domain: this image {answer['note'].split(';')[0]}, so the CNN's output ({top_class} "
                f"{probability:.1%}) is not meaningful.")
    if answer.get("in_domain") is True:
        return f"{top_class} ({probability:.1%}); the image looks like the domain's real images."
    return f"{top_class} ({probability:.1%}); not checked for out-of-domain input ({answer.get('note', '')})."


def fit_domain(domain: str, train: str | Path, calibration: str | Path, out: str | Path,
               components: int = DEFAULT_COMPONENTS, quantile: float = DEFAULT_QUANTILE, size: int = 64) -> dict:
    """Fit a domain's reference on real training images and calibrate it on other real images of the domain.

    Args:
        domain: the domain key; both folders hold one sub-folder per class.
        train: the real images the reference describes (e.g. the classifier's training folder).
        calibration: real held-out images, never in ``train``; the threshold is their ``quantile`` score.
        out: the folder to write ``ood.safetensors`` into (``checkpoints/<domain>`` guards every classifier
            of the domain; a classifier checkpoint folder guards that classifier only).
    Returns:
        a record: where it was written, the threshold, image counts and the share of calibration images flagged.
    """
    import time

    from .data import load_set
    from .domains import get_domain

    dom = get_domain(domain)
    started = time.perf_counter()
    train_set = load_set(train, dom.classes, dom.channels, size, require_all=True)
    calib_set = load_set(calibration, dom.classes, dom.channels, size)
    if set(train_set.files) & set(calib_set.files) or set(train_set.hashes) & set(calib_set.hashes):
        raise MedsynthError(f"{calibration} shares images with {train}; calibrate on held-out images only")
    reference = fit(guard_features(list(train_set.images), size), train_set.labels, components)
    calib_features = guard_features(list(calib_set.images), size)
    calibrate(reference, calib_features, quantile)
    reference.info.update({"domain": dom.key, "space": "lite0", "size": size, "channels": dom.channels,
                           "method": "mahalanobis", "components": int(reference.components.shape[0]),
                           "n_train": len(train_set.files), "train": str(train), "calibration": str(calibration),
                           "fitted": time.strftime("%Y-%m-%d")})
    Path(out).mkdir(parents=True, exist_ok=True)
    path = save(reference, out)
    return {"path": str(path), "domain": dom.key, "threshold": reference.threshold, "quantile": quantile,
            "n_train": len(train_set.files), "n_calibration": len(calib_set.files),
            "calibration_flagged": float(reference.flags(calib_features).mean()),
            "seconds": round(time.perf_counter() - started, 1)}
