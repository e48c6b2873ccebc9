"""Markdown tables for benchmarks/RESULTS.md from `medsynth audit` records (audit.json), one block per domain.

    python benchmarks/audit_summary.py benchmarks/results/audit/*/audit.json          # every table
    python benchmarks/audit_summary.py --short benchmarks/results/audit/*/audit.json  # one table per domain
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


def short(result: dict) -> list[str]:
    """One table: per class, fidelity and coverage in each feature space (real reference in brackets) and
    the memorization figures over all spaces, with the verdict."""
    n, spaces = result["n"], result["spaces"]
    feats = list(result["fidelity"])
    head = ["set", "N syn / train / held-out"]
    for key in feats:
        tag = "Lite0" if key == "lite0" else "CNN" if key.startswith("classifier") else key
        head += [f"FD {tag} (ref)", f"KID×10³ {tag}", f"P / R / D / C {tag}"]
    head += ["max share < held-out p1 / p5", "C_T z (min to max)", "verdict"]
    lines = [f"**{result['domain']}**: {sum(n['synthetic'].values())} synthetic images, "
             f"{sum(n['train'].values())} training and {sum(n['test'].values())} held-out real images at "
             f"{result['resolution']} px; {result['seconds']:.0f} s. Feature spaces: "
             + "; ".join(f"`{k}` = {spaces[k]['name']}" for k in spaces) + ".", "",
             "| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 2) + " --- |"]
    for g in ["all", *result["classes"]]:
        row = [g, "/".join(str(sum(n[p].values()) if g == "all" else n[p][g]) for p in ("synthetic", "train", "test"))]
        for key in feats:
            f = result["fidelity"][key][g]
            syn, ref = f["synthetic"], f["real_reference"]
            row += [f"{syn['fd']:.1f} ({ref['fd']:.1f})", f"{1e3 * syn['kid']:.1f} ± {1e3 * syn['kid_std']:.1f}",
                    " / ".join(f"{syn[m]:.2f}" for m in ("precision", "recall", "density", "coverage"))]
        m = result["memorization"][g]["spaces"]
        stats = [s for s in m.values() if "below" in s]
        row += [f"{100 * max(s['below']['1']['share'] for s in stats):.1f} % / "
                f"{100 * max(s['below']['5']['share'] for s in stats):.1f} %",
                f"{min(s['z'] for s in stats):.1f} to {max(s['z'] for s in stats):.1f}",
                result["memorization"][g]["verdict"]]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("records", nargs="+", help="audit.json files")
    ap.add_argument("--short", action="store_true", help="one table per domain")
    args = ap.parse_args()
    for path in args.records:
        result = json.loads(Path(path).read_text())
        print("\n".join(short(result) if args.short else block(result)))


if __name__ == "__main__":
    main()
