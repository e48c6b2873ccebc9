"""LIME speed and stability: our defaults against the lime library's defaults, plus a small sweep.

Same classifier, same images, one run. For each configuration and image: seconds per explanation
(median over seeds) and stability = mean pairwise IoU, over 3 seeds, of the pixel masks covered by
the top-5 positive superpixels. Grad-CAM's time is reported beside them.

    python benchmarks/explain.py --checkpoint runs/all_blood_clf --images IMG1 IMG2 IMG3 --out benchmarks/results/explain.json

"lime defaults" = LimeImageExplainer().explain_instance(image, predict_proba) with its default
quickshift segmentation, 1000 samples and batch size 10, on the image at its own resolution.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from medsynth.classify import load_classifier
from medsynth.explain import LIME_DEFAULTS, _silence_lime_tqdm, explain
from medsynth.hardware import describe
from medsynth.io import load_image

SEEDS = (0, 1, 2)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def top5_mask(segments: np.ndarray, weights: list[tuple[int, float]]) -> np.ndarray:
    top = [s for s, w in weights if w > 0][:5]
    return np.isin(segments, top)


def ours(clf, image, seed, num_samples, n_segments):
    exp = explain(image, clf, "lime", seed=seed, num_samples=num_samples, n_segments=n_segments, render=False)
    return exp.seconds, top5_mask(exp.segments, exp.weights), len(np.unique(exp.segments))


def lime_defaults(clf, image, seed):
    from lime.lime_image import LimeImageExplainer

    _silence_lime_tqdm()  # keep the log readable; it does not change the work done
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    started = time.perf_counter()
    target = int(clf.predict_proba([image])[0].argmax())
    explainer = LimeImageExplainer(random_state=seed)
    result = explainer.explain_instance(rgb, lambda batch: clf.predict_proba(np.asarray(batch, np.uint8)),
                                        labels=(target,), top_labels=None, random_seed=seed)
    seconds = time.perf_counter() - started
    weights = sorted(result.local_exp[target], key=lambda sw: -abs(sw[1]))
    return seconds, top5_mask(result.segments, weights), len(np.unique(result.segments))


def measure(name, fn, clf, images):
    per_image = []
    for image in images:
        runs = [fn(clf, image, seed) for seed in SEEDS]
        per_image.append({
            "seconds": statistics.median(r[0] for r in runs),
            "iou": float(np.mean([iou(a[1], b[1]) for a, b in itertools.combinations(runs, 2)])),
            "superpixels": runs[0][2],
            "top5_area": float(np.mean([r[1].mean() for r in runs])),
        })
    row = {"config": name, "seconds": float(np.mean([p["seconds"] for p in per_image])),
           "top5_iou": float(np.mean([p["iou"] for p in per_image])),
           "superpixels": float(np.mean([p["superpixels"] for p in per_image])),
           "top5_area": float(np.mean([p["top5_area"] for p in per_image])), "per_image": per_image}
    print(f"{name:<40} {row['seconds']:6.2f} s  top-5 IoU {row['top5_iou']:.3f}  {row['superpixels']:.0f} superpixels",
          file=sys.stderr)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--sweep", action="store_true", help="also sweep num_samples and n_segments around the defaults")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    clf = load_classifier(args.checkpoint)
    images = [load_image(p, clf.config.channels) for p in args.images]

    d = LIME_DEFAULTS
    rows = [measure(f"medsynth defaults ({d['num_samples']} samples, {d['n_segments']} SLIC)",
                    lambda c, im, s: ours(c, im, s, d["num_samples"], d["n_segments"]), clf, images)]
    if args.sweep:
        for ns, seg in [(128, 40), (256, 40), (512, 25), (512, 60), (1000, 40)]:
            rows.append(measure(f"{ns} samples, {seg} SLIC", lambda c, im, s, ns=ns, seg=seg: ours(c, im, s, ns, seg),
                                clf, images))
    rows.append(measure("lime library defaults (1000, quickshift)", lime_defaults, clf, images))
    gc = [explain(im, clf, "gradcam", render=False).seconds for im in images for _ in range(3)]
    result = {"checkpoint": args.checkpoint, "arch": clf.config.arch, "input_size": clf.config.input_size,
              "images": args.images, "seeds": list(SEEDS), "gradcam_seconds": float(np.median(gc)),
              "hardware": describe("cpu"), "torch": torch.__version__, "python": platform.python_version(), "rows": rows}
    print(f"\nclassifier {clf.config.arch} at {clf.config.input_size} px, {len(images)} images x {len(SEEDS)} seeds\n")
    print("| LIME configuration | s / explanation | top-5 IoU over 3 seeds | superpixels | top-5 area |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['config']} | {r['seconds']:.2f} | {r['top5_iou']:.3f} | {r['superpixels']:.0f} | {r['top5_area']:.0%} |")
    print(f"| Grad-CAM | {result['gradcam_seconds']:.3f} | deterministic | | |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
