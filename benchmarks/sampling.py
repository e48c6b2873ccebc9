"""Sampler speed next to sample quality, for one trained diffusion checkpoint, in one run.

For each configuration (ddpm 1000 steps — the diffusers default —, ddim 50, dpmpp 20, dpmpp 10,
dpmpp_sde 25):
seconds per image, images per second, and FD-Lite0 (Fréchet distance of ImageNet
EfficientNet-Lite0 features) of its samples against real images the model was not trained on
(the checkpoint's split.json "val" list). All configurations use the same UNet, the same class
balance and the same seeds.

    python benchmarks/sampling.py --checkpoint runs/brain_diff --n 32 --out benchmarks/results/sampling_brain_mri.json

Prints a Markdown table; --out also writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from medsynth.diffusion import load_pipeline
from medsynth.hardware import describe
from medsynth.io import load_image
from medsynth.quality import FEATURE_NAME, Lite0Features, frechet_distance
from medsynth.transforms import square_resize_uint8

CONFIGS = [("ddpm", 1000), ("ddim", 50), ("dpmpp", 20), ("dpmpp", 10), ("dpmpp_sde", 25)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--n", type=int, default=32, help="images per configuration (balanced over classes)")
    ap.add_argument("--ddpm-n", type=int, default=None, help="images for the slow 1000-step ddpm row (default: --n)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", default=None, help="write raw results as JSON here")
    args = ap.parse_args()

    ckpt = Path(args.checkpoint)
    pipe = load_pipeline(ckpt)
    channels = pipe.unet.config.in_channels
    size = pipe.unet.config.sample_size
    split = json.loads((ckpt / "split.json").read_text())
    real_files = split["val"]
    # Real images at the model's resolution, so that the distance measures the model, not the resize.
    real = [square_resize_uint8(load_image(f, channels), size) for f in real_files]
    features = Lite0Features()
    real_feats = features(real)

    rows = []
    k = len(pipe.classes)
    for sampler, steps in CONFIGS:
        n = (args.ddpm_n or args.n) if sampler == "ddpm" else args.n
        labels = [i % k for i in range(n)]
        images = []
        started = time.perf_counter()
        for start in range(0, n, args.batch_size):
            chunk = labels[start : start + args.batch_size]
            gens = [torch.Generator().manual_seed(args.seed + start + j) for j in range(len(chunk))]
            images.append(pipe(chunk, num_inference_steps=steps, guidance_scale=args.guidance, generator=gens,
                               sampler=sampler))
        seconds = time.perf_counter() - started
        images = np.concatenate(images)
        fd = frechet_distance(features(list(images)), real_feats)
        rows.append({"sampler": sampler, "steps": steps, "n": n, "seconds_per_image": seconds / n,
                     "images_per_second": n / seconds, "fd_lite0": fd})
        print(f"{sampler:>5} {steps:>4} steps: {seconds / n:.3f} s/image, FD-Lite0 {fd:.1f} (n={n})", file=sys.stderr)

    # Reference: n real held-out images against the other held-out images, the same shape of
    # comparison as each sampler's row: the floor of the metric at this N.
    half = args.n
    floor = frechet_distance(real_feats[:half], real_feats[half:])
    result = {
        "checkpoint": str(ckpt), "classes": pipe.classes, "resolution": size,
        "parameters": sum(p.numel() for p in pipe.unet.parameters()), "guidance": args.guidance,
        "batch_size": args.batch_size, "n_real": len(real), "real_vs_real_fd": floor, "feature": FEATURE_NAME,
        "hardware": describe("cpu"), "torch": torch.__version__, "python": platform.python_version(), "rows": rows,
    }
    print(f"\n{FEATURE_NAME}; real reference: {len(real)} held-out images ({ckpt / 'split.json'} 'val').\n")
    print("| sampler | steps | n | s/image | images/s | FD-Lite0 ↓ |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['n']} | {r['seconds_per_image']:.3f} | "
              f"{r['images_per_second']:.2f} | {r['fd_lite0']:.1f} |")
    print(f"| real images (floor: {half} held-out vs the other {len(real_feats) - half}) | | {half} | | | {floor:.1f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
