"""Validation scores of the checkpoints shipped for one domain, in one run.

Scores `checkpoints/<key>/classifier` (trained on real images) and `classifier_synthetic` (trained on
synthetic images only) on a folder of real images that none of the shipped models trained on, with
the same code as `python -m medsynth evaluate`, and reads the diffusion model's measured quality
(`quality.json`, written by `python -m medsynth quality --card`).

    python benchmarks/shipped.py --domain brain_mri --data runs/brain_split/val \
        --out benchmarks/results/shipped_brain_mri.json

Prints a Markdown table; --out also writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from medsynth.evaluate import evaluate_folder
from medsynth.hardware import describe

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--data", required=True, help="real validation images, one sub-folder per class")
    ap.add_argument("--checkpoints", default=str(ROOT / "checkpoints"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    folder = Path(args.checkpoints) / args.domain
    rows = {}
    for part in ("classifier", "classifier_synthetic"):
        result = evaluate_folder(folder / part, args.data, progress=False)
        rows[part] = result
        print(f"{part}: accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f} (n={result['n']})",
              file=sys.stderr)
    quality_file = folder / "diffusion" / "quality.json"
    quality = json.loads(quality_file.read_text()) if quality_file.is_file() else None
    result = {"domain": args.domain, "data": args.data, "hardware": describe("cpu"), "torch": torch.__version__,
              "python": platform.python_version(), "classifiers": rows, "diffusion_quality": quality}

    classes = rows["classifier"]["classes"]
    print(f"\nReal validation images: `{args.data}` (n = {rows['classifier']['n']}).\n")
    print("| checkpoint | trained on | accuracy | macro-F1 | " + " | ".join(f"recall {c}" for c in classes) + " |")
    print("| --- | --- | ---: | ---: |" + " ---: |" * len(classes))
    for part, r in rows.items():
        recalls = " | ".join(f"{r['per_class'][c]['recall']:.3f}" for c in classes)
        trained = "real images" if part == "classifier" else "synthetic images only"
        print(f"| `{part}` | {trained} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {recalls} |")
    if quality:
        line = (f"\nDiffusion: FD-Lite0 {quality['fd']:.1f} ({sum(quality['n_synthetic'].values())} synthetic vs "
                f"{sum(quality['n_real'].values())} real images at {quality['resolution']} px)")
        if "fd_real_reference" in quality:
            line += f"; real-vs-real reference {quality['fd_real_reference']:.1f}"
        if "classifier_accuracy_on_synthetic" in quality:
            line += (f"; `{quality['classifier']}` (trained on real images) recognises "
                     f"{quality['classifier_accuracy_on_synthetic']:.1%} of the samples")
        print(line + ".")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
