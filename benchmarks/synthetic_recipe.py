"""Which training recipe makes the best CNN from a synthetic image set, judged on real images.

Trains one `python -m medsynth train-classifier` run per recipe variant and seed on the synthetic
folder, choosing nothing: every run goes the full number of epochs (`--patience 0`), and each epoch
is scored on the real selection folder. Two numbers summarise a run:

- best: accuracy and macro-F1 of the epoch with the best macro-F1 (what the shipped checkpoint keeps);
- late: mean accuracy over the last three epochs, which is far less noisy than the best epoch on
  synthetic data, where the real-image score swings by several points from one epoch to the next.

    python benchmarks/synthetic_recipe.py --domain brain_mri --data runs/brain_syn \
        --select runs/brain_select/val --out runs/recipe_brain --seeds 0 1 \
        --variant base= --variant freeze3="--freeze-stages 3" --variant strong="--augment strong" --jobs 2

Adds the runs to OUT/results.json and prints a Markdown table of every run recorded there: the
mean over seeds, then each seed.
Runs that already finished in OUT are read back, not retrained, so the command can be resumed or
extended with more variants or seeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASE_ARGS = ["--image-size", "64", "--patience", "0"]


def summarise(log_csv: Path, prefix: str = "") -> dict:
    """best and late of a run's log; ``prefix="live_"`` scores the live weights of an ``--ema`` run."""
    rows = list(csv.DictReader(log_csv.open()))
    best = max(rows, key=lambda r: float(r[prefix + "val_macro_f1"]))
    late = rows[-3:]
    summary = {
        "epochs": len(rows),
        "best_epoch": int(best["epoch"]),
        "best_accuracy": float(best[prefix + "val_accuracy"]),
        "best_macro_f1": float(best[prefix + "val_macro_f1"]),
        "late_accuracy": sum(float(r[prefix + "val_accuracy"]) for r in late) / len(late),
        "seconds": float(rows[-1]["seconds"]),
    }
    if not prefix and "live_val_accuracy" in rows[0]:
        # The same run without the average, step for step (train-classifier keeps the two apart).
        summary["live"] = summarise(log_csv, "live_")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--data", required=True, help="synthetic training folder (one sub-folder per class)")
    ap.add_argument("--select", required=True, help="real images that score every epoch")
    ap.add_argument("--out", required=True, help="folder for the runs and results.json")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=ARGS",
                    help="a name and the extra train-classifier options of one recipe ('base=' for none)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at once (default 1); with more, each gets OMP_NUM_THREADS = cores / jobs")
    args = ap.parse_args()

    variants = {}
    for spec in args.variant:
        name, sep, extra = spec.partition("=")
        if not sep or not name:
            ap.error(f"--variant {spec!r}: expected NAME=ARGS, e.g. freeze3='--freeze-stages 3'")
        variants[name] = shlex.split(extra)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if args.jobs > 1:  # share the cores: one torch thread per run unless the caller set it
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    pending = []
    for name, extra in variants.items():
        for seed in args.seeds:
            run = out / f"{name}_s{seed}"
            if not (run / "train_summary.json").exists():
                pending.append([sys.executable, "-m", "medsynth", "train-classifier", "--domain", args.domain,
                                "--data", args.data, "--val-data", args.select, "--out", str(run), "--overwrite",
                                "--epochs", str(args.epochs), "--seed", str(seed), "--json", *BASE_ARGS, *extra])

    def train(cmd: list[str]) -> None:
        print("+", shlex.join(cmd), file=sys.stderr, flush=True)
        started = time.time()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        print(f"  {time.time() - started:.0f} s: {cmd[cmd.index('--out') + 1]}", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(train, pending))  # re-raises the first failure
    results: dict[str, dict] = {}
    for name, extra in variants.items():
        for seed in args.seeds:
            results[f"{name}_s{seed}"] = {"variant": name, "seed": seed, "args": extra,
                                          **summarise(out / f"{name}_s{seed}" / "train_log.csv")}
    # Earlier invocations on the same OUT (other variants or seeds) stay in results.json.
    record_path = out / "results.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"runs": {}}
    record.update(domain=args.domain, data=args.data, select=args.select)
    record["runs"].update(results)
    tmp = record_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(record_path)

    # The table covers every run recorded in OUT, from this invocation and earlier ones.
    by_variant: dict[str, list[dict]] = {}
    for run in record["runs"].values():
        by_variant.setdefault(run["variant"], []).append(run)
    print("| variant | options | seeds | best acc | best macro-F1 | late acc (last 3 epochs) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, runs in by_variant.items():
        runs.sort(key=lambda r: r["seed"])
        rows = [(name, runs)]
        if all("live" in r for r in runs):  # --ema runs: their live weights too, the paired baseline
            rows.append((f"{name}, live weights", [{**r, **r["live"]} for r in runs]))
        for label, scored in rows:

            def cell(key: str) -> str:
                vals = [r[key] for r in scored]
                each = " / ".join(f"{v:.3f}" for v in vals)
                return f"{sum(vals) / len(vals):.3f}" + (f" ({each})" if len(vals) > 1 else "")

            print(f"| {label} | `{shlex.join(scored[0]['args']) or 'default'}` | "
                  f"{', '.join(str(r['seed']) for r in scored)} | {cell('best_accuracy')} | "
                  f"{cell('best_macro_f1')} | {cell('late_accuracy')} |")

if __name__ == "__main__":
    main()
