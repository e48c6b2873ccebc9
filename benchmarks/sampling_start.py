"""Where sampling starts: pure noise at t = 999 against the class-mean start at log-SNR >= START_LOG_SNR.

For one diffusion checkpoint, samples the same seeds (n per class, dpmpp_sde, guidance 2) from three
starting points and reports how many a CNN trained on real images recognises, and the samples' mean
colour next to the real training images':

- ``t=999, pure noise``: how medsynth sampled before (DPM-Solver clipped at log-SNR -5.1, no class means);
- ``log-SNR -2.5 + class mean`` (t = 946);
- ``log-SNR -1.5 + class mean`` (t = 858): the default, ``diffusion.START_LOG_SNR``.

    python benchmarks/sampling_start.py --checkpoint runs/blood_diff --classifier runs/blood_clf64 \\
        --n 6 --out benchmarks/results/sampling_start_all_blood.json

The checkpoint needs ``class_means`` in its model_index.json (train-diffusion writes them).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import medsynth.diffusion as D
from medsynth.classify import load_classifier
from medsynth.hardware import describe

CONFIGS = [("t=999, pure noise (before)", -5.1, False), ("log-SNR -2.5 + class mean", -2.5, True),
           ("log-SNR -1.5 + class mean (default)", -1.5, True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--classifier", required=True, help="a CNN trained on real images at the checkpoint's resolution")
    ap.add_argument("--n", type=int, default=6, help="images per class (default 6)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    pipe = D.load_pipeline(args.checkpoint)
    means = pipe.config.get("class_means")
    if not means:
        raise SystemExit(f"{args.checkpoint} has no class_means in model_index.json; retrain or add them")
    clf = load_classifier(args.classifier)
    labels = [c for c in range(len(pipe.classes)) for _ in range(args.n)]
    rows = []
    default = D.START_LOG_SNR
    try:
        for name, start, use_means in CONFIGS:
            D.START_LOG_SNR = start
            pipe.register_to_config(class_means=means if use_means else None)
            gens = [torch.Generator().manual_seed(args.seed + i) for i in range(len(labels))]
            t0 = time.time()
            images = pipe(labels, num_inference_steps=args.steps, generator=gens, sampler="dpmpp_sde",
                          guidance_scale=args.guidance)
            seconds = time.time() - t0
            pred = clf.predict_proba(list(images)).argmax(1)
            truth = np.array(labels)
            colour = images.reshape(len(images), -1, images.shape[-1]).mean(1)
            rows.append({
                "start": name, "start_log_snr": start, "class_means": use_means, "seconds": round(seconds, 1),
                "recognised": float((pred == truth).mean()),
                "recognised_per_class": {c: float((pred[truth == k] == k).mean()) for k, c in enumerate(pipe.classes)},
                "mean_colour": colour.mean(0).round(1).tolist(), "mean_colour_std_over_images": colour.std(0).round(1).tolist(),
            })
            print(json.dumps(rows[-1]), flush=True)
    finally:
        D.START_LOG_SNR = default
        pipe.register_to_config(class_means=means)
    real = [[round((m + 1) * 127.5, 1) for m in row] for row in means]
    print(f"\n{args.checkpoint}: {args.n} per class, dpmpp_sde {args.steps} steps, guidance {args.guidance}")
    print("real training images' mean colour per class (0-255):", real)
    print("| start | recognised | " + " | ".join(pipe.classes) + " | mean colour (0-255) |")
    print("| --- | ---: | " + " | ".join("---:" for _ in pipe.classes) + " | --- |")
    for r in rows:
        print(f"| {r['start']} | {r['recognised']:.1%} | "
              + " | ".join(f"{v:.0%}" for v in r["recognised_per_class"].values()) + f" | {r['mean_colour']} |")
    if args.out:
        from medsynth import atomic

        atomic.write_json(args.out, {"checkpoint": args.checkpoint, "classifier": args.classifier, "n_per_class": args.n,
                                     "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
                                     "hardware": describe(torch.device("cpu"), 1), "real_mean_colour": real,
                                     "rows": rows})


if __name__ == "__main__":
    main()
