"""Markdown tables for benchmarks/RESULTS.md from `medsynth audit` records (audit.json), one block per domain.

    python benchmarks/audit_summary.py benchmarks/results/audit/*/audit.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medsynth.audit import fidelity_table, verdict_lines


def block(result: dict) -> list[str]:
    n = result["n"]
    lines = [f"### {result['domain']}", "",
             f"{sum(n['synthetic'].values())} synthetic images (`{result['synthetic']}`), "
             f"{sum(n['train'].values())} training and {sum(n['test'].values())} held-out real images, all at "
             f"{result['resolution']} px; {result['seconds']:.0f} s.", ""]
    for key in result["fidelity"]:
        lines += [f"Fidelity and coverage, {result['spaces'][key]['name']} (in brackets: real training images "
                  "against the same held-out images, same N):", "", *fidelity_table(result, key), ""]
    lines += ["Memorization (share of synthetic images closer to a training image than the held-out 1st / 5th "
              "percentile; C_T z):", "",
              "| set | " + " | ".join(result["spaces"]) + " |", "| --- |" + " ---: |" * len(result["spaces"])]
    for g, m in result["memorization"].items():
        cells = []
        for space, s in m["spaces"].items():
            cells.append(f"{100 * s['below']['1']['share']:.1f} % / {100 * s['below']['5']['share']:.1f} %; "
                         f"z {s['z']:.1f}" if "below" in s else "–")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines += ["", "Verdicts:", "", *verdict_lines(result), ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("records", nargs="+", help="audit.json files")
    args = ap.parse_args()
    for path in args.records:
        print("\n".join(block(json.loads(Path(path).read_text()))))


if __name__ == "__main__":
    main()
