"""Where a synthetic-only CNN's gap to real scans is *not*: image sharpness, and the seed.

Two checks on real selection images, at the CNN's input size:

- spectra: the radial power spectrum of a synthetic set divided by that of the real images (1.0 at
  every frequency = equally sharp), plus each side's mean grey level;
- probe: accuracy of each CNN, and of the mean of their probabilities, on the real images blurred
  with a Gaussian of each --blur sigma (pixels at the input size). If the generator were smoother
  than real scans, a little blur would close part of the gap.

    python benchmarks/synthetic_gap.py --domain brain_mri --select runs/brain_select/val \\
        --synthetic runs/brain_syn3 runs/brain_syn --checkpoints runs/exp/b_union13 runs/exp/b_union13_s1
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medsynth.classify import load_classifier  # noqa: E402
from medsynth.data import load_resized, scan_dataset  # noqa: E402
from medsynth.domains import get_domain  # noqa: E402
from medsynth.transforms import fit_to_input  # noqa: E402


def images(folder: str, classes, channels: int, size: int):
    samples = scan_dataset(folder, classes)
    arr = load_resized(samples, channels, size, progress=False).astype(np.float32) / 255.0
    return arr, np.array([s.label for s in samples])


def radial_spectrum(arr: np.ndarray) -> np.ndarray:
    """Mean power per integer radius of the centred 2-D spectrum, channels averaged."""
    x = arr.mean(-1)
    power = np.abs(np.fft.fftshift(np.fft.fft2(x - x.mean((1, 2), keepdims=True)), axes=(1, 2))) ** 2
    power = power.mean(0)
    c = power.shape[0] // 2
    yy, xx = np.indices(power.shape)
    r = np.hypot(yy - c, xx - c).astype(int)
    return (np.bincount(r.ravel(), power.ravel()) / np.bincount(r.ravel()))[: c + 1]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)  # separable: rows, then columns
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--select", required=True, help="real labelled images")
    ap.add_argument("--synthetic", nargs="*", default=[], help="synthetic sets for the spectrum check")
    ap.add_argument("--checkpoints", nargs="*", default=[], help="classifier checkpoints for the blur probe")
    ap.add_argument("--size", type=int, default=64, help="compare at this size (default %(default)s)")
    ap.add_argument("--blur", type=float, nargs="+", default=[0.0, 0.5, 0.75, 1.0])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    domain = get_domain(args.domain)
    classes, ch = list(domain.classes), domain.channels
    result: dict = {"select": args.select, "size": args.size}

    real, y = images(args.select, classes, ch, args.size)
    if args.synthetic:
        ref = radial_spectrum(real)  # every image: a subset would change the class mix
        result["real_mean_grey"] = float(real.mean())
        result["spectra"] = {}
        print(f"real {args.select}: mean grey {real.mean():.3f}")
        for folder in args.synthetic:
            syn, _ = images(folder, classes, ch, args.size)
            ratio = radial_spectrum(syn) / ref
            result["spectra"][folder] = {"mean_grey": float(syn.mean()), "power_ratio": ratio.round(3).tolist()}
            print(f"{folder}: mean grey {syn.mean():.3f}; power ratio synthetic/real by radius (0..{len(ratio) - 1}):")
            print("  " + " ".join(f"{v:.2f}" for v in ratio))

    if args.checkpoints:
        clfs = [load_classifier(c) for c in args.checkpoints]
        x = torch.from_numpy(real).permute(0, 3, 1, 2).contiguous()
        result["probe"] = []
        print("| blur sigma (px) | " + " | ".join(args.checkpoints) + " | mean of probabilities |")
        print("| ---: |" + " ---: |" * (len(clfs) + 1))
        for sigma in args.blur:
            xb = gaussian_blur(x, sigma).clamp(0, 1)
            probs = []
            for clf in clfs:
                size = clf.config.input_size
                if args.size not in (size, clf.config.source_size):
                    raise SystemExit(f"{size}-px CNN: run with --size {clf.config.source_size or size}")
                # The classifier's own resize: a CNN that sees its inputs through source_size px gets them upsampled.
                xin = torch.stack([fit_to_input(im, size, clf.config.source_size) for im in xb])
                with torch.inference_mode():
                    probs.append(np.concatenate([torch.softmax(clf.model(clf.normalize(xin[i:i + 16])), 1).numpy()
                                                 for i in range(0, len(xin), 16)]))
            accs = [float((p.argmax(1) == y).mean()) for p in probs]
            ens = float((np.mean(probs, 0).argmax(1) == y).mean())
            result["probe"].append({"sigma": sigma, "accuracy": accs, "mean_of_probabilities": ens})
            print(f"| {sigma} | " + " | ".join(f"{a:.3f}" for a in accs) + f" | {ens:.3f} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
