"""Side by side: the cells of several `medsynth tstr` runs, as one Markdown table.

Each row is (training set, real fraction); each run contributes mean ± standard error of test accuracy
over seeds per architecture, with the epochs its cells ran. Used for the equal-steps scarcity curve:

    python benchmarks/tstr_compare.py "8 epochs=benchmarks/results/tstr/covid_ct" \\
        "at least 150 steps=benchmarks/results/tstr/covid_ct_equal_steps" --train-sets real,mixed
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path


def mean_se(values: list[float]) -> str:
    m = sum(values) / len(values)
    if len(values) < 2:
        return f"{m:.3f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.3f} ± {sd / math.sqrt(len(values)):.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_FOLDER (a folder with results.json)")
    ap.add_argument("--train-sets", default="real,synthetic,mixed")
    args = ap.parse_args(argv)
    wanted = args.train_sets.split(",")
    runs = []
    for item in args.runs:
        label, _, folder = item.partition("=")
        runs.append((label, json.loads((Path(folder) / "results.json").read_text())))
    archs = sorted({r["arch"] for _, rows in runs for r in rows})
    keys = sorted({(r["train_set"], r["fraction"]) for _, rows in runs for r in rows if r["train_set"] in wanted},
                  key=lambda k: (wanted.index(k[0]), -k[1]))
    short = {a: a.replace("tf_efficientnet_", "") for a in archs}
    header = ["trained on (real fraction)"] + [f"{short[a]}, {label}" for label, _ in runs for a in archs]
    print("| " + " | ".join(header) + " |")
    print("| --- |" + " ---: |" * (len(header) - 1))
    for train_set, fraction in keys:
        cells = []
        for _, rows in runs:
            for a in archs:
                picked = [r for r in rows if (r["arch"], r["train_set"], r["fraction"]) == (a, train_set, fraction)]
                if not picked:
                    cells.append("–")
                    continue
                epochs = sorted({r["epochs_run"] for r in picked})
                n = picked[0]["n_train"]
                cells.append(f"{mean_se([r['accuracy'] for r in picked])} (N {n:,}, {'/'.join(map(str, epochs))} ep)")
        print(f"| {train_set} ({fraction:g}) | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
