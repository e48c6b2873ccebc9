"""Finding and reading tstr / audit reports, and the Experiment tab that shows them."""

from __future__ import annotations

from pathlib import Path

import json

import numpy as np
import pytest
from PIL import Image

from medsynth.reports import find_reports, read_report


def _report(folder, kind: str, domain: str, figure: str = "fig.png"):
    folder.mkdir(parents=True)
    if kind == "tstr":
        (folder / "summary.json").write_text("{}")
        (folder / "config.json").write_text(json.dumps({"domain": domain}))
    else:
        (folder / "audit.json").write_text(json.dumps({"domain": domain}))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / figure)
    (folder / "report.md").write_text(f"# Report {domain}\n\ntext\n\n![accuracy]({figure})\n\n![gone](missing.png)\n"
                                      "\n![escape](../outside.png)\n\nFull audit: [audit/report.md](audit/report.md).\n")
    return folder


def test_find_reports_lists_shipped_and_the_experiment_first_and_names_a_runs_own_audit(tmp_path):
    shipped = tmp_path / "shipped"
    _report(shipped / "tstr" / "covid_ct", "tstr", "covid_ct")
    _report(shipped / "tstr" / "covid_ct" / "audit", "audit", "covid_ct")  # part of the run above
    _report(shipped / "audit" / "brain_mri", "audit", "brain_mri")
    _report(tmp_path / "mine" / "run1", "tstr", "all_blood")
    (tmp_path / "mine" / "stray").mkdir()
    (tmp_path / "mine" / "stray" / "report.md").write_text("no record beside it")
    found = find_reports(shipped, [tmp_path / "mine", tmp_path / "does_not_exist"])
    assert [(r.kind, r.domain, r.shipped) for r in found] == [  # shipped first; the experiment before audits
        ("tstr", "covid_ct", True), ("audit", "brain_mri", True), ("audit", "covid_ct", True),
        ("tstr", "all_blood", False)]
    # names do not repeat the domain; a run's own audit is a report of its own, named after the run
    assert found[0].label == "covid_ct · train on synthetic, test on real · shipped"
    assert found[2].label == "covid_ct · synthetic-data audit · shipped · the experiment's synthetic set"
    assert found[3].label == "all_blood · train on synthetic, test on real · yours · run1"
    assert find_reports(shipped, [shipped]) == find_reports(shipped)  # each folder once


def test_read_report_returns_text_and_figures_inside_its_folder(tmp_path):
    folder = _report(tmp_path / "r", "audit", "covid_ct")
    (tmp_path / "outside.png").write_bytes(b"x")
    body, figures = read_report(folder)
    assert "![" not in body and "# Report covid_ct" in body
    assert figures == [(str((folder / "fig.png").resolve()), "accuracy: fig.png")]  # missing and escaping links dropped
    assert str(tmp_path) not in body  # never a server path
    assert "`audit/report.md` (beside this report)" in body
    run = _report(tmp_path / "run", "tstr", "covid_ct")
    _report(run / "audit", "audit", "covid_ct")
    body, _ = read_report(run, shipped=True)
    assert 'the report "covid_ct · synthetic-data audit · shipped · the set of run" in the list above' in body
    assert str(tmp_path) not in body


def test_experiment_tab_shows_a_report(tmp_path, monkeypatch):
    import gradio as gr

    import app as app_module
    from medsynth import service

    _report(tmp_path / "results" / "run", "tstr", "covid_ct")
    monkeypatch.setenv("MEDSYNTH_RESULTS", str(tmp_path / "results"))
    demo = app_module.build_app(service.ModelStore(tmp_path / "no_checkpoints"), data_root=None)
    fns = {b.api_name: b.fn for b in demo.fns.values()}
    label = "covid_ct · train on synthetic, test on real · yours · run"
    body, figures = fns["experiment_report"](label)
    assert "# Report covid_ct" in body and len(figures) == 1 and figures[0][1] == "accuracy: fig.png"
    with pytest.raises(gr.Error, match="no report named"):
        fns["experiment_report"]("nonsense")


def test_classifier_comparison_from_the_evaluation_records(tmp_path):
    import json

    from medsynth.reports import classifier_comparison

    for folder, correct in (("classifier", 9), ("classifier_synthetic", 7)):
        (tmp_path / "ck" / "covid_ct" / folder).mkdir(parents=True)
        metrics = {"domain": "covid_ct", "n": 10, "accuracy": correct / 10, "macro_f1": correct / 10 - 0.05,
                   "classes": ["covid", "non_covid"], "confusion_matrix": [[5, 0], [10 - correct - 5, correct]]}
        (tmp_path / "ck" / "covid_ct" / folder / "evaluation.json").write_text(json.dumps({"val": metrics}))
    table, figures = classifier_comparison(tmp_path / "ck", tmp_path / "figs")
    assert "| covid_ct | 10 | 0.900 / 0.850 | 0.700 / 0.650 | 0.78 |" in table
    assert [c for _, c in figures] == ["covid_ct · real-trained · accuracy 0.900",
                                      "covid_ct · synthetic-trained · accuracy 0.700"]
    assert all(Path(p).stat().st_size > 1000 for p, _ in figures)
    assert classifier_comparison(tmp_path / "nothing", tmp_path / "figs") == ("", [])
