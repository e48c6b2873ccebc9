"""Does a cheaper trick at inference close the synthetic-to-real gap? Mirror TTA and seed ensembles.

For each classifier checkpoint, on real (selection) images: accuracy and macro-F1 of its plain
prediction and of the mean of its probabilities on the image and its left-right mirror (every
shipped recipe trains with horizontal flips, so the mirror is an image of the same class). With two
or more checkpoints, the same for the mean of their probabilities.

    python benchmarks/inference_tta.py --data runs/brain_select/val \\
        --checkpoints runs/recipe_brain_u3sp/lite2_s0 runs/recipe_brain_u3sp/lite2_s1 \\
        --out benchmarks/results/inference_tta_brain_mri.json
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medsynth import atomic  # noqa: E402
from medsynth.classify import load_classifier  # noqa: E402
from medsynth.data import scan_dataset  # noqa: E402
from medsynth.io import load_image  # noqa: E402
from medsynth.metrics import classification_metrics  # noqa: E402


def scores(labels, probs, classes) -> dict:
    m = classification_metrics(labels, probs.argmax(axis=1), classes)
    return {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="real images, one sub-folder per class")
    ap.add_argument("--checkpoints", nargs="+", required=True, help="classifier folders of one domain")
    ap.add_argument("--out", help="write the results here as JSON")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows, plain, mirrored, classes = [], [], [], None
    for path in args.checkpoints:
        clf = load_classifier(path)
        if classes is None:  # the images are read once, for the first checkpoint's classes and channels
            classes = clf.classes
            samples = scan_dataset(args.data, classes, require_all=False)
            images = [load_image(s.path, clf.config.channels) for s in samples]
            labels = [s.label for s in samples]
        elif clf.classes != classes:
            raise SystemExit(f"{path}: classes {clf.classes} differ from {classes}; pass checkpoints of one domain")
        p = clf.predict_proba(images)
        pm = clf.predict_proba([np.ascontiguousarray(im[:, ::-1]) for im in images])
        plain.append(p)
        mirrored.append(pm)
        rows.append({"checkpoint": path, "plain": scores(labels, p, classes),
                     "mirror_tta": scores(labels, (p + pm) / 2, classes)})
    if len(args.checkpoints) > 1:
        rows.append({"checkpoint": "mean of all", "plain": scores(labels, sum(plain), classes),
                     "mirror_tta": scores(labels, sum(plain) + sum(mirrored), classes)})
    for r in rows:
        print(f"{r['checkpoint']:<40} plain {r['plain']['accuracy']:.4f} / {r['plain']['macro_f1']:.4f}   "
              f"mirror TTA {r['mirror_tta']['accuracy']:.4f} / {r['mirror_tta']['macro_f1']:.4f}")
    if args.out:
        atomic.write_json(args.out, {"data": args.data, "n": len(labels), "rows": rows})


if __name__ == "__main__":
    main()
