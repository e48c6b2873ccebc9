"""`medsynth audit` on real images with known answers: a copying set, a non-copying set, and the time.

From one labelled real folder (e.g. ``../shared/data/brain_mri``) a seeded, class-stratified split
gives TRAIN (what a "generator" learned from), TEST (held-out) and SPARE (other held-out images):

- **positive control**: the "synthetic" set is N images of TRAIN itself (a generator that only copies).
  The audit must call every class suspicious. Its wall time, for N synthetic and all of TRAIN, is the
  audit's speed figure (features computed from scratch: the cache folder is new).
- **negative control**: the "synthetic" set is SPARE, real images the "generator" never saw (a perfect
  generator that never copies). The audit should find no copying; a class called suspicious here is a
  false alarm, on data with the dataset's own near-duplicates. It reuses the positive control's cached
  training-image features, so its time is that of a rerun.

    python benchmarks/audit_controls.py --domain brain_mri --data ../shared/data/brain_mri \\
        --n-synthetic 2000 --features lite0 --out runs/audit_controls_brain \\
        --record benchmarks/results/audit_controls_brain_mri.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medsynth import atomic  # noqa: E402
from medsynth.audit import run_audit  # noqa: E402
from medsynth.data import link_or_copy, scan_dataset  # noqa: E402
from medsynth.domains import get_domain  # noqa: E402


def _write(samples, classes, folder: Path, prefix: str = "") -> None:
    for s in samples:
        target = folder / classes[s.label] / (prefix + s.path.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(s.path, target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--domain", required=True)
    ap.add_argument("--data", required=True, help="labelled real folder")
    ap.add_argument("--n-synthetic", type=int, default=2000, help="size of the positive control's copied set")
    ap.add_argument("--spare-fraction", type=float, default=0.06, help="share of each class kept as SPARE")
    ap.add_argument("--test-fraction", type=float, default=0.06, help="share of each class kept as TEST")
    ap.add_argument("--features", action="append", default=None)
    ap.add_argument("--out", required=True, help="work folder (replaced)")
    ap.add_argument("--record", help="JSON file for the measured summary")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    domain = get_domain(args.domain)
    classes = list(domain.classes)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)

    rng = np.random.default_rng(args.seed)
    train, test, spare = [], [], []
    samples = scan_dataset(args.data, classes)
    for label in range(len(classes)):
        members = [s for s in samples if s.label == label]
        order = rng.permutation(len(members))
        n_test, n_spare = (max(2, int(round(len(members) * f))) for f in (args.test_fraction, args.spare_fraction))
        test += [members[i] for i in order[:n_test]]
        spare += [members[i] for i in order[n_test : n_test + n_spare]]
        train += [members[i] for i in order[n_test + n_spare :]]
    copied = [train[i] for i in sorted(rng.choice(len(train), min(args.n_synthetic, len(train)), replace=False))]
    for name, part, prefix in (("train", train, ""), ("test", test, ""), ("spare", spare, ""),
                               ("copies", copied, "copy_")):
        _write(part, classes, out / "folders" / name, prefix)

    features = [s for spec in (args.features or ["lite0"]) for s in spec.split(",")]
    summary: dict = {"domain": args.domain, "data": args.data, "features": features, "seed": args.seed,
                     "n": {"train": len(train), "test": len(test), "spare": len(spare), "copies": len(copied)},
                     "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "command": " ".join([Path(sys.executable).name] + sys.argv)}
    for control, folder in (("positive", "copies"), ("negative", "spare")):
        if control == "negative":  # the training images' features are the same: reuse the cache (keyed by hash)
            (out / control).mkdir(parents=True)
            for cached in (out / "positive").glob("features_*.npz"):
                shutil.copy(cached, out / control / cached.name)
        started = time.perf_counter()
        result = run_audit(out / "folders" / folder, out / "folders" / "train", out / "folders" / "test",
                           out / control, features=features, domain=args.domain, seed=args.seed,
                           log=lambda m: print(f"[{control}] {m}", file=sys.stderr))
        seconds = time.perf_counter() - started
        summary[control] = {
            "seconds": round(seconds, 1),
            "verdicts": {g: m["verdict"] for g, m in result["memorization"].items()},
            "share_below_heldout_p1": {g: {s: round(v["below"]["1"]["share"], 4) for s, v in m["spaces"].items()}
                                       for g, m in result["memorization"].items()},
            "share_below_heldout_p5": {g: {s: round(v["below"]["5"]["share"], 4) for s, v in m["spaces"].items()}
                                       for g, m in result["memorization"].items()},
            "ct_z": {g: {s: round(v["z"], 2) for s, v in m["spaces"].items()} for g, m in result["memorization"].items()},
        }
        print(f"{control} control: {seconds:.0f} s; " + "; ".join(f"{g}: {v}" for g, v in
                                                                  summary[control]["verdicts"].items()))
    if args.record:
        atomic.write_json(args.record, summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
