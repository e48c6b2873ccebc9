"""``medsynth audit``: fidelity, coverage and memorization of a labelled synthetic set, per class.

Three folders in, one report out. ``synthetic`` is a ``generate --n-per-class`` folder (or any
``<class>/`` folder); ``train`` the real images its generator learned from; ``test`` real images it
never saw. Every image is square-resized to the generator's resolution first, so the figures measure
the model, not the resolution gap.

- **Fidelity** (``medsynth.fidelity``): Fréchet distance and KID of synthetic against ``test``, beside
  the real-vs-real reference at the same N: as many ``train`` images per class as there are synthetic
  ones, against the same ``test`` images (what a generator that reproduced its data would score).
- **Coverage**: precision, recall, density and coverage (k = 5) against ``test``, with the same reference.
- **Memorization** (``medsynth.memorization``): each synthetic and each ``test`` image's nearest
  ``train`` image, in every feature space and in pixel space; shares below held-out percentiles,
  the Mann-Whitney C_T test and a verdict per class.

Outputs in ``out``: ``audit.json`` (every figure, with N, extractor and resolution), ``report.md``,
``nearest.csv`` / ``heldout_nearest.csv`` (one row per image), PNG figures, and the feature cache
(``features_<extractor>.npz``, keyed by file content hash, so a rerun computes nothing twice).
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import atomic
from .data import ImageSet, load_set
from .errors import MedsynthError
from .fidelity import bootstrap_mean_ci, frechet_distance, kid, prdc
from .memorization import closest_pairs, copy_statistics, nearest, verdict

PRDC_K = 5
CARD_SECTION = "## Synthetic-data audit"
PIXEL_SPACE = "pixel"


def _reference_index(train: ImageSet, synthetic: ImageSet, rng: np.random.Generator) -> np.ndarray:
    """Per class, as many training images as synthetic ones (all there are, if fewer): the real-vs-real set."""
    keep = []
    for c in np.unique(synthetic.labels):
        members = np.flatnonzero(train.labels == c)
        want = int((synthetic.labels == c).sum())
        keep.append(rng.choice(members, min(want, len(members)), replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=int)


def _fidelity(test: np.ndarray, other: np.ndarray, seed: int) -> dict:
    """FD, KID and PRDC of ``other`` against the held-out rows ``test``, with bootstrap intervals on PRDC."""
    out: dict = {"n": int(len(other)), "n_test": int(len(test))}
    if len(test) >= 2 and len(other) >= 2:
        out["fd"] = frechet_distance(other, test)
        out.update(kid(test, other, seed=seed))
    if len(test) > PRDC_K and len(other) > PRDC_K:
        r = prdc(test, other, PRDC_K)
        for name in ("precision", "recall", "density", "coverage"):
            terms = r["per_fake"].get(name, r["per_real"].get(name))
            out[name] = r[name]
            out[name + "_ci"] = list(bootstrap_mean_ci(terms, seed=seed))
    return out


def run_audit(
    synthetic: str | Path,
    train: str | Path,
    test: str | Path,
    out: str | Path,
    features: Sequence[str] = ("lite0",),
    domain: str | None = None,
    resolution: int | None = None,
    n_max: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Audit ``synthetic`` against ``train`` (what its generator saw) and ``test`` (what it did not).

    Args:
        features: extractor specs (``medsynth.features.create_extractor``), e.g. ``lite0`` and
            ``classifier:checkpoints/brain_mri/classifier``.
        domain, resolution: taken from the set's ``generation.json`` when it has one; needed otherwise
            (resolution then defaults to the domain's diffusion size).
        n_max: at most this many images per folder (a seeded pick that keeps each class's share).

    Returns:
        The ``audit.json`` record (also written, with the report, CSVs and figures, into ``out``).
    """
    from .domains import get_domain
    from .features import FeatureCache, create_extractor
    from .synthetic.provenance import read_provenance

    started = time.perf_counter()
    out = Path(out)
    synthetic, train, test = Path(synthetic), Path(train), Path(test)
    for what, folder in (("--synthetic", synthetic), ("--train", train), ("--test", test)):
        if not folder.is_dir():
            raise MedsynthError(f"{what} {folder} is not a folder (expected one sub-folder per class)")
    if len({p.resolve() for p in (synthetic, train, test)}) < 3:
        raise MedsynthError("--synthetic, --train and --test must be three different folders")
    generation = read_provenance(synthetic)
    gen_domain = (generation or {}).get("diffusion_domain")
    if domain and gen_domain and domain != gen_domain:
        raise MedsynthError(f"{synthetic} was generated for domain {gen_domain!r} (generation.json), not {domain!r}")
    domain_key = domain or gen_domain
    if not domain_key:
        raise MedsynthError(f"{synthetic} has no generation.json naming its domain; give --domain")
    dom = get_domain(domain_key)
    size = int(resolution or (generation or {}).get("resolution") or dom.diffusion_size)
    classes, channels = list(dom.classes), dom.channels
    if n_max is not None and n_max < 2:
        raise MedsynthError(f"--n-max must be at least 2, got {n_max}")
    try:  # an unwritable --out fails now, not after minutes of feature extraction
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / ".write_test", "")
        (out / ".write_test").unlink()
    except OSError as exc:
        raise MedsynthError(f"--out {out} cannot be written ({exc.strerror or exc}); choose another folder") from None

    log(f"loading images at {size} px")
    sets = {name: load_set(folder, classes, channels, size, n_max, seed)
            for name, folder in (("synthetic", synthetic), ("train", train), ("test", test))}
    syn, tr, te = sets["synthetic"], sets["train"], sets["test"]
    ref_index = _reference_index(tr, syn, np.random.default_rng(seed))
    present = [c for c in range(len(classes)) if (syn.labels == c).any()]

    warnings: list[str] = []
    for c in present:
        name = classes[c]
        n_syn, n_tr, n_te = (int((s.labels == c).sum()) for s in (syn, tr, te))
        if n_te <= PRDC_K or n_syn <= PRDC_K:
            warnings.append(f"{name}: {n_syn} synthetic and {n_te} held-out images: too few for PRDC (k = {PRDC_K})")
        elif min(n_syn, n_te) < 50:
            warnings.append(f"{name}: only {min(n_syn, n_te)} images on the smaller side: wide intervals, FD biased up")
        if n_tr == 0:
            warnings.append(f"{name}: no training images; memorization cannot be measured for it")
        if 0 < n_tr < n_syn:
            warnings.append(f"{name}: the real reference has only {n_tr} training images against {n_syn} synthetic")

    # Feature spaces: every extractor, then pixels (flattened images at the generator's resolution).
    spaces: dict[str, dict] = {}
    feats: dict[str, dict[str, np.ndarray]] = {}
    for spec in features:
        extractor = create_extractor(spec, device)
        cache = FeatureCache(out, extractor)
        log(f"features: {extractor.name}")
        feats[extractor.key] = {k: cache(s.hashes, list(s.images)) for k, s in sets.items()}
        cache.save()
        spaces[extractor.key] = {"name": extractor.name, "spec": spec, "metric": "cosine"}
    spaces[PIXEL_SPACE] = {"name": f"pixels at {size} px, 1 - normalised correlation (Pearson r over all pixel values)",
                           "spec": "pixels", "metric": "ncc"}

    result: dict = {
        "domain": dom.key, "classes": classes, "resolution": size, "seed": seed, "n_max": n_max,
        "synthetic": str(synthetic), "train": str(train), "test": str(test), "generation": generation,
        "n": {k: {classes[c]: int((s.labels == c).sum()) for c in range(len(classes))} for k, s in sets.items()},
        "n_reference": {classes[c]: int((tr.labels[ref_index] == c).sum()) for c in present},
        "spaces": spaces, "prdc_k": PRDC_K, "fidelity": {}, "memorization": {}, "warnings": warnings,
    }

    # -- fidelity and coverage, per extractor ------------------------------------------------------
    for key, f in feats.items():
        log(f"fidelity and coverage in {key}")
        groups = {"all": (np.ones(len(syn), bool), np.ones(len(te), bool), np.ones(len(ref_index), bool))}
        for c in present:
            groups[classes[c]] = (syn.labels == c, te.labels == c, tr.labels[ref_index] == c)
        ref = f["train"][ref_index]
        result["fidelity"][key] = {
            g: {"synthetic": _fidelity(f["test"][t], f["synthetic"][s], seed),
                "real_reference": _fidelity(f["test"][t], ref[r], seed)}
            for g, (s, t, r) in groups.items()
        }

    # -- memorization: nearest training image, per space ---------------------------------------------
    log("nearest training images")
    metric_inputs = {key: (f["synthetic"], f["test"], f["train"]) for key, f in feats.items()}
    pixels = lambda s: s.images.reshape(len(s), -1)  # noqa: E731
    metric_inputs[PIXEL_SPACE] = (pixels(syn), pixels(te), pixels(tr))
    neighbours: dict[str, dict] = {}
    for space, (q_syn, q_test, ref_rows) in metric_inputs.items():
        metric = spaces[space]["metric"]
        neighbours[space] = {"synthetic": nearest(q_syn, ref_rows, metric), "test": nearest(q_test, ref_rows, metric)}
    per_group: dict[str, dict[str, dict]] = {}
    for g in ["all"] + [classes[c] for c in present]:
        s_mask = np.ones(len(syn), bool) if g == "all" else syn.labels == classes.index(g)
        t_mask = np.ones(len(te), bool) if g == "all" else te.labels == classes.index(g)
        per_group[g] = {space: copy_statistics(n["synthetic"][1][s_mask], n["test"][1][t_mask], seed=seed)
                        for space, n in neighbours.items()}
        text, reasons = verdict(per_group[g])
        result["memorization"][g] = {"spaces": per_group[g], "verdict": text, "reasons": reasons}

    out.mkdir(parents=True, exist_ok=True)
    _write_nearest_csv(out / "nearest.csv", syn, tr, classes, neighbours, "synthetic")
    _write_nearest_csv(out / "heldout_nearest.csv", te, tr, classes, neighbours, "test")
    result["figures"] = _figures(out, syn, tr, te, classes, present, neighbours, spaces, result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    atomic.write_json(out / "audit.json", result)
    atomic.write_text(out / "report.md", report_markdown(result))
    return result


def _write_nearest_csv(path: Path, query: ImageSet, train: ImageSet, classes, neighbours, side: str) -> None:
    spaces = list(neighbours)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "class"] + [f"{s}_{col}" for s in spaces for col in ("nearest_train", "distance")])
    for i in range(len(query)):
        row = [query.files[i], classes[query.labels[i]]]
        for s in spaces:
            index, dist = neighbours[s][side]
            row += [train.files[index[i]], f"{dist[i]:.6f}"]
        writer.writerow(row)
    atomic.write_text(path, buf.getvalue())


def _save_figure(fig, path: Path, dpi: int = 100) -> None:
    import matplotlib.pyplot as plt

    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)


def _figures(out: Path, syn: ImageSet, tr: ImageSet, te: ImageSet, classes, present, neighbours, spaces, result) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[str, str] = {}
    groups = ["all"] + [classes[c] for c in present]
    for space, n in neighbours.items():
        # Histograms: synthetic vs held-out distances to the nearest training image, per class.
        fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 2.8), squeeze=False)
        for ax, g in zip(axes[0], groups):
            s_mask = np.ones(len(syn), bool) if g == "all" else syn.labels == classes.index(g)
            t_mask = np.ones(len(te), bool) if g == "all" else te.labels == classes.index(g)
            d_syn, d_test = n["synthetic"][1][s_mask], n["test"][1][t_mask]
            top = float(max(d_syn.max(initial=0), d_test.max(initial=0))) or 1.0
            bins = np.linspace(0, top * 1.02, 40)
            ax.hist(d_test, bins=bins, density=True, alpha=0.6, label=f"held-out real ({len(d_test)})", color="tab:blue")
            ax.hist(d_syn, bins=bins, density=True, alpha=0.6, label=f"synthetic ({len(d_syn)})", color="tab:orange")
            stats = result["memorization"][g]["spaces"][space]
            for p, style in (("1", ":"), ("5", "--")):
                if "below" in stats:
                    ax.axvline(stats["below"][p]["threshold"], color="k", ls=style, lw=1, label=f"held-out {p}{'st' if p == '1' else 'th'} pct")
            ax.set_title(f"{g}: {result['memorization'][g]['verdict'].split(':')[0]}", fontsize=9)
            ax.set_xlabel("distance to nearest training image", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"Nearest-training-image distances: {spaces[space]['name']}", fontsize=9, y=1.04)
        name = f"distances_{space}.png"
        _save_figure(fig, out / name)
        figures[f"distances_{space}"] = name

        # The 16 closest synthetic/training pairs, side by side.
        index, dist = n["synthetic"]
        order = closest_pairs(dist, 16)
        cols = 4
        rows = int(np.ceil(len(order) / cols)) or 1
        fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.3, rows * 1.5), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for k, i in enumerate(order):
            r, c = divmod(k, cols)
            for j, (img, title) in enumerate(((syn.images[i], f"syn {classes[syn.labels[i]]}"),
                                              (tr.images[index[i]], f"train d={dist[i]:.3f}"))):
                ax = axes[r][2 * c + j]
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
                ax.set_title(title, fontsize=6)
        fig.suptitle(f"16 closest synthetic (left) / training (right) pairs: {spaces[space]['name']}", fontsize=8)
        name = f"closest_pairs_{space}.png"
        _save_figure(fig, out / name, dpi=80)
        figures[f"closest_pairs_{space}"] = name

    # Fidelity: FD of synthetic vs the real reference, per class and extractor.
    for key, table in result["fidelity"].items():
        names = [g for g in groups if "fd" in table[g]["synthetic"] and "fd" in table[g]["real_reference"]]
        if not names:
            continue
        fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 2.8))
        x = np.arange(len(names))
        ax.bar(x - 0.2, [table[g]["synthetic"]["fd"] for g in names], 0.4, label="synthetic vs held-out")
        ax.bar(x + 0.2, [table[g]["real_reference"]["fd"] for g in names], 0.4, label="real train vs held-out (same N)")
        ax.set_xticks(x, names, fontsize=8)
        ax.set_ylabel("Fréchet distance ↓", fontsize=8)
        ax.legend(fontsize=7)
        ax.set_title(spaces[key]["name"], fontsize=8)
        name = f"fidelity_{key}.png"
        _save_figure(fig, out / name)
        figures[f"fidelity_{key}"] = name
    return figures


# -- report --------------------------------------------------------------------------------------------
def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def _ci(v: float, ci: Sequence[float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(v)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def fidelity_table(result: dict, key: str) -> list[str]:
    """Markdown rows: FD, KID and PRDC per group for one extractor, synthetic beside the real reference."""
    lines = ["| set | N syn / ref / held-out | FD ↓ (ref) | KID ×10³ ↓ (ref) | precision | recall | density | coverage |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for g, pair in result["fidelity"][key].items():
        s, r = pair["synthetic"], pair["real_reference"]
        fd = f"{s['fd']:.1f} ({r['fd']:.1f})" if "fd" in s and "fd" in r else "–"
        kd = (f"{1e3 * s['kid']:.2f} ± {1e3 * s['kid_std']:.2f} ({1e3 * r['kid']:.2f})"
              if "kid" in s and "kid" in r else "–")
        cells = [g, f"{s['n']} / {r['n']} / {s['n_test']}", fd, kd]
        for m in ("precision", "recall", "density", "coverage"):
            cells.append(f"{_ci(s[m], s[m + '_ci'], '{:.2f}')} ({r[m]:.2f})" if m in s and m in r else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def memorization_table(result: dict) -> list[str]:
    """Markdown rows: per group and space, the copy statistics and the verdict."""
    lines = ["| set | space | N syn / held-out | median d syn / held-out | < held-out 1st pct (1 % expected) "
             "| < held-out 5th pct (5 % expected) | C_T z | p (one-sided) | verdict |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for g, m in result["memorization"].items():
        for space, s in m["spaces"].items():
            if "below" not in s:
                continue
            b1, b5 = s["below"]["1"], s["below"]["5"]
            lines.append(f"| {g} | {space} | {s['n_synthetic']} / {s['n_heldout']} | "
                         f"{s['median_synthetic']:.3f} / {s['median_heldout']:.3f} | "
                         f"{_pct(b1['share'])} [{_pct(b1['ci'][0])}, {_pct(b1['ci'][1])}] | "
                         f"{_pct(b5['share'])} [{_pct(b5['ci'][0])}, {_pct(b5['ci'][1])}] | {s['z']:.1f} | "
                         f"{s['p']:.2g} | {'suspicious' if s['suspicious'] else 'no copying'} |")
    return lines


def verdict_lines(result: dict) -> list[str]:
    lines = []
    for g, m in result["memorization"].items():
        line = f"- **{g}**: {m['verdict']}"
        if m["reasons"]:
            line += " (" + "; ".join(m["reasons"]) + ")"
        lines.append(line + ".")
    return lines


def _setup_lines(result: dict) -> list[str]:
    gen = result.get("generation") or {}
    how = (f"sampler `{gen.get('sampler')}`, {gen.get('steps')} steps, guidance {gen.get('guidance')}, seeds from "
           f"{gen.get('seed')}" + (f", start `{gen.get('start_from')}`" if gen.get("start_from") else "")
           if gen.get("sampler") else "no generation.json")
    n = result["n"]
    return [
        f"- Domain `{result['domain']}`; every image square-resized to **{result['resolution']} px** "
        "(the generator's resolution) before any measurement.",
        f"- Synthetic: `{result['synthetic']}` ({sum(n['synthetic'].values())} images; {how}).",
        f"- Real training images (what the generator learned from): `{result['train']}` ({sum(n['train'].values())}).",
        f"- Held-out real images (never seen by the generator): `{result['test']}` ({sum(n['test'].values())}).",
        "- Per class N: " + "; ".join(f"{c} {n['synthetic'][c]} / {n['train'][c]} / {n['test'][c]}"
                                      for c in result["classes"]) + " (synthetic / train / held-out).",
        "- Feature spaces: " + "; ".join(f"`{k}` = {v['name']}" for k, v in result["spaces"].items()) + ".",
    ]


def report_markdown(result: dict) -> str:
    """``report.md``: set-up, verdicts, fidelity and coverage per extractor, memorization, figures, warnings."""
    lines = [f"# Synthetic-data audit: {result['domain']}", "", "## Set-up", "", *_setup_lines(result), "",
             "## Verdict: does the set copy its training images?", "", *verdict_lines(result), "",
             "A class is *suspicious* when, in some space, significantly more synthetic images lie closer to a "
             "training image than held-out real images do (the share's 95 % bootstrap interval lies above the "
             "1 % or 5 % that held-out images give by construction) and a one-sided Mann-Whitney test of the two "
             "distance distributions rejects at p < 0.01. Held-out real images are the yardstick of what "
             "\"not a copy\" looks like for this dataset, near-duplicates in the data included.", ""]
    for key in result["fidelity"]:
        lines += [f"## Fidelity and coverage: {result['spaces'][key]['name']}", "",
                  "Synthetic against the held-out real images; in brackets the real reference: as many real "
                  "*training* images per class as synthetic ones against the same held-out images, the score of a "
                  "generator that reproduced its data exactly, at the same N. KID: mean ± standard deviation over "
                  f"{result['fidelity'][key]['all']['synthetic'].get('subsets', 100)} subsets. "
                  f"PRDC: k = {result['prdc_k']}, 95 % bootstrap intervals (resampling the averaged images, "
                  "neighbourhood radii fixed).", "", *fidelity_table(result, key), "",
                  f"![fidelity](fidelity_{key}.png)", ""]
    lines += ["## Memorization", "",
              "Distance from each image to its nearest real training image (any class). Feature spaces: 1 - cosine "
              "similarity; pixels: 1 - normalised correlation. Intervals: 95 % bootstrap over both sets. C_T z: the "
              "Mann-Whitney z-score of Meehan et al. (2020); well below 0 means synthetic images lie closer to the "
              "training images than held-out ones do.", "", *memorization_table(result), ""]
    for space in result["spaces"]:
        lines += [f"### {result['spaces'][space]['name']}", "",
                  f"![distances](distances_{space}.png)", "", f"![closest pairs](closest_pairs_{space}.png)", ""]
    lines += ["Per image: `nearest.csv` (synthetic) and `heldout_nearest.csv` (held-out real).", ""]
    warnings = list(result["warnings"]) + sorted({f"{g} / {space}: {w}" for g, m in result["memorization"].items()
                                                  for space, s in m["spaces"].items() for w in s.get("warnings", [])})
    if warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in warnings], ""]
    lines += [f"Computed in {result['seconds']:.0f} s by `python -m medsynth audit`."]
    return "\n".join(lines) + "\n"


def card_section(result: dict, out: str | Path) -> str:
    """The short model-card section: the overall row per extractor and the verdicts."""
    lines = [CARD_SECTION, "",
             f"`python -m medsynth audit` on `{result['synthetic']}` ({sum(result['n']['synthetic'].values())} synthetic "
             f"images at {result['resolution']} px) against the generator's training images `{result['train']}` and "
             f"held-out real images `{result['test']}`; the full report is `{Path(out) / 'report.md'}`.", ""]
    for key in result["fidelity"]:
        lines += [f"Fidelity and coverage in {result['spaces'][key]['name']} (in brackets: real training images "
                  "against the same held-out images, same N):", "", *fidelity_table(result, key)[:3], ""]
    lines += ["Memorization (nearest training image; held-out real images are the yardstick):", "",
              *verdict_lines(result), ""]
    return "\n".join(lines)


def update_card(card_dir: str | Path, result: dict, out: str | Path) -> None:
    """Insert or replace the audit section of a checkpoint's README.md and store ``audit.json`` beside it."""
    from .cards.render import replace_section

    folder = Path(card_dir)
    if not folder.is_dir():
        raise MedsynthError(f"--card {folder} is not a checkpoint folder")
    card = folder / "README.md"
    text = card.read_text() if card.is_file() else ""
    atomic.write_text(card, replace_section(text, CARD_SECTION, card_section(result, out)))
    atomic.write_json(folder / "audit.json", result)
