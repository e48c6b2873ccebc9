"""`medsynth tstr`: the grid of cells, resume, no test image in training or selection, the report, errors."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest

from medsynth.cli import main
from medsynth.errors import MedsynthError
from medsynth.tstr import Cell, TSTRConfig, plan_cells, shard

from conftest import TINY_ARCH, make_dataset

CT = ["covid", "non_covid"]


def _hashes(folder):
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tstr")
    make_dataset(root / "train", CT, n_per_class=14, size=32, channels=1, seed=1)
    make_dataset(root / "test", CT, n_per_class=6, size=32, channels=1, seed=2)
    syn = make_dataset(root / "syn", CT, n_per_class=8, size=32, channels=1, seed=3)
    (syn / "manifest.csv").unlink()
    (syn / "generation.json").write_text(json.dumps({
        "synthetic": True, "diffusion_checkpoint": "tiny", "diffusion_domain": "covid_ct", "resolution": 32,
        "classes": CT, "n_per_class": 8, "sampler": "dpmpp", "steps": 2, "guidance": 1.0, "seed": 0}))
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_file(timm.create_model(TINY_ARCH, pretrained=False, num_classes=0).state_dict(), str(path))
    return f"file:{path}@{TINY_ARCH}"


def _args(folders, out, *extra):
    return ["tstr", "--domain", "covid_ct", "--real-train", str(folders / "train"), "--real-test",
            str(folders / "test"), "--synthetic", str(folders / "syn"), "--out", str(out), "--archs", TINY_ARCH,
            "--epochs", "1", "--batch-size", "8", "--select-fraction", "0.25", "--json", *extra]


@pytest.fixture(scope="module")
def finished_run(folders, weights, tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("run") / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(_args(folders, out, "--fractions", "1.0,0.5", "--seeds", "0,1", "--min-steps", "3",
                          "--audit-features", weights)) == 0
    return out, json.loads(buf.getvalue().strip().splitlines()[-1])


def test_plan_is_the_grid_with_the_synthetic_row_once_per_arch_and_seed():
    config = TSTRConfig(domain="covid_ct", real_train="a", real_test="b", out="c", synthetic="s", archs=("x", "y"),
                        fractions=(0.25, 1.0), seeds=(0, 1))
    cells = plan_cells(config)
    assert len(cells) == 2 * 2 * (1 + 2 * 2)
    assert cells[:5] == [Cell("x", "synthetic", 1.0, 0), Cell("x", "real", 1.0, 0), Cell("x", "mixed", 1.0, 0),
                         Cell("x", "real", 0.25, 0), Cell("x", "mixed", 0.25, 0)]
    assert len({c.id for c in cells}) == len(cells)
    parts = [shard(cells, r, 3) for r in range(3)]
    assert sorted(sum(parts, []), key=cells.index) == cells and all(parts)


def test_run_writes_every_cell_and_the_report(finished_run, folders):
    out, summary = finished_run
    assert summary["n_cells"] == summary["n_finished"] == 10 and summary["stopped"] is None
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10
    assert {(r["train_set"], r["fraction"]) for r in rows} == {
        ("synthetic", "1.0"), ("real", "1.0"), ("mixed", "1.0"), ("real", "0.5"), ("mixed", "0.5")}
    assert all(r["init"].startswith("random init") for r in rows)  # the tiny test model has no ImageNet weights
    n = {(r["train_set"], r["fraction"]): int(r["n_train"]) for r in rows}
    # 14 real images per class, round(14 * 0.25) = 4 of them kept for selection: 10 train per class.
    assert n[("synthetic", "1.0")] == 16 and n[("real", "1.0")] == 20 and n[("mixed", "1.0")] == 20 + 16
    assert n[("real", "0.5")] == 10
    epochs = {(r["train_set"], r["fraction"]): r["epochs"] for r in json.loads((out / "results.json").read_text())}
    assert epochs[("real", 0.5)] == 2 and epochs[("real", 1.0)] == 1  # 10 images = 2 batches: 2 epochs make 3 steps
    assert all(int(r["n_test"]) == 12 for r in rows) and all("recall_covid" in r for r in rows)
    table = {(t["train_set"], t["fraction"]): t for t in summary["table"]}
    assert table[("real", 1.0)]["seeds"] == [0, 1] and table[("real", 1.0)]["accuracy_se"] is not None
    assert set(summary["cas_ratio"]) == {TINY_ARCH}
    report = (out / "report.md").read_text()
    for text in ("**Question.**", "## Set-up", "## Answer", "## Figures", "## The synthetic set", "ratio",
                 "**In short**", f"- **{TINY_ARCH}**: synthetic only", "adding the synthetic set at 0.5 of the real",
                 "One test image is 0.083 of accuracy (12 test images)", "at least 3 optimiser steps per cell"):
        assert text in report, text
    for name in ("accuracy_by_arch.png", "scarcity.png", "confusion_synthetic.png", "audit/report.md"):
        assert (out / name).is_file(), name
    assert not list((out / "cells").rglob("model.safetensors"))  # weights dropped unless --keep-weights


def test_in_short_says_whether_synthetic_images_help():
    from medsynth.tstr import in_short

    def row(train_set, fraction, acc, se):
        return dict(arch="a", train_set=train_set, fraction=fraction, accuracy=acc, accuracy_se=se)

    table = [row("real", 1.0, 0.90, 0.01), row("synthetic", 1.0, 0.80, 0.01), row("mixed", 1.0, 0.91, 0.01),
             row("real", 0.1, 0.70, 0.01), row("mixed", 0.1, 0.80, 0.02), row("real", 0.25, 0.85, None),
             row("mixed", 0.25, 0.80, None)]
    [line, last] = in_short(table, 100)
    assert line == ("- **a**: synthetic only 0.800 against real only 0.900 (-0.100 ± 0.014); adding the synthetic set "
                    "at 1 of the real images: +0.010 ± 0.014 (no clear difference); adding the synthetic set at 0.25 "
                    "of the real images: -0.050 (one seed: no error bar); adding the synthetic set at 0.1 of the real "
                    "images: +0.100 ± 0.022 (helps).")
    assert last == "- One test image is 0.010 of accuracy (100 test images)."


def test_no_test_image_is_ever_trained_on_or_selects_an_epoch(finished_run, folders):
    out, _ = finished_run
    test = _hashes(folders / "test")
    used = set()
    for folder in (out / "data").iterdir():
        if folder.is_dir():
            used |= _hashes(folder)
    for split in (out / "cells").rglob("split.json"):  # what each cell trained on and selected with
        parts = json.loads(split.read_text())
        for path in parts["train"] + parts["val"]:
            used.add(hashlib.sha256(open(path, "rb").read()).hexdigest())
    assert used and not used & test
    select = _hashes(out / "data" / "select")
    assert select <= _hashes(folders / "train") and not select & _hashes(out / "data" / "real_f1_s0")


def test_rerun_skips_finished_cells(finished_run, folders, weights, capsys, monkeypatch):
    out, first = finished_run
    import medsynth.training.classifier as tc

    monkeypatch.setattr(tc, "train_classifier", lambda recipe: pytest.fail("a finished cell was trained again"))
    assert main(_args(folders, out, "--fractions", "1.0,0.5", "--seeds", "0,1", "--min-steps", "3",
                      "--audit-features", weights)) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["table"] == first["table"]


def test_interrupted_run_resumes_the_missing_cells(folders, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(folders, out, "--no-audit", "--train-sets", "real,synthetic")) == 0
    capsys.readouterr()
    cell = next((out / "cells").iterdir())
    (cell / "result.json").unlink()  # as if killed before the cell finished
    assert main(_args(folders, out, "--no-audit", "--train-sets", "real,synthetic")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_finished"] == summary["n_cells"] == 2 and (cell / "result.json").is_file()
    code = main(_args(folders, out, "--no-audit", "--epochs", "2"))
    assert code == 2 and "other settings (epochs" in capsys.readouterr().err


def test_errors_domain_mismatch_missing_class_and_leaked_test_images(folders, tmp_path, capsys):
    code = main(_args(folders, tmp_path / "a", "--no-audit")[:2] + ["brain_mri"] + _args(folders, tmp_path / "a")[3:])
    assert code == 2 and "is not a known class" in capsys.readouterr().err
    partial = make_dataset(tmp_path / "partial", CT[:1], n_per_class=4, size=32, channels=1)
    args = _args(folders, tmp_path / "b", "--no-audit")
    args[args.index("--real-test") + 1] = str(partial)
    assert main(args) == 2 and "class folder 'non_covid' is missing" in capsys.readouterr().err
    args = _args(folders, tmp_path / "c", "--no-audit")
    args[args.index("--real-test") + 1] = str(folders / "train")
    assert main(args) == 2 and "also in --real-train" in capsys.readouterr().err
    other = tmp_path / "other_syn"
    make_dataset(other, CT, n_per_class=2, size=32, channels=1)
    (other / "manifest.csv").unlink()
    (other / "generation.json").write_text(json.dumps({"synthetic": True, "diffusion_domain": "brain_mri"}))
    args = _args(folders, tmp_path / "d", "--no-audit")
    args[args.index("--synthetic") + 1] = str(other)
    assert main(args) == 2 and "generated for domain 'brain_mri'" in capsys.readouterr().err
    assert main(_args(folders, tmp_path / "e", "--fractions", "0,1")) == 2
    assert "each must be in (0, 1]" in capsys.readouterr().err


def test_study_protocol_trains_its_own_generator_on_a_share_and_tests_on_the_rest(tmp_path, capsys):
    import shutil

    data = make_dataset(tmp_path / "all", CT, n_per_class=10, size=32, channels=1, seed=4)
    for i in range(3):  # duplicates (as in public scan collections) must stay on one side of the split
        shutil.copy(data / "covid" / f"covid_{i:03d}.png", data / "covid" / f"copy_{i}.png")
    out = tmp_path / "study"
    args = ["tstr", "--domain", "covid_ct", "--protocol", "study", "--data", str(data), "--out", str(out),
            "--diffusion-preset", "tiny", "--diffusion-steps", "2", "--synthetic-per-class", "3", "--sampler", "ddim",
            "--steps", "2", "--archs", TINY_ARCH, "--epochs", "1", "--batch-size", "4", "--train-sets",
            "real,synthetic", "--no-audit", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["protocol"] == "study" and summary["n_finished"] == 2
    train, test = _hashes(out / "study" / "train"), _hashes(out / "study" / "test")
    assert len(train) == 4 and len(test) == 16 and not train & test  # 20 % per content and class train the generator
    n_linked = sum(1 for part in ("train", "test") for _ in (out / "study" / part).rglob("*.png"))
    assert n_linked == 23  # the copies came along with their originals
    assert json.loads((out / "synthetic" / "generation.json").read_text())["diffusion_checkpoint"] == \
        str(out / "study" / "diffusion")
    assert "Protocol `study`" in (out / "report.md").read_text()
    assert main(args) == 0  # resumes: nothing is trained again, the saved settings match
    assert main(args + ["--real-train", str(data)]) == 2
    assert "leave out --real-train" in capsys.readouterr().err
    other = args + ["--study-fraction", "0.5"]
    assert main(other) == 2 and "other settings (study_fraction" in capsys.readouterr().err


def test_min_steps_gives_small_training_sets_more_epochs():
    from medsynth.tstr import cell_epochs

    assert cell_epochs(118, 64, 8, 0) == 8  # off: 2 batches x 8 epochs = 16 steps
    assert cell_epochs(118, 64, 8, 150) == 75  # 2 batches per epoch: 75 epochs make 150 steps
    assert cell_epochs(1983, 64, 8, 150) == 8  # 32 batches x 8 epochs already exceed 150 steps
    assert cell_epochs(5, 64, 1, 3) == 3
    with pytest.raises(MedsynthError, match="--min-steps must be 0"):
        TSTRConfig(domain="covid_ct", real_train="a", real_test="b", out="o", synthetic="s", min_steps=-1).validate()


def test_a_scarcity_curve_without_the_full_set_or_synthetic_only_cells_gets_its_report(folders, tmp_path, capsys):
    """The equal-steps comparison runs only real and mixed cells at small fractions: its report and figures
    must still be written (the scarcity figure once failed on it, with no architecture at the full set)."""
    out = tmp_path / "curve"
    assert main(_args(folders, out, "--no-audit", "--train-sets", "real,mixed", "--fractions", "0.5,0.25")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_finished"] == 4 and set(summary["figures"]) == {"scarcity"}
    assert (out / "scarcity.png").is_file() and "## Answer" in (out / "report.md").read_text()
