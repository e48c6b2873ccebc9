"""Finding and reading the reports that ``medsynth tstr`` and ``medsynth audit`` write, for the app.

A report is a folder holding ``report.md`` beside ``summary.json`` (a ``tstr`` run) or ``audit.json``
(an ``audit``). The app lists the shipped ones (``benchmarks/results/``) first, then those under a
user's results folder, and shows a report as its text plus its figures (Markdown image links are
relative to the report's folder, which a browser cannot follow, so figures are returned as files).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

KINDS = {"summary.json": "tstr", "audit.json": "audit"}
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)\s*$")


@dataclass(frozen=True)
class Report:
    path: Path  # the report's folder
    kind: str  # "tstr" or "audit"
    domain: str
    shipped: bool

    @property
    def label(self) -> str:
        """Domain · kind · shipped/yours, then the run's name where it says more than the domain (a tstr
        run's own audit is named after the run)."""
        what = "train on synthetic, test on real" if self.kind == "tstr" else "synthetic-data audit"
        name = self.path.name
        if self.kind == "audit" and name == "audit" and (self.path.parent / "summary.json").is_file():
            name = f"the set of {self.path.parent.name}" if self.path.parent.name != self.domain else \
                "the experiment's synthetic set"
        parts = [self.domain, what, "shipped" if self.shipped else "yours"]
        return " · ".join(parts + ([name] if name != self.domain else []))


def _domain_of(folder: Path, record_name: str) -> str | None:
    try:
        record = json.loads((folder / record_name).read_text())
    except (OSError, ValueError):
        return None
    if record_name == "summary.json":
        try:
            record = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            return None
    return record.get("domain") if isinstance(record, dict) else None


def find_reports(shipped_root: str | Path | None, user_roots: Sequence[str | Path] = (), max_depth: int = 4) -> list[Report]:
    """Every report folder under ``shipped_root`` (first) and ``user_roots``, each listed once.

    Args:
        shipped_root: the repository's ``benchmarks/results`` (or None).
        user_roots: further folders to search (``tstr --out`` / ``audit --out`` parents); missing ones are skipped.
        max_depth: how deep below each root to look.
    """
    found: list[Report] = []
    seen: set[Path] = set()
    roots = ([(Path(shipped_root), True)] if shipped_root else []) + [(Path(r), False) for r in user_roots]
    for root, shipped in roots:
        if not root.is_dir():
            continue
        candidates = sorted(p for depth in range(max_depth + 1) for p in root.glob("/".join(["*"] * depth + ["report.md"])))
        for report in candidates:
            folder = report.parent.resolve()
            if folder in seen:
                continue
            for record_name, kind in KINDS.items():
                if (folder / record_name).is_file():
                    domain = _domain_of(folder, record_name)
                    if domain:
                        seen.add(folder)
                        found.append(Report(report.parent, kind, domain, shipped))
                    break
    # shipped before yours; within each, the experiment's reports before the audits (the study first)
    order = {kind: i for i, kind in enumerate(("tstr", "audit"))}
    return sorted(found, key=lambda r: (not r.shipped, order.get(r.kind, 9)))


def read_report(folder: str | Path, shipped: bool = False) -> tuple[str, list[tuple[str, str]]]:
    """The report's Markdown without its image lines, and its figures as (file path, caption), in order.

    Figures that are missing on disk are left out; links never leave the report's folder. A link to another
    report (a tstr run's ``audit/report.md``) names that report as the app's list does, never a server path.
    """
    folder = Path(folder)
    text = (folder / "report.md").read_text()
    lines, figures = [], []
    root = folder.resolve()
    for line in text.splitlines():
        match = _IMAGE.match(line.strip())
        if not match:
            lines.append(line)
            continue
        target = (folder / match.group(2)).resolve()
        if root in target.parents and target.is_file():
            figures.append((str(target), f"{match.group(1)}: {Path(match.group(2)).name}"))
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    # Links to other reports (e.g. audit/report.md) cannot be followed in the app: name them as the list does.
    def name_report(match) -> str:
        target = (folder / match.group(2)).parent
        for record_name, kind in KINDS.items():
            domain = _domain_of(target, record_name) if (target / record_name).is_file() else None
            if domain:
                return f"the report \"{Report(target, kind, domain, shipped).label}\" in the list above"
        return f"`{match.group(2)}` (beside this report)"

    body = re.sub(r"\[([^\]]+)\]\(([^)\s]+\.md)\)", name_report, body)
    return body, figures


def classifier_comparison(checkpoints: str | Path, out_dir: str | Path | None = None
                          ) -> tuple[str, list[tuple[str, str]]]:
    """The shipped real-trained and synthetic-trained CNNs of every domain side by side, from their
    ``evaluation.json``: a Markdown table (accuracy, macro-F1, held-out images) and, with ``out_dir``,
    one confusion-matrix PNG per classifier written there (matplotlib: ~2 s; the table alone is instant).

    Returns:
        (markdown, [(png path, caption), ...]).
    """
    from .domains import DOMAINS

    rows, figures = [], []
    for key in DOMAINS:
        records = {}
        for folder in ("classifier", "classifier_synthetic"):
            try:
                record = json.loads((Path(checkpoints) / key / folder / "evaluation.json").read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(record, dict) or not record:
                continue
            name, metrics = next(iter(record.items()))  # the held-out folder it was scored on
            if not isinstance(metrics, dict) or not {"accuracy", "macro_f1", "n"} <= set(metrics):
                continue
            records[folder] = metrics
            if out_dir is None or "confusion_matrix" not in metrics or "classes" not in metrics:
                continue
            from .metrics import plot_confusion_matrix

            path = Path(out_dir) / f"confusion_{key}_{folder}.png"
            what = "real-trained" if folder == "classifier" else "synthetic-trained"
            plot_confusion_matrix(metrics["confusion_matrix"], metrics["classes"], path,
                                  title=f"{key}: {what} ({metrics['accuracy']:.3f})")
            figures.append((str(path), f"{key} · {what} · accuracy {metrics['accuracy']:.3f}"))
        if records:
            real, syn = records.get("classifier"), records.get("classifier_synthetic")
            try:
                cell = (lambda m: f"{m['accuracy']:.3f} / {m['macro_f1']:.3f}" if m else "–")
                ratio = f"{syn['accuracy'] / real['accuracy']:.2f}" if real and syn and real["accuracy"] else "–"
                rows.append(f"| {key} | {(real or syn)['n']} | {cell(real)} | {cell(syn)} | {ratio} |")
            except (KeyError, TypeError, ValueError):
                continue  # a record of another shape: this domain is left out, the app still starts
    if not rows:
        return "", []
    table = ("| domain | held-out real images | real-trained CNN: accuracy / macro-F1 | synthetic-trained CNN: "
             "accuracy / macro-F1 | synthetic / real accuracy |\n| --- | ---: | ---: | ---: | ---: |\n"
             + "\n".join(rows))
    return table, figures
