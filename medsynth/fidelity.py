"""Distribution metrics between two sets of feature rows: fidelity (FD, KID) and coverage (PRDC).

Pure functions of (N, D) arrays; which network made the features is the caller's to name
(``medsynth.features``). Conventions: ``real`` first, ``fake`` (synthetic) second.

- Fréchet distance (Heusel et al. 2017, the formula behind FID): Gaussians fitted to both sets.
  Biased upwards for small N: compare only at equal N (the audit's real-vs-real reference does).
- KID (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel, averaged over random
  subsets; its spread over subsets is the error bar.
- Precision, recall, density, coverage (Naeem et al. 2020): k-nearest-neighbour balls around real and
  synthetic rows. Precision/density ask "do synthetic images lie where real ones are" (fidelity),
  recall/coverage "are all real images' neighbourhoods reached" (diversity).
"""

from __future__ import annotations

import numpy as np


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) for feature rows of a and b.

    Tr (S_a S_b)^(1/2) is the sum of square roots of the eigenvalues of S_a S_b, which are real and
    non-negative (S_a S_b is similar to the PSD S_a^(1/2) S_b S_a^(1/2)). With fewer rows than feature
    dimensions they are also the eigenvalues of the small Gram matrix (X Y^T)(Y X^T) of the centred rows,
    so small sets cost little; either way symmetric eigen-solvers replace a general matrix square root.
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least two images per set")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    x = (a - mu_a) / np.sqrt(len(a) - 1)  # S_a = x^T x
    y = (b - mu_b) / np.sqrt(len(b) - 1)  # S_b = y^T y
    if min(len(a), len(b)) < a.shape[1]:
        m = x @ y.T  # (n_a, n_b): eig(S_a S_b) \ {0} = eig(m m^T) = singular values of m, squared
        gram = m @ m.T if len(a) <= len(b) else m.T @ m
        eig = np.linalg.eigvalsh(gram)
    else:
        s_a, s_b = x.T @ x, y.T @ y
        w, v = np.linalg.eigh(s_a)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^(1/2)
        inner = root @ s_b @ root
        eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + (x * x).sum() + (y * y).sum() - 2 * trace_sqrt)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1) ** 3  # k(x, y) = (x·y / d + 1)^3, the KID kernel
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    # Unbiased: the diagonals k(x_i, x_i) are left out of the within-set means.
    return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
                 - 2 * k_xy.mean())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """Kernel Inception Distance in whatever features are given: mean and standard deviation of the
    unbiased MMD² over ``subsets`` random subsets of ``min(subset_size, len(real), len(fake))`` rows each.

    Returns:
        ``{"kid": mean, "kid_std": std over subsets, "subset_size": m, "subsets": count}``. Unbiased, so a
        set against another draw of the same distribution scores about 0, and may score slightly below.
    """
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError("KID needs at least two images per set")
    rng = np.random.default_rng(seed)
    values = np.array([_mmd2_unbiased(real[rng.choice(len(real), m, replace=False)],
                                      fake[rng.choice(len(fake), m, replace=False)]) for _ in range(subsets)])
    return {"kid": float(values.mean()), "kid_std": float(values.std(ddof=1)) if subsets > 1 else 0.0,
            "subset_size": int(m), "subsets": int(subsets)}


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)), computed through dot products in float64."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def _kth_neighbour_radius(x: np.ndarray, k: int) -> np.ndarray:
    d = pairwise_distances(x, x)
    # k-th nearest other row: index k of the sorted row, since index 0 is the row itself (distance 0).
    return np.partition(d, k, axis=1)[:, k]


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours.

    Returns:
        The four values, plus the per-image terms they average (``per_fake`` for precision and density,
        ``per_real`` for recall and coverage), so that callers can bootstrap error bars.
    """
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"PRDC with k = {k} needs more than {k} images per set (got {len(real)} real, {len(fake)} synthetic)")
    real_radius = _kth_neighbour_radius(real, k)
    fake_radius = _kth_neighbour_radius(fake, k)
    d = pairwise_distances(real, fake)  # (real, fake)
    inside_real = d <= real_radius[:, None]  # fake j inside real i's ball
    per_fake_precision = inside_real.any(0).astype(float)
    per_fake_density = inside_real.sum(0) / k
    per_real_recall = (d <= fake_radius[None, :]).any(1).astype(float)
    per_real_coverage = (d.min(1) <= real_radius).astype(float)
    return {
        "precision": float(per_fake_precision.mean()),
        "recall": float(per_real_recall.mean()),
        "density": float(per_fake_density.mean()),
        "coverage": float(per_real_coverage.mean()),
        "k": int(k),
        "per_fake": {"precision": per_fake_precision, "density": per_fake_density},
        "per_real": {"recall": per_real_recall, "coverage": per_real_coverage},
    }


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    tail = (1 - level) / 2
    return (float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)))
