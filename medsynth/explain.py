"""What a classifier looks at: LIME superpixels and Grad-CAM heat maps, with readable overlays.

Both explain the image as the classifier sees it (squared and resized to its input size), and
both go through ``Classifier``: LIME through the one prediction contract ``predict_proba``,
Grad-CAM through the same preprocessing plus one backward pass.

LIME (Ribeiro et al. 2016) with the ``lime`` package, made fast enough to wait for: a fixed SLIC
segmentation into a few dozen superpixels (deterministic, so seeds only change the perturbation
sample), few but batched perturbations at the classifier's own resolution, and progress reported
to a callback instead of lime's hard-wired tqdm bar. The defaults were chosen by
``benchmarks/explain.py`` (speed and top-5 stability across seeds; see benchmarks/RESULTS.md).

Grad-CAM (Selvaraju et al. 2017) on the last feature map of any timm CNN (``forward_features``):
weights = spatial mean of d score / d A, map = ReLU(sum_k weights_k A_k), upsampled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .classify import Classifier
from .errors import MedsynthError

from .recipes import LIME_DEFAULTS, METHODS  # noqa: F401 (re-exported)


@dataclass
class Explanation:
    method: str
    target: int
    target_class: str
    probability: float
    probabilities: dict[str, float]
    image: np.ndarray  # uint8 (S, S, C): the image as the classifier sees it
    overlay: np.ndarray  # uint8 (H, W, 3): the rendered figure
    seconds: float
    heatmap: np.ndarray | None = None  # Grad-CAM: float (S, S) in [0, 1]
    segments: np.ndarray | None = None  # LIME: int (S, S) superpixel ids
    mask: np.ndarray | None = None  # LIME: int (S, S): +1 supporting, -1 opposing, 0 neither
    weights: list[tuple[int, float]] = field(default_factory=list)  # LIME: (superpixel, weight), |weight| desc

    def summary(self) -> dict:
        out = {"method": self.method, "class": self.target_class, "probability": self.probability,
               "probabilities": self.probabilities, "seconds": round(self.seconds, 3)}
        if self.weights:
            out["top_superpixels"] = [{"id": int(s), "weight": float(w)} for s, w in self.weights[:10]]
        return out


def _resolve_target(clf: Classifier, target, probs: np.ndarray) -> int:
    if target is None:
        return int(probs.argmax())
    if isinstance(target, str):
        if target not in clf.classes:
            raise MedsynthError(f"unknown target class {target!r}; expected one of: {', '.join(clf.classes)}")
        return clf.classes.index(target)
    if not 0 <= int(target) < len(clf.classes):
        raise MedsynthError(f"target index {target} out of range 0..{len(clf.classes) - 1}")
    return int(target)


def explain(
    image,
    classifier: Classifier,
    method: str = "lime",
    target: int | str | None = None,
    *,
    num_samples: int = LIME_DEFAULTS["num_samples"],
    num_features: int = LIME_DEFAULTS["num_features"],
    n_segments: int = LIME_DEFAULTS["n_segments"],
    positive_only: bool = True,
    hide_color: float | None = None,
    seed: int = 0,
    batch_size: int = LIME_DEFAULTS["batch_size"],
    progress: Callable[[float], None] | None = None,
    render: bool = True,
) -> Explanation:
    """Explain ``classifier``'s prediction for ``image`` with LIME or Grad-CAM.

    Args:
        image: a PIL image or HWC/HW array, as ``Classifier.predict_proba`` takes.
        classifier: the model to explain.
        method: "lime" (superpixels for and against the class) or "gradcam" (a heat map).
        target: the class to explain, by name or index (default: the predicted class).
        num_samples, num_features, n_segments: LIME's perturbed images, superpixels shown, SLIC superpixels.
        positive_only: LIME shows only the regions that support the class (else opposing ones too).
        hide_color: LIME's fill for hidden superpixels (None: each superpixel's mean; or a 0..255 grey).
        seed: LIME's perturbation seed (the same seed gives the same explanation).
        batch_size: images per forward pass while LIME scores its perturbations.
        progress: called with the fraction done (0..1) while LIME runs.
        render: also draw the overlay (``False`` for benchmarks that need only the weights).

    Returns:
        An :class:`Explanation`: ``overlay`` (uint8 RGB), ``heatmap`` (Grad-CAM) or ``mask`` and
        ``weights`` (LIME), ``target_class``, ``probability`` (the number ``predict_proba`` gives) and
        ``seconds``.
    """
    if method not in METHODS:
        raise MedsynthError(f"unknown explanation method {method!r}; expected one of: {', '.join(METHODS)}")
    if num_samples < 10:
        raise MedsynthError(f"num_samples must be at least 10, got {num_samples}")
    if num_features < 1:
        raise MedsynthError(f"num_features must be at least 1, got {num_features}")
    if n_segments < 2:
        raise MedsynthError(f"n_segments must be at least 2, got {n_segments}")
    started = time.perf_counter()
    view = classifier.model_view(image)
    probs = classifier.predict_proba([image])[0]  # the image itself, as classify scores it: the same numbers
    label = _resolve_target(classifier, target, probs)
    common = dict(method=method, target=label, target_class=classifier.classes[label], probability=float(probs[label]),
                  probabilities={c: float(p) for c, p in zip(classifier.classes, probs)}, image=view)
    if method == "gradcam":
        heat = gradcam(view, classifier, label)
        exp = Explanation(**common, overlay=np.zeros((1, 1, 3), np.uint8), seconds=0.0, heatmap=heat)
    else:
        segments, weights = _lime(view, classifier, label, num_samples, n_segments, hide_color, seed, batch_size, progress)
        mask = np.zeros(segments.shape, dtype=np.int8)
        shown = [(s, w) for s, w in weights if w > 0 or not positive_only][:num_features]
        for s, w in shown:
            mask[segments == s] = 1 if w > 0 else -1
        exp = Explanation(**common, overlay=np.zeros((1, 1, 3), np.uint8), seconds=0.0, segments=segments,
                          mask=mask, weights=weights)
    exp.seconds = time.perf_counter() - started
    if render:
        exp.overlay = render_overlay(exp)
    return exp


def gradcam(view: np.ndarray, clf: Classifier, target: int) -> np.ndarray:
    """Grad-CAM map in [0, 1] at the view's resolution."""
    model = clf.model
    x = clf.preprocess([view])
    with torch.enable_grad():
        features = model.forward_features(x)  # A: (1, K, h, w), the last convolutional stage
        if features.ndim != 4:
            raise MedsynthError(f"Grad-CAM needs a CNN with a spatial feature map; {clf.config.arch} gives {tuple(features.shape)}")
        features = features.detach().requires_grad_(True)
        score = model.forward_head(features)[0, target]
        (grads,) = torch.autograd.grad(score, features)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # alpha_k = mean_ij d y_c / d A_k,ij
    cam = torch.relu((weights * features).sum(dim=1, keepdim=True))  # ReLU(sum_k alpha_k A_k)
    size = view.shape[:2]
    cam = torch.nn.functional.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0, 0]
    cam = cam.detach()
    peak = float(cam.max())
    return (cam / peak).cpu().numpy() if peak > 0 else np.zeros(size, dtype=np.float32)


def _segment(view: np.ndarray, n_segments: int, compactness: float = LIME_DEFAULTS["compactness"]) -> np.ndarray:
    from skimage.segmentation import slic

    gray = view.shape[2] == 1 or np.array_equal(view[..., 0], view[..., 1]) and np.array_equal(view[..., 1], view[..., 2])
    if gray:
        return slic(view[..., 0], n_segments=n_segments, compactness=compactness / 10, start_label=0, channel_axis=None)
    return slic(view, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1)


def segment(view: np.ndarray, n_segments: int = LIME_DEFAULTS["n_segments"]) -> np.ndarray:
    """LIME's fixed SLIC superpixels of a view (uint8 (S, S, C)): int (S, S) ids from 0, deterministic."""
    return _segment(view, n_segments)


def _silence_lime_tqdm() -> None:
    """lime.lime_image loops over its samples inside tqdm; progress goes to our callback instead."""
    import lime.lime_image as lime_image

    if getattr(lime_image.tqdm, "__name__", "") != "_no_bar":
        def _no_bar(iterable, *args, **kwargs):
            return iterable

        lime_image.tqdm = _no_bar


def _lime(view, clf, target, num_samples, n_segments, hide_color, seed, batch_size, progress):
    from lime.lime_image import LimeImageExplainer

    _silence_lime_tqdm()
    rgb = np.repeat(view, 3, axis=2) if view.shape[2] == 1 else view
    segments = _segment(view, n_segments)
    done = 0

    def classifier_fn(batch: np.ndarray) -> np.ndarray:
        nonlocal done
        probs = clf.predict_proba(np.asarray(batch, dtype=np.uint8), batch_size=batch_size)
        done += len(batch)
        if progress is not None:
            progress(min(1.0, done / num_samples))
        return probs

    explainer = LimeImageExplainer(random_state=seed)
    result = explainer.explain_instance(
        rgb, classifier_fn, labels=(target,), top_labels=None, hide_color=hide_color, num_features=100000,
        num_samples=num_samples, batch_size=batch_size, segmentation_fn=lambda _img: segments, random_seed=seed,
    )
    weights = sorted(result.local_exp[target], key=lambda sw: -abs(sw[1]))
    return segments, [(int(s), float(w)) for s, w in weights]


def top_superpixels(exp: Explanation, k: int = 5) -> set[int]:
    """The k superpixels with the largest positive weights."""
    positive = [s for s, w in exp.weights if w > 0]  # weights are sorted by |weight|, descending
    return set(positive[:k])


# -- overlays ---------------------------------------------------------------------------------------

def render_overlay(exp: Explanation, dpi: int = 100) -> np.ndarray:
    """The explanation as an RGB image: LIME regions with superpixel edges, or Grad-CAM with a colour bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from skimage.segmentation import find_boundaries

    gray = exp.image.shape[2] == 1
    base = exp.image[..., 0] if gray else exp.image
    fig = Figure(figsize=(4.6, 4.2) if exp.method == "gradcam" else (4.2, 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(base, cmap="gray" if gray else None, vmin=0, vmax=255, interpolation="nearest")
    title = f"{exp.target_class} ({exp.probability:.1%})"
    if exp.method == "gradcam":
        im = ax.imshow(exp.heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="Grad-CAM relevance")
        ax.set_title(f"Grad-CAM: {title}", fontsize=10)
    else:
        rgba = np.zeros((*exp.mask.shape, 4), dtype=float)
        rgba[exp.mask > 0] = (0.1, 0.85, 0.2, 0.45)  # supporting: green
        rgba[exp.mask < 0] = (0.9, 0.1, 0.1, 0.45)  # opposing: red
        edges = find_boundaries(exp.segments, mode="inner")
        rgba[edges] = (1.0, 0.9, 0.0, 0.55)  # superpixel boundaries: yellow
        ax.imshow(rgba, interpolation="nearest")
        handles = [Patch(color=(0.1, 0.85, 0.2), label="supports")]
        if (exp.mask < 0).any():
            handles.append(Patch(color=(0.9, 0.1, 0.1), label="opposes"))
        ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.8)
        ax.set_title(f"LIME: {title}", fontsize=10)
    ax.set_axis_off()
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_overlay(exp: Explanation, path: str | Path) -> None:
    from PIL import Image

    from . import atomic

    img = Image.fromarray(exp.overlay)
    atomic.write_with(path, lambda tmp: img.save(tmp, format="PNG"))
