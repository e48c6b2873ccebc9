"""Would the shipped classifiers keep their predictions if stored in fp16?

Each shipped classifier is saved with fp16 weights (``Classifier.save(dtype=torch.float16)``, half the
file), loaded back (cast to fp32, as every fp16 checkpoint is) and run beside the original on real
held-out images: the validation split of the shipped checkpoints (10 % per class, seed 0, as
``medsynth split --val-fraction 0.1 --seed 0``), read straight from the dataset folder.

    python benchmarks/fp16_storage.py --data-root ../shared/data --out benchmarks/results/fp16_storage.json

Prints one line per classifier: images, predictions that change, the largest probability difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from medsynth import atomic
from medsynth.classify import load_classifier
from medsynth.data import scan_dataset, stratified_split
from medsynth.domains import DOMAINS
from medsynth.io import load_image

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True, help="folder with one dataset folder per domain key")
    ap.add_argument("--checkpoints", default=str(ROOT / "checkpoints"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = []
    for key, domain in DOMAINS.items():
        data = Path(args.data_root) / key
        if not data.is_dir():
            print(f"{key}: no {data}, skipped", file=sys.stderr)
            continue
        _, val = stratified_split(scan_dataset(data, domain.classes), 0.1, 0)
        for kind in ("classifier", "classifier_synthetic"):
            folder = Path(args.checkpoints) / key / kind
            if not (folder / "model.safetensors").is_file():
                continue
            started = time.time()
            full = load_classifier(folder)
            images = [load_image(s.path, full.config.channels) for s in val]
            with tempfile.TemporaryDirectory() as tmp:
                full.save(tmp, dtype=torch.float16)
                half = load_classifier(tmp)
                half_mb = (Path(tmp) / "model.safetensors").stat().st_size / 1e6
            p32, p16 = full.predict_proba(images), half.predict_proba(images)
            labels = np.array([s.label for s in val])
            row = {
                "domain": key, "model": kind, "images": len(val),
                "predictions_changed": int((p32.argmax(1) != p16.argmax(1)).sum()),
                "max_probability_difference": float(np.abs(p32 - p16).max()),
                "accuracy_fp32": float((p32.argmax(1) == labels).mean()),
                "accuracy_fp16": float((p16.argmax(1) == labels).mean()),
                "file_mb_fp32": round((folder / "model.safetensors").stat().st_size / 1e6, 1),
                "file_mb_fp16": round(half_mb, 1), "seconds": round(time.time() - started, 1),
            }
            rows.append(row)
            print(f"{key:<10} {kind:<21} {row['images']} images: {row['predictions_changed']} predictions change, "
                  f"max |dp| {row['max_probability_difference']:.2e}, accuracy {row['accuracy_fp32']:.4f} -> "
                  f"{row['accuracy_fp16']:.4f}, {row['file_mb_fp32']} -> {row['file_mb_fp16']} MB", flush=True)
    if args.out:
        atomic.write_json(args.out, {"rows": rows, "command": "python " + " ".join(sys.argv)})


if __name__ == "__main__":
    main()
