"""Are synthetic samples closer to the diffusion model's own training images than to unseen ones?

A synthetic-only CNN scores higher on the selection images (real images of the diffusion model's
training split) than on the validation images (which no model trained on). This compares the two
real sets against one synthetic set in ImageNet EfficientNet-Lite0 features (as ``medsynth
quality``):

- FD-Lite0 of the synthetic set against each real set, the larger set cut to the smaller one's
  size per class (a seeded pick), since FD depends on the sample size;
- for each real image, the cosine distance to its nearest synthetic sample of its own class:
  mean and median per set. Lower means the generator draws images more like that set.

With --classifier, also the accuracy of that (real-trained) CNN on both sets, as a yardstick of how
hard each set is on its own.

    python benchmarks/split_gap.py --domain brain_mri --synthetic runs/brain_syn_prior \\
        --seen runs/brain_select/val --unseen runs/brain_split/val --classifier runs/brain_filter64 \\
        --out benchmarks/results/split_gap_brain_mri.json
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medsynth import atomic  # noqa: E402
from medsynth.domains import get_domain  # noqa: E402
from medsynth.quality import Lite0Features, class_images, frechet_distance  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--domain", required=True)
    ap.add_argument("--synthetic", required=True, help="labelled synthetic folder")
    ap.add_argument("--seen", required=True, help="real images of the diffusion model's training split")
    ap.add_argument("--unseen", required=True, help="real images no model trained on")
    ap.add_argument("--classifier", help="a real-trained classifier to score both real sets with")
    ap.add_argument("--size", type=int, default=64, help="resolution the images are compared at (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    domain = get_domain(args.domain)
    classes, channels = domain.classes, domain.channels

    extract = Lite0Features()
    sets = {name: class_images(folder, classes, channels, args.size, None, args.seed)
            for name, folder in (("synthetic", args.synthetic), ("seen", args.seen), ("unseen", args.unseen))}
    feats = {name: {c: extract(list(arr)) for c, arr in per_class.items()} for name, per_class in sets.items()}

    rng = np.random.default_rng(args.seed)
    result: dict = {"domain": args.domain, "synthetic": args.synthetic, "seen": args.seen, "unseen": args.unseen,
                    "size": args.size, "n": {k: sum(len(v) for v in f.values()) for k, f in feats.items()}}
    # FD on equal sizes per class: cut the larger real set to the smaller one's count.
    cut = {}
    for c in classes:
        n = min(len(feats["seen"][c]), len(feats["unseen"][c]))
        cut[c] = {k: feats[k][c][sorted(rng.choice(len(feats[k][c]), n, replace=False))] for k in ("seen", "unseen")}
    syn_all = np.concatenate([feats["synthetic"][c] for c in classes])
    result["fd"] = {k: round(frechet_distance(syn_all, np.concatenate([cut[c][k] for c in classes])), 1)
                    for k in ("seen", "unseen")}
    result["fd_n_each"] = sum(len(cut[c]["seen"]) for c in classes)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    nearest = {}
    for k in ("seen", "unseen"):
        d = []
        for c in classes:
            sim = unit(feats[k][c]) @ unit(feats["synthetic"][c]).T
            d.append(1.0 - sim.max(axis=1))
        d = np.concatenate(d)
        nearest[k] = {"mean": round(float(d.mean()), 4), "median": round(float(np.median(d)), 4)}
    result["nearest_synthetic_cosine_distance"] = nearest

    if args.classifier:
        from medsynth.classify import load_classifier
        from medsynth.evaluate import evaluate_folder

        clf = load_classifier(args.classifier)
        result["classifier"] = args.classifier
        result["classifier_accuracy"] = {k: round(evaluate_folder(clf, folder, progress=False)["accuracy"], 4)
                                         for k, folder in (("seen", args.seen), ("unseen", args.unseen))}
    print(result)
    if args.out:
        atomic.write_json(args.out, result)


if __name__ == "__main__":
    main()
