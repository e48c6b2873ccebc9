"""The shipped CNNs' explain-check results as one table (RESULTS.md) and a section on each real-trained
classifier's card.

    python -m medsynth explain-check --checkpoint checkpoints/D/classifier --data runs/split_D/val \\
        --out benchmarks/results/explain_check/D --n-per-class 3 --methods gradcam,occlusion \\
        --compare-with checkpoints/D/classifier_synthetic
    python benchmarks/explain_check_summary.py [--cards]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medsynth import atomic  # noqa: E402
from medsynth.cards.render import replace_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "explain_check"
DOMAINS = ("brain_mri", "covid_ct", "all_blood")


def _m(stat, digits=2):
    return "–" if not stat or stat.get("mean") is None else f"{stat['mean']:.{digits}f}"


def rows() -> list[str]:
    out = ["| domain | method | N | deletion AUC (random) | insertion AUC (random) | hide top-3 / random-3: drop | "
           "sanity: rank corr. after 5 blocks | inside anatomy (uniform map) | border (uniform) | "
           "rank corr. with the synthetic-only CNN's map |",
           "| --- | --- | ---: | --- | --- | --- | --- | --- | --- | --- |"]
    for domain in DOMAINS:
        path = RESULTS / domain / "explain_check.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        for method, a in r["methods"].items():
            sanity = a.get("sanity") or []
            last = f"{sanity[-1]['spearman']['mean']:.2f}" if sanity and sanity[-1].get("spearman") else "–"
            comp = (a.get("compare") or {}).get("spearman")
            out.append(f"| {domain} | {method} | {r['n_images']} | {_m(a['deletion_auc'])} ({_m(a['random_deletion_auc'])}) | "
                       f"{_m(a['insertion_auc'])} ({_m(a['random_insertion_auc'])}) | "
                       f"{_m(a['faithfulness_drop_top'])} / {_m(a['faithfulness_drop_random'])} | {last} | "
                       f"{_m(a['inside'])} ({_m(a['chance_inside'])}) | {_m(a['border'])} ({_m(a['chance_border'])}) | "
                       f"{_m(comp)} |")
    return out


def card(domain: str) -> None:
    r = json.loads((RESULTS / domain / "explain_check.json").read_text())
    heading = "## Are its explanations faithful? (`medsynth explain-check`)"
    lines = [heading, "", f"On {r['n_images']} held-out images ({r['n_per_class']} per class, seed {r['seed']}), "
             f"from `benchmarks/results/explain_check/{domain}/report.md`:", ""]
    for method, verdicts in r["verdicts"].items():
        lines.append(f"- **{method}**: " + "; ".join(verdicts.values()) + ".")
    lines += ["", "Deletion and insertion replace 8-px patches with a blurred copy, in the map's order and in random "
              "orders; the sanity check re-initialises the network from the top. A map that is not faithful may "
              "still look plausible: read the overlays with these figures in mind.", ""]
    path = ROOT / "checkpoints" / domain / "classifier" / "README.md"
    atomic.write_text(path, replace_section(path.read_text(), heading, "\n".join(lines)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", action="store_true", help="also write the section into the real-trained cards")
    args = parser.parse_args()
    print("\n".join(rows()))
    if args.cards:
        for domain in DOMAINS:
            if (RESULTS / domain / "explain_check.json").is_file():
                card(domain)


if __name__ == "__main__":
    main()
