"""Does a synthetic set copy its generator's training images? Nearest-neighbour tests.

The yardstick is held-out real data: a real image the generator never saw is, by construction, not
a copy, so the distance from each held-out image to its nearest training image shows what "not a
copy" looks like for this dataset (real datasets hold near-duplicates too). A synthetic set that
copies has more images closer to a training image than held-out images are:

- the share of synthetic images closer to a training image than the 1st and 5th percentile of the
  held-out distances (1 % and 5 % expected without copying), with bootstrap intervals that resample
  both sets (so the threshold's own uncertainty is in the interval);
- a one-sided Mann-Whitney U test that synthetic distances are smaller than held-out ones, reported
  as its z-score: the C_T statistic of Meehan, Chaudhuri & Dasgupta (2020, "A non-parametric test to
  detect data-copying in generative models") on a single cell; z well below 0 means copying;
- a verdict: "suspicious" when, in some space, the share below a percentile is significantly above
  what held-out images show (its interval lies above 1 % / 5 %) and the test rejects at p < 0.01.

Distances: ``cosine`` (1 - cosine similarity of feature rows) and ``ncc`` (1 - normalised correlation
of pixels, i.e. Pearson correlation over all pixel values, on images at the generator's resolution).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

PERCENTILES = (1, 5)
MIN_IMAGES = 20  # fewer synthetic or held-out images than this: the statistics are not reported as reliable
P_SUSPICIOUS = 0.01


def _unit_rows(x: np.ndarray, centre: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if centre:  # Pearson correlation = cosine of mean-subtracted vectors
        x = x - x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest(query: np.ndarray, reference: np.ndarray, metric: str = "cosine", chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For each query row its nearest reference row: (indices, distances).

    ``metric``: ``cosine`` (feature rows) or ``ncc`` (images of any shape, flattened; 1 - Pearson r).
    Distances lie in [0, 2]; 0 is an identical direction (an exact copy, or one up to brightness and
    contrast for ``ncc``).
    """
    if metric not in ("cosine", "ncc"):
        raise ValueError(f"unknown metric {metric!r}; use cosine or ncc")
    q = _unit_rows(query, centre=metric == "ncc")
    r = _unit_rows(reference, centre=metric == "ncc")
    index = np.empty(len(q), dtype=np.int64)
    dist = np.empty(len(q))
    for start in range(0, len(q), chunk):
        sims = q[start : start + chunk] @ r.T
        best = sims.argmax(1)
        index[start : start + chunk] = best
        dist[start : start + chunk] = 1.0 - sims[np.arange(len(best)), best]
    return index, np.clip(dist, 0.0, 2.0)


def copy_statistics(synthetic: np.ndarray, heldout: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """Compare nearest-training-image distances of synthetic images with those of held-out real images.

    Returns:
        ``n_synthetic``, ``n_heldout``, medians, per percentile p in (1, 5) the held-out threshold and the
        share of synthetic images below it with its 95 % bootstrap interval, the Mann-Whitney
        ``u``, ``z`` (C_T) and one-sided ``p``, ``warnings`` and ``suspicious`` (bool) with ``reasons``.
    """
    from scipy.stats import mannwhitneyu

    syn = np.asarray(synthetic, dtype=float)
    held = np.asarray(heldout, dtype=float)
    out: dict = {"n_synthetic": int(len(syn)), "n_heldout": int(len(held)), "warnings": []}
    if len(syn) == 0 or len(held) == 0:
        out.update(suspicious=False, reasons=[], warnings=["no images to compare"])
        return out
    out["median_synthetic"] = float(np.median(syn))
    out["median_heldout"] = float(np.median(held))
    rng = np.random.default_rng(seed)
    boot_syn = syn[rng.integers(0, len(syn), (n_boot, len(syn)))]
    boot_held = held[rng.integers(0, len(held), (n_boot, len(held)))]
    out["below"] = {}
    for p in PERCENTILES:
        threshold = float(np.percentile(held, p))
        shares = (boot_syn < np.percentile(boot_held, p, axis=1)[:, None]).mean(1)
        out["below"][str(p)] = {"threshold": threshold, "share": float((syn < threshold).mean()),
                                "ci": [float(np.quantile(shares, 0.025)), float(np.quantile(shares, 0.975))],
                                "expected": p / 100}
    if len(held) < 100:
        out["warnings"].append(f"only {len(held)} held-out images: their 1st percentile is close to their minimum, "
                               "so the 1 % share is coarse")
    if len(syn) < MIN_IMAGES or len(held) < MIN_IMAGES:
        out["warnings"].append(f"fewer than {MIN_IMAGES} images on a side ({len(syn)} synthetic, {len(held)} held-out): "
                               "too few for these statistics")
    test = mannwhitneyu(syn, held, alternative="less", method="asymptotic")
    n1, n2 = len(syn), len(held)
    mean_u, sd_u = n1 * n2 / 2, np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    out["u"] = float(test.statistic)
    out["z"] = float((test.statistic - mean_u) / sd_u)  # C_T: < 0 when synthetic images lie closer than held-out
    out["p"] = float(test.pvalue)
    out["p_closer"] = float(test.statistic / (n1 * n2))  # P(synthetic distance < held-out distance); 0.5 = alike
    reasons = [f"{b['share']:.1%} of synthetic images (95 % CI {b['ci'][0]:.1%}-{b['ci'][1]:.1%}) are closer to a "
               f"training image than the {p}th percentile of held-out real images (expected {p} %)"
               for p, b in ((int(k), v) for k, v in out["below"].items()) if b["ci"][0] > b["expected"]]
    out["suspicious"] = bool(reasons) and out["p"] < P_SUSPICIOUS and len(syn) >= MIN_IMAGES and len(held) >= MIN_IMAGES
    out["reasons"] = (reasons + [f"Mann-Whitney one-sided p = {out['p']:.2g} (C_T z = {out['z']:.1f})"]) if out["suspicious"] else []
    return out


def verdict(stats_by_space: dict[str, dict]) -> tuple[str, list[str]]:
    """One verdict over the distance spaces of one class (or of the whole set): text and reasons."""
    reasons = [f"{space}: {r}" for space, s in stats_by_space.items() if s.get("suspicious") for r in s["reasons"]]
    if reasons:
        return "suspicious: look at the closest pairs", reasons
    if all(s.get("warnings") and any("too few" in w for w in s["warnings"]) for s in stats_by_space.values()):
        return "too few images to tell", []
    z = [s["z"] for s in stats_by_space.values() if "z" in s]
    if z and min(z) > 2:  # every space: synthetic distances significantly larger than held-out ones
        return ("consistent with no copying", [f"synthetic images lie farther from the training images than held-out "
                                               f"real images do in every space (C_T z {min(z):.1f} to {max(z):.1f})"])
    return "consistent with no copying", []


def closest_pairs(distances: np.ndarray, count: int = 16) -> np.ndarray:
    """Indices of the ``count`` smallest distances, smallest first (ties in index order)."""
    return np.argsort(distances, kind="stable")[:count]


def group_indices(labels: Sequence[int]) -> dict[int, np.ndarray]:
    labels = np.asarray(labels)
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
