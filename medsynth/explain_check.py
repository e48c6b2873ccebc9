"""Do the explanations explain? Faithfulness, sanity, stability and plausibility of saliency maps.

Everything works on the image as the classifier sees it (``Classifier.model_view``: uint8 (S, S, C) at the
classifier's input size) and asks the classifier only through ``Classifier.predict_proba``, one batched call
per curve.

The measures:

* **Deletion / insertion** (Petsiuk et al. 2018, RISE): 8-px patches (1/16 of the side) are replaced by a
  strongly blurred copy of the image in order of decreasing mean relevance (deletion), or restored from the
  blurred copy in that order (insertion), and the target probability is traced. A faithful map makes the
  deletion curve fall fast (low area under the curve, AUC) and the insertion curve rise fast (high AUC),
  compared with random orderings of the same patches (the chance level, a mean over a few seeded orderings;
  random single pixels would make salt-and-pepper noise that lowers any CNN's probability faster than a region).
* **Sanity** (Adebayo et al. 2018, cascading randomisation): the network's weights are re-initialised block by
  block from the top (head first), and the map is recomputed. A map that explains the *model* changes; one
  that merely shows edges of the image does not. Reported as Spearman rank correlation and SSIM to the
  original map after each step (low is good).
* **Stability**: maps under small Gaussian input noise (sigma 2 grey levels) and, for LIME, across seeds;
  Spearman rank correlation to the clean map (high is good).
* **Plausibility**: the share of the positive relevance inside a simple foreground mask (the head, the body,
  the stained cells) and inside a border frame (the outer 8 % of the image, where shortcut features such as
  text, rulers and scanner borders live), each beside the share a uniform map would give (the chance level).
* **Compare**: Spearman rank correlation between two CNNs' maps of the same image (e.g. a CNN trained on real
  images vs one trained on synthetic images); a CNN with another input size explains its own view of the image
  and its map is resized (bilinear) to the first CNN's size.
* **Faithfulness line** (per image, cheap): hide the k most relevant regions and k random ones and report the
  drop of the class probability in one sentence.

Methods: "gradcam" and "lime" from :mod:`medsynth.explain`, plus "occlusion" (captum's ``Occlusion``: the drop
of the class probability when a square patch of the preprocessed input is replaced by the blurred copy).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import atomic
from .classify import Classifier, load_classifier
from .data import scan_dataset
from .domains import get_domain
from .errors import MedsynthError
from .explain import Explanation, explain, segment
from .io import load_image

CHECK_METHODS = ("gradcam", "lime", "occlusion")
#: Methods whose sanity check runs by default (LIME's is slow: one LIME run per randomisation step).
SANITY_METHODS = ("gradcam", "occlusion")
BORDER = 0.08  # the outer 8 % of each side: the border frame
NOISE_SIGMA = 2.0  # stability: Gaussian noise in uint8 grey levels (2/255)
FOREGROUND_NAMES = {"brain_mri": "the head", "covid_ct": "the body", "all_blood": "the stained cells"}


# -- small helpers -----------------------------------------------------------------------------------

def _view(clf: Classifier, image) -> np.ndarray:
    """The image as the classifier sees it; an (S, S, C) uint8 array of the right shape is taken as it is."""
    s, c = clf.config.input_size, clf.config.channels
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (s, s, c):
        return image
    return clf.model_view(image)


def _gray(view: np.ndarray) -> np.ndarray:
    if view.shape[2] == 1:
        return view[..., 0].astype(np.float32)
    return view.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])


def blurred(view: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """A strongly blurred copy (Gaussian, sigma = S/12 px by default): the fill for removed pixels."""
    from scipy.ndimage import gaussian_filter

    sigma = view.shape[0] / 12 if sigma is None else sigma
    out = gaussian_filter(view.astype(np.float32), sigma=(sigma, sigma, 0), mode="nearest")
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _baseline(view: np.ndarray, kind: str) -> np.ndarray:
    if kind == "blur":
        return blurred(view)
    if kind == "black":
        return np.zeros_like(view)
    if kind == "mean":
        return np.broadcast_to(view.reshape(-1, view.shape[2]).mean(0).round().astype(np.uint8), view.shape).copy()
    raise MedsynthError(f"unknown baseline {kind!r}; expected blur, black or mean")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps; 1.0 for identical maps, else 0.0 when either is constant (a flat
    map ranks nothing)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.array_equal(a, b):
        return 1.0
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    r = spearmanr(a, b).statistic
    return float(r) if np.isfinite(r) else 0.0


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    def norm(m):
        m = np.asarray(m, np.float64)
        lo, hi = m.min(), m.max()
        return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)

    return float(structural_similarity(norm(a), norm(b), data_range=1.0))


def _auc(y: np.ndarray, x: np.ndarray) -> float:
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    return float(((y[1:] + y[:-1]) * np.diff(x)).sum() / 2)


def _pct(p: float) -> str:
    return f"{100 * p:.0f} %"


# -- foreground ------------------------------------------------------------------------------------

def foreground_mask(image: np.ndarray, domain) -> np.ndarray:
    """Where the anatomy is: bool (S, S), the same shape as the image's first two axes.

    Rules (deliberately simple, so that they can be read and checked):

    * grayscale domains (brain_mri: the head; covid_ct: the body with the lung fields): the grey image is
      smoothed (Gaussian, sigma = S/128 * 1.5 px), thresholded at Otsu's level, and the largest connected
      component is kept together with every component at least a quarter of its size (the two halves of a
      cropped chest), and the mask is their convex hull: it takes in what is dark inside the anatomy (the lung
      fields, even where a crop cuts them open at the image edge; ventricles) and leaves out the air around it.
      A crop that the body fills gives a mask of nearly the whole image, and plausibility then says little.
    * all_blood (RGB smears, cells stained purple on a pale background): the saturation (max - min over RGB,
      which is low on the pale background) is smoothed and thresholded at Otsu's level; holes are filled and
      specks under 0.1 % of the image are dropped.

    A mask under 2 % of the image (a blank or unusual image) falls back to the whole image.
    """
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import convex_hull_image

    key = get_domain(domain).key
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    size = img.shape[0]
    if key == "all_blood" and img.shape[2] == 3:
        f = img.astype(np.float32)
        signal = f.max(axis=2) - f.min(axis=2)
        signal = gaussian(signal, sigma=max(1.0, size / 128), preserve_range=True)
        mask = signal > threshold_otsu(signal) if np.ptp(signal) > 0 else np.zeros(signal.shape, bool)
        mask = ndi.binary_fill_holes(mask)
        labels, n = ndi.label(mask)
        if n:
            areas = np.bincount(labels.ravel())
            areas[0] = 0
            mask = areas[labels] > max(1, int(0.001 * mask.size))
    else:
        gray = gaussian(_gray(img), sigma=max(1.0, 1.5 * size / 128), preserve_range=True)
        mask = gray > threshold_otsu(gray) if np.ptp(gray) > 0 else np.zeros(gray.shape, bool)
        labels, n = ndi.label(mask)
        if n:
            areas = np.bincount(labels.ravel())[1:]
            keep = np.flatnonzero(areas >= areas.max() / 4) + 1
            mask = np.isin(labels, keep)
        if mask.any():
            mask = convex_hull_image(mask)
    mask = np.asarray(mask, bool)
    if mask.mean() < 0.02:
        mask = np.ones(mask.shape, bool)
    return mask


def border_mask(shape: tuple[int, int], border: float = BORDER) -> np.ndarray:
    """bool (H, W): the outer ``border`` share of each side (at least one pixel)."""
    h, w = shape
    bh, bw = max(1, int(round(border * h))), max(1, int(round(border * w)))
    frame = np.zeros((h, w), bool)
    frame[:bh], frame[-bh:], frame[:, :bw], frame[:, -bw:] = True, True, True, True
    return frame


# -- maps ------------------------------------------------------------------------------------------

def relevance_map(explanation: Explanation, positive_only: bool = True) -> np.ndarray:
    """float (S, S): Grad-CAM's or occlusion's heat map; for LIME each superpixel's weight (positive ones only
    by default, the ones that support the class, which is what deletion removes first)."""
    if explanation.heatmap is not None:
        heat = np.asarray(explanation.heatmap, np.float32)
        return np.clip(heat, 0, None) if positive_only else heat
    if explanation.segments is None:
        raise MedsynthError(f"{explanation.method} explanation has neither a heat map nor superpixels")
    weights = np.zeros(int(explanation.segments.max()) + 1, np.float32)
    for s, w in explanation.weights:
        weights[int(s)] = max(w, 0.0) if positive_only else w
    return weights[explanation.segments]


def occlusion_map(view: np.ndarray, clf: Classifier, target: int, window: int | None = None,
                  stride: int | None = None) -> np.ndarray:
    """captum Occlusion on the preprocessed input: the drop of the target probability when a square patch
    (S/8 px, stride S/16) is replaced by the blurred copy; positive part, scaled to [0, 1]."""
    from captum.attr import Occlusion

    s = view.shape[0]
    window = window or max(2, s // 8)
    stride = stride or max(1, window // 2)
    x = clf.preprocess([view])
    base = clf.preprocess([blurred(view)])
    model = clf.model

    def forward(batch):
        return torch.softmax(model(batch).float(), dim=1)

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attr = Occlusion(forward).attribute(
            x, target=target, sliding_window_shapes=(x.shape[1], window, window), strides=(x.shape[1], stride, stride),
            baselines=base, perturbations_per_eval=16)
    heat = attr[0].sum(0).clamp(min=0).cpu().numpy().astype(np.float32)
    peak = float(heat.max())
    return heat / peak if peak > 0 else np.zeros_like(heat)


def resolve_target(clf: Classifier, target, probs: np.ndarray) -> int:
    if target is None:
        return int(np.argmax(probs))
    if isinstance(target, str):
        if target not in clf.classes:
            raise MedsynthError(f"unknown target class {target!r}; expected one of: {', '.join(clf.classes)}")
        return clf.classes.index(target)
    return int(target)


def explain_map(image, clf: Classifier, method: str, target=None, seed: int = 0, **lime_options) -> Explanation:
    """An :class:`Explanation` (without overlay) by "gradcam", "lime" or "occlusion"."""
    check_methods([method])
    view = _view(clf, image)
    if method in ("gradcam", "lime"):
        return explain(view, clf, method, target, seed=seed, render=False, **lime_options)
    started = time.perf_counter()
    probs = clf.predict_proba([view])[0]
    label = resolve_target(clf, target, probs)
    heat = occlusion_map(view, clf, label)
    return Explanation(method="occlusion", target=label, target_class=clf.classes[label],
                       probability=float(probs[label]),
                       probabilities={c: float(p) for c, p in zip(clf.classes, probs)}, image=view,
                       overlay=np.zeros((1, 1, 3), np.uint8), seconds=time.perf_counter() - started, heatmap=heat)


def check_methods(methods: Sequence[str]) -> list[str]:
    methods = [m.strip() for m in methods if m and m.strip()]
    if not methods:
        raise MedsynthError(f"no explanation method given; expected some of: {', '.join(CHECK_METHODS)}")
    unknown = [m for m in methods if m not in CHECK_METHODS]
    if unknown:
        raise MedsynthError(f"unknown explanation method {unknown[0]!r}; expected some of: {', '.join(CHECK_METHODS)}")
    return list(dict.fromkeys(methods))


# -- faithfulness ----------------------------------------------------------------------------------

def _order(relevance: np.ndarray) -> np.ndarray:
    """Pixel indices by decreasing relevance; ties broken by raster position (deterministic)."""
    flat = np.asarray(relevance, np.float64).ravel()
    return np.lexsort((np.arange(flat.size), -flat))


def _patch_ids(shape: tuple[int, int], patch: int) -> np.ndarray:
    """int (H, W): the id of the ``patch`` x ``patch`` block each pixel lies in (raster order of blocks)."""
    h, w = shape
    rows, cols = np.arange(h) // patch, np.arange(w) // patch
    return rows[:, None] * (-(-w // patch)) + cols[None, :]


def _patch_order(relevance: np.ndarray, patch: int, block_order: np.ndarray | None = None) -> np.ndarray:
    """Pixel indices, block by block: blocks by decreasing mean relevance (ties by position), or in
    ``block_order``; pixels inside a block in raster order."""
    ids = _patch_ids(relevance.shape, patch).ravel()
    n_blocks = int(ids.max()) + 1
    if block_order is None:
        means = np.bincount(ids, weights=np.asarray(relevance, np.float64).ravel(), minlength=n_blocks)
        means /= np.maximum(np.bincount(ids, minlength=n_blocks), 1)
        block_order = np.lexsort((np.arange(n_blocks), -means))
    position = np.empty(n_blocks, np.int64)
    position[block_order] = np.arange(n_blocks)
    return np.lexsort((np.arange(ids.size), position[ids]))


def _curve_images(view: np.ndarray, base: np.ndarray, order: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Deletion images (view -> base), then insertion images (base -> view), one per count."""
    h, w, c = view.shape
    src, dst = view.reshape(-1, c), base.reshape(-1, c)
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    out_del, out_ins = [], []
    for k in counts:
        chosen = (rank < k)[:, None]
        out_del.append(np.where(chosen, dst, src).reshape(h, w, c))
        out_ins.append(np.where(chosen, src, dst).reshape(h, w, c))
    return out_del + out_ins


def deletion_insertion(clf: Classifier, image, relevance: np.ndarray, target: int, steps: int = 16,
                       baseline: str = "blur", n_random: int = 3, seed: int = 0, patch: int | None = None) -> dict:
    """Deletion and insertion curves and AUCs of a relevance map, and of random orderings of the same regions.

    Pixels go in square patches (``patch`` px; default 1/16 of the side, 8 px at 128): the map's patches by
    decreasing mean relevance, the chance level's in random order. Removing random single pixels instead
    would scatter salt-and-pepper noise that no CNN has seen, which lowers the probability faster than any
    region does and makes every map look unfaithful (measured on brain_mri: random pixel deletion AUC 0.37
    against 0.44 for Grad-CAM); patches make both orderings remove regions. ``patch=1`` gives per-pixel curves.

    Args:
        clf: the classifier; ``image`` is taken at its input size (``model_view``).
        relevance: float (S, S); pixels are removed (deletion) or restored (insertion) in order of decreasing
            relevance, ties broken by raster position.
        target: the class index whose probability is traced.
        steps: the curve has ``steps + 1`` points, at 0, 1/steps, ..., 1 of the pixels.
        baseline: what removed pixels become: "blur" (a strongly blurred copy), "black" or "mean".
        n_random: random orderings (seeded) averaged for the chance level.

    Returns:
        ``fractions``, ``deletion``, ``insertion`` (probabilities), ``deletion_auc``, ``insertion_auc``, and
        ``random`` with the same keys for the mean of the random orderings. All perturbed images go through
        one ``predict_proba`` call.
    """
    view = _view(clf, image)
    relevance = np.asarray(relevance, np.float32)
    if relevance.shape != view.shape[:2]:
        raise MedsynthError(f"relevance map {relevance.shape} does not match the image {view.shape[:2]}")
    base = _baseline(view, baseline)
    n = relevance.size
    fractions = np.linspace(0, 1, steps + 1)
    counts = np.round(fractions * n).astype(np.int64)
    rng = np.random.default_rng(seed)
    patch = max(1, int(patch if patch is not None else min(relevance.shape) // 16))
    if patch == 1:
        orders = [_order(relevance)] + [rng.permutation(n) for _ in range(n_random)]
    else:
        n_blocks = int(_patch_ids(relevance.shape, patch).max()) + 1
        orders = [_patch_order(relevance, patch)] + [_patch_order(relevance, patch, rng.permutation(n_blocks))
                                                      for _ in range(n_random)]
    batch = [im for order in orders for im in _curve_images(view, base, order, counts)]
    probs = clf.predict_proba(batch)[:, int(target)].reshape(len(orders), 2, steps + 1)
    dele, ins = probs[0, 0], probs[0, 1]
    rdel, rins = probs[1:, 0].mean(0), probs[1:, 1].mean(0)
    return {
        "target": int(target), "baseline": baseline, "patch": patch, "fractions": fractions.round(6).tolist(),
        "deletion": dele.tolist(), "insertion": ins.tolist(),
        "deletion_auc": _auc(dele, fractions), "insertion_auc": _auc(ins, fractions),
        "random": {"n": n_random, "deletion": rdel.tolist(), "insertion": rins.tolist(),
                   "deletion_auc": _auc(rdel, fractions), "insertion_auc": _auc(rins, fractions)},
    }


def _region_scores(explanation: Explanation, segments: np.ndarray) -> np.ndarray:
    """A relevance per superpixel: LIME's weights, or a heat map's mean over each superpixel."""
    n = int(segments.max()) + 1
    if explanation.heatmap is None and explanation.weights:
        scores = np.full(n, -np.inf)
        for s, w in explanation.weights:
            if 0 <= int(s) < n:
                scores[int(s)] = w
        return scores
    heat = relevance_map(explanation).astype(np.float64)
    sums = np.bincount(segments.ravel(), weights=heat.ravel(), minlength=n)
    sizes = np.maximum(np.bincount(segments.ravel(), minlength=n), 1)
    return sums / sizes


def faithfulness_line(clf: Classifier, image, explanation: Explanation, k: int = 3, n_random: int = 3,
                      seed: int = 0, domain=None) -> dict:
    """The cheap per-image check shown beside an overlay: hide the k most relevant regions (LIME's superpixels;
    for heat maps, the k SLIC superpixels with the highest mean heat) by filling them with a blurred copy, and
    k random regions (mean over ``n_random`` seeded draws); one ``predict_proba`` call.

    Returns {"class", "before", "after_top", "after_random", "k", "plausibility", "text"}; ``plausibility`` is the
    share of the positive relevance inside the domain's foreground mask (:func:`foreground_mask`).
    """
    view = explanation.image if explanation.image is not None else _view(clf, image)
    view = _view(clf, view)
    segments = explanation.segments if explanation.segments is not None else segment(view)
    ids = np.unique(segments)
    k = max(1, min(int(k), len(ids)))
    scores = _region_scores(explanation, segments)
    ranked = sorted(ids.tolist(), key=lambda s: (-scores[s], s))
    top = ranked[:k]
    rng = np.random.default_rng(seed)
    draws = [rng.choice(ids, size=k, replace=False) for _ in range(n_random)]
    base = blurred(view)

    def hide(regions):
        inside = np.isin(segments, regions)[..., None]
        return np.where(inside, base, view)

    probs = clf.predict_proba([view, hide(top)] + [hide(d) for d in draws])[:, explanation.target]
    before, after_top, after_random = float(probs[0]), float(probs[1]), float(probs[2:].mean())
    key = get_domain(domain if domain is not None else clf.config.domain).key
    plaus = plausibility(relevance_map(explanation), foreground_mask(view, key))
    name = explanation.target_class
    if round(100 * after_top) == round(100 * before):
        change = f"leaves {name} at {_pct(before)}"
    else:
        change = f"{'lowers' if after_top < before else 'raises'} {name} from {_pct(before)} to {_pct(after_top)}"
    text = f"hiding the {k} most relevant regions {change} ({k} random regions: to {_pct(after_random)})"
    if plaus["inside"] is not None:
        text += f"; {_pct(plaus['inside'])} of the relevance lies inside {FOREGROUND_NAMES.get(key, 'the anatomy')}"
    return {"class": name, "before": before, "after_top": after_top, "after_random": after_random, "k": k,
            "plausibility": plaus["inside"], "text": text}


# -- sanity and stability --------------------------------------------------------------------------

def randomisation_blocks(model: torch.nn.Module) -> list[tuple[str, list[torch.nn.Module]]]:
    """The network's blocks from the top (head first): top-level children with parameters, and the stages
    of a top-level sequence (timm's ``blocks``) one by one; a normalisation layer joins the block before it."""
    items: list[tuple[str, torch.nn.Module]] = []
    for name, child in model.named_children():
        if not any(True for _ in child.parameters()):
            continue
        parts = [(f"{name}.{n}", c) for n, c in child.named_children() if any(True for _ in c.parameters())]
        if isinstance(child, (torch.nn.Sequential, torch.nn.ModuleList)) and len(parts) > 1:
            items.extend(parts)
        else:
            items.append((name, child))
    blocks: list[tuple[str, list[torch.nn.Module]]] = []
    for name, module in items:
        is_norm = isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm))
        if is_norm and blocks:
            blocks[-1][1].append(module)
        else:
            blocks.append((name, [module]))
    return blocks[::-1]


def _reinit(modules: list[torch.nn.Module], generator: torch.Generator) -> None:
    with torch.no_grad():
        for module in modules:
            for m in module.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                    fan_in = m.weight[0].numel()
                    m.weight.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
                    if m.bias is not None:
                        m.bias.zero_()


def _map(view, clf, method, target, seed=0) -> np.ndarray:
    return relevance_map(explain_map(view, clf, method, target, seed=seed))


def sanity(clf: Classifier, image, method: str, target: int, max_steps: int = 5, seed: int = 0,
           reference: np.ndarray | None = None) -> dict:
    """Cascading randomisation (Adebayo et al. 2018) on a deep copy of the model.

    Re-initialises the weights (conv and linear: normal, std 1/sqrt(fan-in); biases zero) block by block from
    the top (:func:`randomisation_blocks`, at most ``max_steps`` blocks) and recomputes the map after each step.
    Returns {"steps": [{"randomised", "spearman", "ssim"}], "final_spearman", "final_ssim"}; a map that
    explains the model loses its rank correlation with the original quickly.
    """
    view = _view(clf, image)
    ref = _map(view, clf, method, target, seed) if reference is None else reference
    model = copy.deepcopy(clf.model)
    shadow = Classifier(model, clf.config, clf.device)
    generator = torch.Generator().manual_seed(seed)
    steps = []
    for name, modules in randomisation_blocks(model)[:max_steps]:
        _reinit(modules, generator)
        m = _map(view, shadow, method, target, seed)
        steps.append({"randomised": name, "spearman": _spearman(ref, m), "ssim": _ssim(ref, m)})
    return {"steps": steps, "final_spearman": steps[-1]["spearman"] if steps else None,
            "final_ssim": steps[-1]["ssim"] if steps else None}


def stability(clf: Classifier, image, method: str, target: int, sigma: float = NOISE_SIGMA, n_noise: int = 2,
              seed: int = 0, reference: np.ndarray | None = None) -> dict:
    """Rank correlation of maps under Gaussian input noise (``sigma`` grey levels) to the clean map, and for
    LIME also between two seeds; {"noise": mean, "noise_each": [...], "seed": r or None}."""
    view = _view(clf, image)
    ref = _map(view, clf, method, target, seed) if reference is None else reference
    rng = np.random.default_rng(seed + 1000)
    each = []
    for _ in range(n_noise):
        noisy = np.clip(view.astype(np.float32) + rng.normal(0, sigma, view.shape), 0, 255).round().astype(np.uint8)
        each.append(_spearman(ref, _map(noisy, clf, method, target, seed)))
    seeds = _spearman(ref, _map(view, clf, method, target, seed + 1)) if method == "lime" else None
    return {"sigma": sigma, "noise": float(np.mean(each)) if each else None, "noise_each": each, "seed": seeds}


def plausibility(relevance: np.ndarray, mask: np.ndarray, border: float = BORDER) -> dict:
    """Shares of the positive relevance inside the foreground ``mask`` and inside the border frame, with the
    shares a uniform map gives (the chance levels: the mask's and the frame's areas). None for a zero map."""
    pos = np.clip(np.asarray(relevance, np.float64), 0, None)
    mask = np.asarray(mask, bool)
    frame = border_mask(pos.shape, border)
    total = pos.sum()
    return {"inside": float(pos[mask].sum() / total) if total > 0 else None,
            "border": float(pos[frame].sum() / total) if total > 0 else None,
            "chance_inside": float(mask.mean()), "chance_border": float(frame.mean())}


def compare(map_a: np.ndarray, map_b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of the same image (1.0 if identical, else 0.0 when either is flat)."""
    return _spearman(map_a, map_b)


# -- the whole check --------------------------------------------------------------------------------

def _resized(relevance: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map at another classifier's input size, brought to ``shape`` (bilinear); both views are the same
    squared image, so the pixels line up."""
    if relevance.shape == tuple(shape):
        return relevance
    from skimage.transform import resize

    return resize(relevance.astype(np.float64), shape, order=1, mode="edge", anti_aliasing=False).astype(np.float32)


def _ci(values: Sequence[float], seed: int = 0, n_boot: int = 1000) -> dict:
    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if not len(vals):
        return {"mean": None, "ci95": None, "n": 0}
    mean = float(vals.mean())
    if len(vals) == 1:
        return {"mean": mean, "ci95": [mean, mean], "n": 1}
    rng = np.random.default_rng(seed)
    boots = vals[rng.integers(0, len(vals), size=(n_boot, len(vals)))].mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"mean": mean, "ci95": [float(lo), float(hi)], "n": int(len(vals))}


def _pick(samples, classes, n_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(len(classes)):
        own = [s for s in samples if s.label == label]
        if len(own) > n_per_class:
            idx = sorted(rng.choice(len(own), size=n_per_class, replace=False).tolist())
            own = [own[i] for i in idx]
        chosen.extend(own)
    return chosen


def _aggregate(records: list[dict], method: str, seed: int) -> dict:
    rows = [r["methods"][method] for r in records]
    curves = [row["deletion_insertion"] for row in rows]
    faith = [row["faithfulness"] for row in rows]

    def get(path):
        out = []
        for row in rows:
            v = row
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            out.append(v)
        return out

    agg = {
        "deletion_auc": _ci(get(["deletion_insertion", "deletion_auc"]), seed),
        "insertion_auc": _ci(get(["deletion_insertion", "insertion_auc"]), seed),
        "random_deletion_auc": _ci(get(["deletion_insertion", "random", "deletion_auc"]), seed),
        "random_insertion_auc": _ci(get(["deletion_insertion", "random", "insertion_auc"]), seed),
        "deletion_gain": _ci([c["random"]["deletion_auc"] - c["deletion_auc"] for c in curves], seed),
        "insertion_gain": _ci([c["insertion_auc"] - c["random"]["insertion_auc"] for c in curves], seed),
        "stability_noise": _ci(get(["stability", "noise"]), seed),
        "stability_seed": _ci(get(["stability", "seed"]), seed),
        "inside": _ci(get(["plausibility", "inside"]), seed),
        "border": _ci(get(["plausibility", "border"]), seed),
        "chance_inside": _ci(get(["plausibility", "chance_inside"]), seed),
        "chance_border": _ci(get(["plausibility", "chance_border"]), seed),
        "faithfulness_drop_top": _ci([f["before"] - f["after_top"] for f in faith], seed),
        "faithfulness_drop_random": _ci([f["before"] - f["after_random"] for f in faith], seed),
        "seconds": _ci(get(["seconds"]), seed),
    }
    if all(row.get("sanity") for row in rows) and rows:
        names = [s["randomised"] for s in rows[0]["sanity"]["steps"]]
        agg["sanity"] = [{"randomised": name,
                          "spearman": _ci([row["sanity"]["steps"][i]["spearman"] for row in rows], seed),
                          "ssim": _ci([row["sanity"]["steps"][i]["ssim"] for row in rows], seed)}
                         for i, name in enumerate(names)]
    if all(row.get("compare") for row in rows) and rows:
        agg["compare"] = {"spearman": _ci(get(["compare", "spearman"]), seed),
                          "inside": _ci(get(["compare", "inside"]), seed),
                          "inside_other": _ci(get(["compare", "inside_other"]), seed),
                          "border": _ci(get(["compare", "border"]), seed),
                          "border_other": _ci(get(["compare", "border_other"]), seed)}
    return agg


def _verdicts(agg: dict, foreground: str) -> dict:
    def m(key):
        return agg[key]["mean"]

    out = {}
    gain = agg["deletion_gain"]
    dele, rdel = m("deletion_auc"), m("random_deletion_auc")
    ins, rins = m("insertion_auc"), m("random_insertion_auc")
    if gain["mean"] is None:
        out["faithfulness"] = "no images"
    elif gain["mean"] > 0 and gain["ci95"][0] > 0:
        out["faithfulness"] = (f"faithful: deletion AUC {dele:.2f} against {rdel:.2f} for random orderings "
                               f"(insertion {ins:.2f} against {rins:.2f})")
    elif gain["mean"] > 0:
        out["faithfulness"] = (f"weakly faithful: deletion AUC {dele:.2f} against {rdel:.2f} for random orderings, "
                               f"but the 95 % interval of the difference includes 0 (n = {gain['n']})")
    else:
        out["faithfulness"] = (f"not faithful: deletion AUC {dele:.2f} is no lower than {rdel:.2f} for random "
                               "orderings, so removing the marked pixels first hurts the prediction no more than "
                               "removing random ones")
    if "sanity" in agg:
        last = agg["sanity"][-1]
        r = last["spearman"]["mean"]
        if r is not None and abs(r) < 0.5:
            out["sanity"] = (f"passes the randomisation test: after re-initialising {len(agg['sanity'])} blocks from "
                             f"the top the map's rank correlation with the original falls to {r:.2f}")
        elif r is not None:
            out["sanity"] = (f"fails the randomisation test: with {len(agg['sanity'])} blocks re-initialised the map "
                             f"still correlates {r:.2f} with the original, so it shows the image more than the model")
    inside, chance = m("inside"), m("chance_inside")
    border, chance_b = m("border"), m("chance_border")
    if inside is not None:
        text = f"{_pct(inside)} of the relevance lies inside {foreground} (a uniform map: {_pct(chance)})"
        if chance > 0.8:
            text += f"; {foreground} fills most of these images, so this share says little"
        elif inside <= chance + 0.02:
            text += ", no more than chance: the map does not prefer the anatomy"
        if inside < 0.5:
            text = f"the relevance lies mostly OUTSIDE {foreground}: only " + text
        if border is not None and border > max(2 * chance_b, 0.1):
            text += (f"; {_pct(border)} lies in the border frame (a uniform map: {_pct(chance_b)}), a sign of "
                     "shortcut features")
        out["plausibility"] = text
    return out


def _figure_examples(examples: list[dict], methods: list[str], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from skimage.segmentation import find_boundaries

    rows, cols = len(examples), 1 + len(methods)
    fig = Figure(figsize=(2.2 * cols, 2.3 * rows), dpi=90)
    FigureCanvasAgg(fig)
    for i, ex in enumerate(examples):
        view, mask = ex["view"], ex["mask"]
        gray = view.shape[2] == 1
        base = view[..., 0] if gray else view
        edge = find_boundaries(mask, mode="inner")
        outline = np.zeros((*mask.shape, 4))
        outline[edge] = (0.0, 1.0, 1.0, 0.9)
        for j in range(cols):
            ax = fig.add_subplot(rows, cols, i * cols + j + 1)
            ax.imshow(base, cmap="gray" if gray else None, vmin=0, vmax=255)
            if j == 0:
                ax.set_title(f"{ex['true']} -> {ex['pred']}", fontsize=7)
            else:
                method = methods[j - 1]
                rel = ex["maps"][method]
                peak = rel.max()
                ax.imshow(rel / peak if peak > 0 else rel, cmap="jet", alpha=0.45, vmin=0, vmax=1)
                ax.set_title(f"{method}: in {_pct(ex['inside'][method]) if ex['inside'][method] is not None else '-'}",
                             fontsize=7)
            ax.imshow(outline)
            ax.set_axis_off()
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png"))


def _figure_curves(records: list[dict], methods: list[str], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=90)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    colors = {"gradcam": "tab:red", "lime": "tab:green", "occlusion": "tab:blue"}
    for kind, ax in zip(("deletion", "insertion"), axes):
        for method in methods:
            curves = [r["methods"][method]["deletion_insertion"] for r in records]
            x = np.asarray(curves[0]["fractions"])
            ax.plot(x, np.mean([c[kind] for c in curves], 0), color=colors.get(method), label=method)
            ax.plot(x, np.mean([c["random"][kind] for c in curves], 0), color=colors.get(method), ls="--",
                    label=f"{method}: random order")
        ax.set_xlabel("share of pixels " + ("removed" if kind == "deletion" else "restored"))
        ax.set_ylabel("probability of the explained class")
        ax.set_title(f"{kind} (mean over {len(records)} images)", fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png"))


def _fmt(stat: dict, digits: int = 2) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    lo, hi = stat["ci95"]
    return f"{stat['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _report(result: dict) -> str:
    fg = result["foreground"]
    lines = [
        f"# explain-check: {result['domain']}",
        "",
        f"Classifier `{result['checkpoint']}`, {result['n_images']} images from `{result['data']}` "
        f"({result['n_per_class']} per class at most, seed {result['seed']}), explained for the predicted class at "
        f"{result['input_size']} px. Means with 95 % bootstrap intervals over images.",
        "",
        "## What the measures mean",
        "",
        "- **Deletion AUC** (lower is better): 8-px patches are replaced by a strongly blurred copy of the image in "
        "order of decreasing relevance and the probability of the explained class is traced; the area under that "
        "curve. A faithful map makes the probability fall sooner than random orderings of the same patches do "
        "(**random deletion AUC**).",
        "- **Insertion AUC** (higher is better): pixels are restored from the blurred copy in the same order.",
        "- **Sanity** (Adebayo et al. 2018): the network's weights are re-initialised block by block from the top; "
        "the rank correlation (Spearman) and SSIM of the new map with the original. A map that explains the model "
        "must change (low correlation); one that stays the same shows the image, not the model.",
        f"- **Stability**: rank correlation with the clean map under Gaussian noise of {NOISE_SIGMA:g} grey levels "
        "(and, for LIME, with another seed). High is good.",
        f"- **Inside**: share of the positive relevance inside {fg} (a simple per-domain threshold mask; see "
        "`medsynth.explain_check.foreground_mask`), beside the share a uniform map would give. **Border**: share in "
        f"the outer {100 * BORDER:.0f} % frame, where shortcut features (text, rulers, scanner borders) live.",
        "- **Hide top-3 / random-3**: the probability drop when the 3 most relevant superpixels, or 3 random ones, "
        "are filled with the blurred copy (the line shown beside each overlay).",
        "",
    ]
    for method, agg in result["methods"].items():
        verdicts = result["verdicts"][method]
        lines += [f"## {method}", ""]
        lines += [f"- **{k}**: {v}" for k, v in verdicts.items()]
        lines += ["", "| measure | value |", "|---|---|"]
        rows = [("deletion AUC", agg["deletion_auc"]), ("random deletion AUC", agg["random_deletion_auc"]),
                ("insertion AUC", agg["insertion_auc"]), ("random insertion AUC", agg["random_insertion_auc"]),
                ("stability (noise)", agg["stability_noise"])]
        if agg["stability_seed"]["mean"] is not None:
            rows.append(("stability (seed)", agg["stability_seed"]))
        rows += [("inside " + fg, agg["inside"]), ("uniform map inside", agg["chance_inside"]),
                 ("border frame", agg["border"]), ("uniform map border", agg["chance_border"]),
                 ("drop, hide top-3", agg["faithfulness_drop_top"]),
                 ("drop, hide random-3", agg["faithfulness_drop_random"]), ("seconds per image", agg["seconds"])]
        lines += [f"| {name} | {_fmt(stat)} |" for name, stat in rows]
        if "sanity" in agg:
            lines += ["", "Cascading randomisation (from the top):", "", "| block re-initialised | Spearman | SSIM |",
                      "|---|---|---|"]
            lines += [f"| + {s['randomised']} | {_fmt(s['spearman'])} | {_fmt(s['ssim'])} |" for s in agg["sanity"]]
        if "compare" in agg:
            c = agg["compare"]
            lines += ["", f"Compared with `{result['compare_with']}` on the same images:", "",
                      "| | this CNN | other CNN |", "|---|---|---|",
                      f"| inside {fg} | {_fmt(c['inside'])} | {_fmt(c['inside_other'])} |",
                      f"| border frame | {_fmt(c['border'])} | {_fmt(c['border_other'])} |",
                      f"| rank correlation of the two maps | {_fmt(c['spearman'])} | |"]
        per_class = result["per_class"][method]
        lines += ["", "Per class:", "", "| class | n | deletion AUC | random | insertion AUC | random | inside |",
                  "|---|---|---|---|---|---|---|"]
        for name, a in per_class.items():
            cells = [a[key] for key in ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc",
                                        "inside")]
            lines.append(f"| {name} | {a['deletion_auc']['n']} | " + " | ".join(_fmt(c) for c in cells) + " |")
        lines.append("")
    lines += ["## Figures", "", "- `examples.png`: images with each method's map and the foreground outline (cyan).",
              "- `curves.png`: mean deletion and insertion curves per method (solid) against random orderings "
              "(dashed).",
              "", f"Took {result['seconds']:.1f} s.", ""]
    return "\n".join(lines)


def run_check(checkpoint, data, out, methods: Sequence[str] = CHECK_METHODS, n_per_class: int = 4, seed: int = 0,
              compare_with=None, steps: int = 16, sanity_methods: Sequence[str] = SANITY_METHODS,
              progress: Callable[[str], None] | None = None, device: str = "cpu") -> dict:
    """Run every check on up to ``n_per_class`` images per class of ``data`` and write ``out/explain_check.json``,
    ``out/report.md``, ``out/examples.png`` and ``out/curves.png``.

    Per image and method: deletion/insertion AUCs with their random-ordering chance level, sanity (for
    ``sanity_methods``), stability, plausibility and the faithfulness line; aggregated per method and per class
    (means with 95 % bootstrap intervals). ``compare_with``: another classifier of the same domain whose maps of the
    same images are compared (rank correlation, plausibility side by side). Returns the summary (the JSON's
    top level without the per-image records).
    """
    started = time.time()
    methods = check_methods(methods)
    if n_per_class < 1:
        raise MedsynthError(f"--n-per-class must be at least 1, got {n_per_class}")
    data = Path(data)
    if not data.is_dir():
        raise MedsynthError(f"data folder {data} " + ("is not a folder" if data.exists() else "does not exist"))
    clf = load_classifier(checkpoint, device)
    domain = get_domain(clf.config.domain)
    other = None
    if compare_with is not None:
        other = load_classifier(compare_with, device)
        if other.config.domain != clf.config.domain or other.classes != clf.classes:
            raise MedsynthError(f"--compare-with {compare_with} is a {other.config.domain} classifier with classes "
                                f"{', '.join(other.classes)}; {checkpoint} is {clf.config.domain} "
                                f"({', '.join(clf.classes)}): compare classifiers of the same domain")
    samples = _pick(scan_dataset(data, clf.classes, require_all=False), clf.classes, n_per_class, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    foreground = FOREGROUND_NAMES.get(domain.key, "the anatomy")
    records, examples = [], []
    for i, sample in enumerate(samples):
        image = load_image(sample.path, clf.config.channels)
        view = clf.model_view(image)
        probs = clf.predict_proba([view])[0]
        target = int(probs.argmax())
        mask = foreground_mask(view, domain.key)
        record = {"file": str(sample.path), "true": clf.classes[sample.label], "pred": clf.classes[target],
                  "probability": float(probs[target]), "foreground_share": float(mask.mean()), "methods": {}}
        maps, insides = {}, {}
        for method in methods:
            t0 = time.perf_counter()
            exp = explain_map(view, clf, method, target, seed=seed)
            rel = relevance_map(exp)
            row = {"deletion_insertion": deletion_insertion(clf, view, rel, target, steps=steps, seed=seed),
                   "stability": stability(clf, view, method, target, seed=seed, reference=rel),
                   "plausibility": plausibility(rel, mask),
                   "faithfulness": faithfulness_line(clf, view, exp, seed=seed, domain=domain.key),
                   "sanity": sanity(clf, view, method, target, seed=seed, reference=rel)
                   if method in sanity_methods else None}
            if other is not None:  # the other CNN explains its own view of the image; its map is resized to ours
                rel_b = _resized(relevance_map(explain_map(other.model_view(image), other, method, target, seed=seed)),
                                 rel.shape)
                pb = plausibility(rel_b, mask)
                row["compare"] = {"spearman": compare(rel, rel_b), "inside": row["plausibility"]["inside"],
                                  "inside_other": pb["inside"], "border": row["plausibility"]["border"],
                                  "border_other": pb["border"]}
            row["seconds"] = time.perf_counter() - t0
            record["methods"][method] = row
            maps[method], insides[method] = rel, row["plausibility"]["inside"]
        records.append(record)
        examples.append({"view": view, "mask": mask, "maps": maps, "inside": insides, "true": record["true"],
                         "pred": record["pred"]})
        if progress is not None:
            progress(f"{i + 1}/{len(samples)} {sample.path.name}: {record['pred']} ({record['probability']:.2f})")
    aggregates = {m: _aggregate(records, m, seed) for m in methods}
    per_class = {m: {name: _aggregate([r for r in records if r["true"] == name], m, seed)
                     for name in clf.classes if any(r["true"] == name for r in records)} for m in methods}
    verdicts = {m: _verdicts(aggregates[m], foreground) for m in methods}
    files = {"json": str(out / "explain_check.json"), "report": str(out / "report.md"),
             "examples": str(out / "examples.png"), "curves": str(out / "curves.png")}
    summary = {"domain": domain.key, "checkpoint": str(checkpoint), "data": str(data), "compare_with":
               str(compare_with) if compare_with is not None else None, "classes": clf.classes,
               "input_size": clf.config.input_size,
               "compare_input_size": other.config.input_size if other is not None else None,
               "n_images": len(records), "n_per_class": n_per_class, "seed": seed,
               "foreground": foreground, "methods": aggregates, "per_class": per_class, "verdicts": verdicts,
               "files": files}
    shown = sorted(set(np.linspace(0, len(examples) - 1, min(4, len(examples))).round().astype(int).tolist()))
    _figure_examples([examples[i] for i in shown], methods, out / "examples.png")  # spread over the classes
    _figure_curves(records, methods, out / "curves.png")
    summary["seconds"] = round(time.time() - started, 3)
    atomic.write_json(out / "explain_check.json", _clean({**summary, "images": records}))
    atomic.write_text(out / "report.md", _report(summary))
    return _clean(summary)


def _clean(obj):
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
