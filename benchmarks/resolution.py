"""Accuracy by input size: every shipped classifier on its domain's held-out images reduced to 32, 48,
64, 96 and 128 px (longer side) and at full size, with and without JPEG re-compression (quality 75).

    python -m medsynth split --domain D --data ../shared/data/D --out runs/split_D --val-fraction 0.1 --seed 0
    python benchmarks/resolution.py --data-root runs --write      # all domains, both classifiers
    python benchmarks/resolution.py --table                       # the RESULTS.md table from the records

The held-out split (10 % per class, seed 0) is the one every shipped classifier was evaluated on and
none trained or selected its epoch on. ``--write`` stores each record in the classifier's
``evaluation.json`` (inside the held-out folder's entry, as ``accuracy_by_input_size``) and as an
"Accuracy by input size" section on its card; ``classify``, ``/classify`` and the app read it to warn
below the size where accuracy drops clearly (``medsynth.resolution``). Records:
``benchmarks/results/resolution/<domain>_<classifier>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medsynth import atomic  # noqa: E402
from medsynth.domains import DOMAINS, get_domain  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "resolution"
FOLDERS = ("classifier", "classifier_synthetic")


def card_section(record: dict, folder: str) -> str:
    sizes = [str(s) for s in record["sizes"]] + ["full"]
    head = "| input (longer side) | " + " | ".join(f"{s} px" if s != "full" else "full" for s in sizes) + " |"
    rows = [head, "| --- |" + " ---: |" * len(sizes)]
    for mode, label in (("plain", "accuracy"), ("jpeg", f"after JPEG q{record['jpeg_quality']}")):
        rows.append(f"| {label} | " + " | ".join(f"{record[mode][s]:.3f}" for s in sizes) + " |")
    below = record.get("warn_below")
    rule = (f"Predictions for inputs smaller than **{below} px** carry a warning with these figures."
            if below else "No measured size drops clearly, so no prediction carries a size warning.")
    return (f"## Accuracy by input size\n\nThe {record['n']} held-out images (`{record['data']}`) reduced to each "
            f"size (Pillow bicubic, antialiased), then classified as an upload: `python benchmarks/resolution.py "
            f"--data-root runs --write`.\n\n" + "\n".join(rows) + f"\n\n{rule} A size drops clearly when it is "
            "below full size by more than two standard errors and at least 2 points.\n")


def write_checkpoint(checkpoint: Path, record: dict) -> None:
    from medsynth.cards.render import replace_section

    store = checkpoint / "evaluation.json"
    records = json.loads(store.read_text())
    key = next(iter(records))  # the held-out folder the classifier was evaluated on
    records[key]["accuracy_by_input_size"] = {k: v for k, v in record.items() if k not in ("data", "seconds")}
    atomic.write_json(store, records)
    card = checkpoint / "README.md"
    section = card_section({**record, "data": key}, checkpoint.name)
    atomic.write_text(card, replace_section(card.read_text(), "## Accuracy by input size", section))


def run(args) -> None:
    from medsynth.classify import load_classifier
    from medsynth.data import scan_dataset
    from medsynth.io import load_image
    from medsynth.resolution import measure

    RESULTS.mkdir(parents=True, exist_ok=True)
    for domain in args.domains:
        dom = get_domain(domain)
        data = Path(args.data_root) / f"split_{domain}" / "val"
        samples = scan_dataset(data, dom.classes, require_all=False)
        images = [load_image(s.path, dom.channels) for s in samples]
        labels = [s.label for s in samples]
        for folder in FOLDERS:
            checkpoint = ROOT / "checkpoints" / domain / folder
            if not checkpoint.is_dir():
                continue
            clf = load_classifier(checkpoint)
            started = time.time()
            record = measure(clf, images, labels)
            record.update(data=str(data), seconds=round(time.time() - started, 1), checkpoint=str(checkpoint.relative_to(ROOT)))
            atomic.write_json(RESULTS / f"{domain}_{folder}.json", record)
            print(json.dumps(record), flush=True)
            if args.write:
                write_checkpoint(checkpoint, record)


def table() -> str:
    lines = ["| domain | classifier | N | 32 px | 48 px | 64 px | 96 px | 128 px | full | 64 px + JPEG | full + JPEG | warns below |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for domain in DOMAINS:
        for folder in FOLDERS:
            path = RESULTS / f"{domain}_{folder}.json"
            if not path.is_file():
                continue
            r = json.loads(path.read_text())
            p, j = r["plain"], r["jpeg"]
            cells = " | ".join(f"{p[s]:.3f}" for s in ("32", "48", "64", "96", "128", "full"))
            below = f"{r['warn_below']} px" if r.get("warn_below") else "–"
            lines.append(f"| {domain} | {'real-trained' if folder == 'classifier' else 'synthetic-only'} | {r['n']} | "
                         f"{cells} | {j['64']:.3f} | {j['full']:.3f} | {below} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", default=",".join(DOMAINS), type=lambda s: s.split(","))
    parser.add_argument("--data-root", default="runs", help="holds split_<domain>/val (default %(default)s)")
    parser.add_argument("--write", action="store_true", help="store the records in the checkpoints and cards")
    parser.add_argument("--table", action="store_true", help="print the RESULTS.md table from the records")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    run(args)


if __name__ == "__main__":
    main()
