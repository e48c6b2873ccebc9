"""Synthetic sets (medsynth.synthetic): generate (and its provenance record), merge, curate and match."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medsynth.cards.render import _synthetic_note
from medsynth.cli import main
from medsynth.data import scan_dataset
from medsynth.diffusion import save_pipeline
from medsynth.domains import get_domain
from medsynth.recipes import ClassifierRecipe
from medsynth.synthetic.match import extra_copies
from medsynth.training.classifier import train_classifier

from conftest import CT, TINY_ARCH, make_dataset


def test_extra_copies_follow_the_real_images_and_sum_exactly():
    synthetic = np.eye(4)  # four samples, far apart
    real = np.array([[1.0, 0.1, 0, 0]] * 5 + [[0, 0, 1.0, 0.1]])
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    copies = extra_copies(real, synthetic, k=1, total=6)
    assert copies.tolist() == [5, 0, 1, 0]  # five real images lie by sample 0, one by sample 2, none by 1 or 3
    spread = extra_copies(real, synthetic, k=2, total=7)  # each real image splits its vote over two samples
    assert spread.sum() == 7 and spread[0] == spread.max() and spread[3] == 0
    assert extra_copies(real, synthetic, k=50, total=4).tolist() == [1, 1, 1, 1]  # k above the pool: all equal


@pytest.fixture
def sets(tmp_path):
    """A labelled 'synthetic' covid_ct set and real folders whose covid images are all copies of one sample."""
    syn = make_dataset(tmp_path / "syn", CT, n_per_class=4, size=24, channels=1, seed=4)
    (syn / "manifest.csv").unlink()
    rows = [f"{c}/{p.name},{c},{i}" for i, (c, p) in enumerate((c, p) for c in CT for p in sorted((syn / c).iterdir()))]
    (syn / "labels.csv").write_text("file,class,seed\n" + "\n".join(rows) + "\n")
    (syn / "generation.json").write_text(json.dumps({
        "synthetic": True, "diffusion_checkpoint": "diff", "diffusion_domain": "covid_ct", "diffusion_training_steps": 7,
        "resolution": 24, "classes": CT, "n_per_class": 4, "sampler": "dpmpp_sde", "steps": 2, "guidance": 2.0,
        "seed": 0, "class_counts": {"covid": 4, "non_covid": 4}}))
    real = make_dataset(tmp_path / "real", CT, n_per_class=3, size=24, channels=1, seed=9)
    for i in range(3):
        shutil.copy(syn / "covid" / "covid_002.png", real / "covid" / f"covid_{i:03d}.png")
    return syn, real


def test_match_adds_copies_of_the_samples_real_images_lie_near(sets, tmp_path, capsys):
    syn, real = sets
    out = tmp_path / "m"
    assert main(["match", str(syn), "--real", str(real), "--out", str(out), "--k", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record == json.loads((out / "generation.json").read_text())
    assert record["class_counts"] == {"covid": 8, "non_covid": 8}  # every sample once, plus as many copies again
    covid = sorted(p.name for p in (out / "covid").iterdir())
    assert covid == ["covid_000.png", "covid_001.png", "covid_002.png", "covid_003.png",
                     "m1_covid_002.png", "m2_covid_002.png", "m3_covid_002.png", "m4_covid_002.png"]
    assert (out / "covid" / "m4_covid_002.png").read_bytes() == (syn / "covid" / "covid_002.png").read_bytes()
    assert sum(1 for _ in (out / "non_covid").iterdir()) == 8
    match = record["matching"]
    assert match["k"] == 1 and match["real"] == str(real) and match["per_class"]["covid"] == {
        "samples": 4, "real": 3, "extra_copies": 4, "samples_with_copies": 1, "most_copies": 4}
    with (out / "labels.csv").open(newline="") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    assert len(rows) == 16 and rows["covid/m2_covid_002.png"]["copy_of"] == "covid/covid_002.png"
    assert rows["covid/m2_covid_002.png"]["seed"] == rows["covid/covid_002.png"]["seed"] and rows["covid/covid_000.png"]["copy_of"] == ""
    note = _synthetic_note(record)  # what train-classifier writes on the card
    assert "medsynth match" in note and "no real pixel is trained on" in note
    # --extra scales the copies; the default k spreads them
    assert main(["match", str(syn), "--real", str(real), "--out", str(tmp_path / "h"), "--extra", "0.5"]) == 0
    assert "wrote 12 images" in capsys.readouterr().out
    assert json.loads((tmp_path / "h" / "generation.json").read_text())["class_counts"] == {"covid": 6, "non_covid": 6}


def test_match_refuses_what_would_mislead(sets, tmp_path, capsys):
    syn, real = sets

    def error(*argv):
        assert main(["match", *argv]) == 2
        return capsys.readouterr().err

    out = str(tmp_path / "o")
    assert "has no generation.json" in error(str(real), "--real", str(real), "--out", out)
    assert "is a synthetic set" in error(str(syn), "--real", str(syn), "--out", out)
    assert "--k must be at least 1" in error(str(syn), "--real", str(real), "--out", out, "--k", "0")
    assert "--extra must be above 0" in error(str(syn), "--real", str(real), "--out", out, "--extra", "0")
    shutil.rmtree(real / "non_covid")
    assert "has no images of class non_covid" in error(str(syn), "--real", str(real), "--out", out)
    assert "no such folder" in error(str(syn), "--real", str(tmp_path / "nowhere"), "--out", out)
    (tmp_path / "o").mkdir()
    assert "already exists" in error(str(syn), "--real", str(syn.parent / "real"), "--out", out)
    assert "lies inside" in error(str(syn), "--real", str(syn.parent / "real"), "--out", str(syn / "x"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_generate_cli(tmp_path, pipe, capsys):
    save_pipeline(pipe, tmp_path / "p")
    args = ["generate", "--checkpoint", str(tmp_path / "p"), "--class", "covid", "--n", "3", "--sampler", "ddim",
            "--steps", "2", "--seed", "7", "--out", str(tmp_path / "g"), "--json"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the documented keys first, then the images' size (a cascade adds "upsampler")
    assert list(record) == ["n", "seconds", "images_per_second", "files", "resolution"] and record["n"] == 3
    assert record["resolution"] == 16
    assert [p.split("/")[-1] for p in record["files"]] == ["covid_000007.png", "covid_000008.png", "covid_000009.png"]
    first = [open(f, "rb").read() for f in record["files"]]
    assert main(args) == 0
    assert [open(f, "rb").read() for f in record["files"]] == first  # same seed, same PNG bytes

    assert main(["generate", "--checkpoint", str(tmp_path / "p"), "--n-per-class", "2", "--steps", "2",
                 "--out", str(tmp_path / "ds"), "--json"]) == 0

    samples = scan_dataset(tmp_path / "ds", CT)  # a labelled dataset that train-classifier accepts
    assert [s.label for s in samples] == [0, 0, 1, 1]
    rows = list(csv.DictReader(open(tmp_path / "ds" / "labels.csv")))
    assert [r["class"] for r in rows] == ["covid", "covid", "non_covid", "non_covid"]
    assert json.loads((tmp_path / "ds" / "generation.json").read_text())["start_log_snr"] == -1.5


@pytest.mark.parametrize(
    "extra,message",
    [(["--class", "flu"], "unknown class 'flu'"), (["--class", "covid", "--sampler", "euler"], "invalid choice: 'euler'"),
     (["--class", "covid", "--steps", "0"], "--steps must be at least 1"), ([], "--class is required"),
     (["--class", "covid", "--start-log-snr", "-20"], "start log-SNR must be in [-12, 0]")],
)
def test_generate_cli_errors(tmp_path, pipe, capsys, extra, message):
    save_pipeline(pipe, tmp_path / "p")
    try:
        code = main(["generate", "--checkpoint", str(tmp_path / "p"), "--out", str(tmp_path / "g"), *extra])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err


def test_generate_two_processes_under_torchrun(tmp_path, pipe):
    import os
    import subprocess
    import sys

    save_pipeline(pipe, tmp_path / "p")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "medsynth",
                           "generate", "--checkpoint", str(tmp_path / "p"), "--n-per-class", "3", "--steps", "2",
                           "--out", str(tmp_path / "ds"), "--json"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and json.loads(lines[0])["n"] == 6
    rows = list(csv.DictReader(open(tmp_path / "ds" / "labels.csv")))
    assert [int(r["seed"]) for r in rows] == list(range(6))  # both shards, merged in seed order
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["covid", "generation.json", "labels.csv", "non_covid"]


@pytest.fixture(scope="module")
def curation(tmp_path_factory):
    """A covid_ct CNN trained on real-looking images, and a 'synthetic' set of the same kind of images
    with one image filed under the wrong class: (classifier, set)."""
    root = tmp_path_factory.mktemp("curate")
    train_classifier(ClassifierRecipe(
        domain="covid_ct", data=str(make_dataset(root / "train", CT, n_per_class=10, size=24, channels=1, seed=3)),
        out=str(root / "clf"), arch=TINY_ARCH, pretrained=False, epochs=6, batch_size=8, lr=1e-2, image_size=32,
        val_fraction=0.2, patience=0, device="cpu", progress=False,
    ))
    syn = make_dataset(root / "syn", CT, n_per_class=6, size=24, channels=1, seed=4)
    (syn / "covid" / "covid_005.png").rename(syn / "non_covid" / "covid_005.png")  # a sample that missed its class
    rows = [f"{c}/{p.name},{c},{i}" for i, (c, p) in enumerate((c, p) for c in CT for p in sorted((syn / c).iterdir()))]
    (syn / "labels.csv").write_text("file,class,seed\n" + "\n".join(rows) + "\n")
    (syn / "generation.json").write_text(json.dumps({
        "synthetic": True, "diffusion_checkpoint": "diff", "diffusion_domain": "covid_ct", "diffusion_training_steps": 7,
        "resolution": 24, "classes": CT, "n_per_class": 6, "sampler": "dpmpp_sde", "steps": 2, "guidance": 2.0,
        "seed": 0}))
    return root / "clf", syn


def test_generate_records_provenance(synthetic):
    record = json.loads((synthetic / "syn" / "generation.json").read_text())
    assert record["synthetic"] is True and record["diffusion_domain"] == "covid_ct"
    assert record["diffusion_checkpoint"] == str(synthetic / "diff")
    assert (record["n_per_class"], record["sampler"], record["steps"], record["guidance"], record["seed"]) == \
        (4, "dpmpp", 2, 2.0, 5)
    assert record["resolution"] == 16 and record["classes"] == CT


def test_merge_joins_generated_sets_and_the_card_lists_each_draw(synthetic, tmp_path, capsys):
    syn = synthetic / "syn"  # 4 per class, guidance 2, seeds from 5
    assert main(["generate", "--checkpoint", str(synthetic / "diff"), "--n-per-class", "3", "--steps", "2",
                 "--guidance", "1.5", "--seed", "5", "--out", str(tmp_path / "g15"), "--json"]) == 0
    capsys.readouterr()
    assert main(["merge", str(syn), str(tmp_path / "g15"), "--out", str(tmp_path / "u"), "--note", "Why: both.",
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record == json.loads((tmp_path / "u" / "generation.json").read_text())
    assert record["synthetic"] is True and record["classes"] == CT and record["resolution"] == 16
    assert record["class_counts"] == {"covid": 7, "non_covid": 7} and record["n_per_class"] == 7
    assert [(p["file_prefix"], p["guidance"], p["n_per_class"], p["folder"]) for p in record["parts"]] == \
        [("a_", 2.0, 4, str(syn)), ("b_", 1.5, 3, str(tmp_path / "g15"))]
    assert record["note"] == "Why: both."
    names = sorted(p.name for p in (tmp_path / "u" / "covid").iterdir())
    assert names[:2] == ["a_covid_000005.png", "a_covid_000006.png"] and len(names) == 7
    assert (tmp_path / "u" / "covid" / "a_covid_000005.png").read_bytes() == (syn / "covid" / "covid_000005.png").read_bytes()
    rows = list(csv.DictReader(open(tmp_path / "u" / "labels.csv")))
    assert len(rows) == 14 and rows[0] == {"file": "covid/a_covid_000005.png", "class": "covid", "seed": "5", "part": "a_"}

    # A merged set joins again: its draws keep their own prefixes inside the new one.
    assert main(["generate", "--checkpoint", str(synthetic / "diff"), "--n-per-class", "2", "--steps", "2",
                 "--guidance", "2", "--seed", "100", "--out", str(tmp_path / "late"), "--json"]) == 0
    assert main(["merge", str(tmp_path / "u"), str(tmp_path / "late"), "--out", str(tmp_path / "u3")]) == 0
    assert "joined 3 draws" in capsys.readouterr().out
    record = json.loads((tmp_path / "u3" / "generation.json").read_text())
    assert [p["file_prefix"] for p in record["parts"]] == ["a_a_", "a_b_", "b_"]
    assert [p["class_counts"]["covid"] for p in record["parts"]] == [4, 3, 2]
    assert (tmp_path / "u3" / "non_covid" / "a_b_non_covid_000008.png").is_file()

    out = tmp_path / "clf"  # the card names every draw
    train_classifier(ClassifierRecipe(
        domain="covid_ct", data=str(tmp_path / "u3"), val_data=str(synthetic / "real"), out=str(out),
        arch=TINY_ARCH, pretrained=False, epochs=1, batch_size=4, image_size=32, device="cpu", progress=False,
    ))
    card = (out / "README.md").read_text()
    assert "the union of (1) 4 per class" in card and "(3) 2 per class" in card and "guidance scale 1.5" in card


def test_merge_refuses_what_would_spoil_the_set(synthetic, tmp_path, capsys):
    syn = str(synthetic / "syn")

    def error(*argv):
        assert main(["merge", *argv]) == 2
        return capsys.readouterr().err

    assert "at least two" in error(syn, "--out", str(tmp_path / "o"))
    assert "given twice" in error(syn, syn, "--out", str(tmp_path / "o"))
    assert "has no generation.json" in error(syn, str(synthetic / "real"), "--out", str(tmp_path / "o"))
    assert main(["generate", "--checkpoint", str(synthetic / "diff"), "--n-per-class", "2", "--steps", "2",
                 "--guidance", "2", "--seed", "6", "--out", str(tmp_path / "again"), "--json"]) == 0
    capsys.readouterr()
    assert "overlapping seeds, so they hold the same images" in error(syn, str(tmp_path / "again"), "--out",
                                                                       str(tmp_path / "o"))
    other = tmp_path / "other"
    make_dataset(other, CT, n_per_class=2, size=24, channels=1)
    (other / "generation.json").write_text(json.dumps({**json.loads((synthetic / "syn" / "generation.json").read_text()),
                                                       "resolution": 32, "seed": 1000}))
    assert "differ in resolution (16 against 32)" in error(syn, str(other), "--out", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]

    (other / "generation.json").write_text(json.dumps({**json.loads((synthetic / "syn" / "generation.json").read_text()),
                                                       "seed": 1000}))
    assert main(["merge", syn, str(other), "--out", str(tmp_path / "o")]) == 0
    assert "exists; choose a new folder or pass --overwrite" in error(syn, str(other), "--out", str(tmp_path / "o"))
    (tmp_path / "o" / "stale.txt").write_text("x")
    assert main(["merge", syn, str(other), "--out", str(tmp_path / "o"), "--overwrite"]) == 0
    assert not (tmp_path / "o" / "stale.txt").exists() and len(list((tmp_path / "o" / "covid").iterdir())) == 6
    assert "is one of the sets to join" in error(syn, str(tmp_path / "o"), "--out", str(tmp_path / "o"), "--overwrite")
    assert "lies inside the set" in error(syn, str(tmp_path / "o"), "--out", str(tmp_path / "o" / "covid"), "--overwrite")
    assert len(list((tmp_path / "o" / "covid").iterdir())) == 6
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_curate_keeps_what_a_real_trained_cnn_assigns_to_the_generated_class(curation, tmp_path, capsys):
    from medsynth.classify import load_classifier
    from medsynth.io import load_image

    clf_dir, syn = curation
    clf = load_classifier(clf_dir)
    samples = scan_dataset(syn, CT)
    probs = clf.predict_proba([load_image(s.path, 1) for s in samples])
    first = {f"{CT[s.label]}/{s.path.name}": float(p[s.label]) for s, p in zip(samples, probs) if p.argmax() == s.label}
    assert "non_covid/covid_005.png" not in first  # the misfiled image is what curation is for
    assert main(["curate", str(syn), "--classifier", str(clf_dir), "--out", str(tmp_path / "c"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record == json.loads((tmp_path / "c" / "generation.json").read_text())
    kept = {f"{c}/{p.name}" for c in CT for p in (tmp_path / "c" / c).iterdir()}
    assert kept == set(first)
    assert (tmp_path / "c" / next(iter(kept))).read_bytes() == (syn / next(iter(kept))).read_bytes()
    cur = record["curation"]
    assert cur["offered"] == {"covid": 5, "non_covid": 7} and cur["min_prob"] == 0.0
    assert cur["kept"] == {c: sum(k.startswith(c + "/") for k in kept) for c in CT} == record["class_counts"]
    assert cur["classifier"] == str(clf_dir) and cur["classifier_data"] == str(curation[0].parent / "train")
    assert cur["classifier_trained_on_synthetic"] is False and cur["source"] == str(syn)
    assert record["guidance"] == 2.0 and record["seed"] == 0  # how the set was drawn stays on record
    assert record["n_per_class"] == 6  # as drawn; what was kept is in class_counts and curation
    rows = list(csv.DictReader(open(tmp_path / "c" / "labels.csv")))
    assert {r["file"] for r in rows} == kept
    assert all(abs(float(r["prob"]) - first[r["file"]]) < 1e-3 for r in rows) and all(r["seed"] for r in rows)

    # --min-prob keeps fewer: only images whose class gets at least that probability.
    cut = min(max(p for k, p in first.items() if k.startswith(c + "/")) for c in CT)  # every class keeps one
    assert main(["curate", str(syn), "--classifier", str(clf_dir), "--out", str(tmp_path / "c2"), "--min-prob",
                 str(cut)]) == 0
    assert "kept" in capsys.readouterr().out
    kept2 = {f"{c}/{p.name}" for c in CT for p in (tmp_path / "c2" / c).iterdir()}
    assert kept2 == {k for k, p in first.items() if p >= cut} and len(kept2) < len(kept)

    # The CNN trained on it says on its card that it was curated, by what, and what was kept.
    out = tmp_path / "syn_clf"
    train_classifier(ClassifierRecipe(
        domain="covid_ct", data=str(tmp_path / "c"), val_data=str(syn), out=str(out), arch=TINY_ARCH,
        pretrained=False, epochs=1, batch_size=4, image_size=32, device="cpu", progress=False,
    ))
    card = (out / "README.md").read_text()
    assert "**Synthetic images only**" in card and "**Curated**: kept the images that" in card
    assert f"covid {cur['kept']['covid']} of 5" in card and "knowledge of real images" in card
    # Curating a curated set keeps every earlier record, newest first; merging keeps each part's curation.
    assert main(["curate", str(tmp_path / "c"), "--classifier", str(clf_dir), "--out", str(tmp_path / "cc")]) == 0
    assert main(["curate", str(tmp_path / "cc"), "--classifier", str(clf_dir), "--out", str(tmp_path / "ccc")]) == 0
    third = json.loads((tmp_path / "ccc" / "generation.json").read_text())["curation"]
    assert third["source"] == str(tmp_path / "cc") and third["earlier"]["source"] == str(tmp_path / "c")
    assert third["earlier"]["earlier"] == cur and third["offered"] == third["kept"] == cur["kept"]
    from medsynth.cards.render import _synthetic_note
    note = _synthetic_note(json.loads((tmp_path / "ccc" / "generation.json").read_text()))
    assert note.count("kept the images that") == 3 and note.count("before that, an earlier pass") == 2
    other = tmp_path / "other"
    make_dataset(other, CT, n_per_class=2, size=24, channels=1)
    (other / "generation.json").write_text(json.dumps({**json.loads((syn / "generation.json").read_text()),
                                                       "seed": 1000}))
    assert main(["merge", str(tmp_path / "c"), str(other), "--out", str(tmp_path / "m"), "--json"]) == 0
    parts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["parts"]
    assert parts[0]["curation"] == cur and "curation" not in parts[1]
    # Curating the merged set counts what each of its draws kept.
    assert main(["curate", str(tmp_path / "m"), "--classifier", str(clf_dir), "--out", str(tmp_path / "mc"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    names = [p.name for c in CT for p in (tmp_path / "mc" / c).iterdir()]
    assert [sum(p["class_counts"].values()) for p in record["parts"]] == \
        [sum(n.startswith("a_") for n in names), sum(n.startswith("b_") for n in names)]
    part_cur = [p["curation"] for p in record["parts"]]
    assert [sum(c["kept"].values()) for c in part_cur] == [sum(p["class_counts"].values()) for p in record["parts"]]
    assert part_cur[1]["offered"] == {"covid": 2, "non_covid": 2} and "earlier" not in part_cur[1]
    assert part_cur[0]["offered"] == cur["kept"] and part_cur[0]["earlier"] == cur  # draw (a) was curated before
    assert part_cur[0]["source"] == record["curation"]["source"] == str(tmp_path / "m")
    note = _synthetic_note(record)  # the whole set's pass once in full, each part by its own counts
    assert note.count("kept the images that") == 2 and note.count(", curation kept covid") == 2

    # Merged again, each draw still says what its filters kept of it, not what they kept of the whole set.
    other2 = tmp_path / "other2"
    make_dataset(other2, CT, n_per_class=1, size=24, channels=1)
    (other2 / "generation.json").write_text(json.dumps({**json.loads((syn / "generation.json").read_text()),
                                                        "seed": 2000}))
    assert main(["merge", str(tmp_path / "mc"), str(other2), "--out", str(tmp_path / "mm"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p.get("curation") for p in again["parts"][:2]] == part_cur and "curation" not in again["parts"][2]
    assert "curation" not in again and "class_counts_before_curation" not in again["parts"][0]
    note = _synthetic_note(again)
    assert "**Curated**" not in note and note.count("kept the images that") == 3
    offered_b = part_cur[1]["offered"]
    assert "(" + ", ".join(f"{c} {n} of {offered_b[c]}" for c, n in part_cur[1]["kept"].items()) + ")" in note


def test_curate_refuses_what_would_mislead(curation, synthetic, tmp_path, capsys):
    clf_dir, syn = curation

    def error(*argv):
        assert main(["curate", *argv]) == 2
        return capsys.readouterr().err

    out = ["--out", str(tmp_path / "o")]
    assert "has no generation.json" in error(str(synthetic / "real"), "--classifier", str(clf_dir), *out)
    assert "--min-prob must be in [0, 1)" in error(str(syn), "--classifier", str(clf_dir), "--min-prob", "1", *out)
    assert "is the set being curated" in error(str(syn), "--classifier", str(clf_dir), "--out", str(syn))
    # An --out inside the set (or holding it) would add a non-class folder to it, or delete it with --overwrite.
    before = sorted(p.name for p in syn.iterdir())
    for nested in (syn / "curated", syn / "covid", syn.parent):
        assert "lies inside the set being curated" in error(str(syn), "--classifier", str(clf_dir), "--out",
                                                            str(nested), "--overwrite")
    assert sorted(p.name for p in syn.iterdir()) == before and "covid" in before
    # A checkpoint without train_summary.json: what it learned from is unknown, so it is refused.
    bare = tmp_path / "bare_clf"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((clf_dir / name).read_bytes())
    assert "what it was trained on is unknown" in error(str(syn), "--classifier", str(bare), *out)
    assert "lower --min-prob" in error(str(syn), "--classifier", str(clf_dir), "--min-prob", "0.999999", *out)
    # A CNN trained on synthetic images would keep nearly everything: refused.
    syn_clf = tmp_path / "syn_clf"
    train_classifier(ClassifierRecipe(
        domain="covid_ct", data=str(syn), val_data=str(syn), out=str(syn_clf), arch=TINY_ARCH, pretrained=False,
        epochs=1, batch_size=4, image_size=32, device="cpu", progress=False,
    ))
    assert "was trained on synthetic images" in error(str(syn), "--classifier", str(syn_clf), *out)
    # Another domain's classifier: refused, naming both.
    blood = tmp_path / "blood_clf"
    train_classifier(ClassifierRecipe(
        domain="all_blood", data=str(make_dataset(tmp_path / "b", get_domain("all_blood").classes, n_per_class=3,
                                                  size=24, channels=3)),
        out=str(blood), arch=TINY_ARCH, pretrained=False, epochs=1, batch_size=4, image_size=32, val_fraction=0.25,
        device="cpu", progress=False,
    ))
    assert "is for all_blood" in error(str(syn), "--classifier", str(blood), *out)
    assert not (tmp_path / "o").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]
    assert main(["curate", str(syn), "--classifier", str(clf_dir), *out]) == 0
    assert "exists; choose a new folder or pass --overwrite" in error(str(syn), "--classifier", str(clf_dir), *out)
    assert main(["curate", str(syn), "--classifier", str(clf_dir), *out, "--overwrite"]) == 0


def test_provenance_counts_steps_over_the_init_from_chain():
    from medsynth.synthetic.provenance import total_training_steps

    assert total_training_steps({"steps": 2000}) == 2000
    chained = {"steps": 3000, "base": {"path": "b", "steps": 2000, "base": {"path": "a", "steps": 4000}}}
    assert total_training_steps(chained) == 9000
    # a base whose own summary was unreadable records only its path: its steps count as unknown (0)
    assert total_training_steps({"steps": 500, "base": {"path": "gone"}}) == 500
    assert total_training_steps({}) is None


def test_generated_pngs_say_they_are_synthetic_and_inspect_and_classify_read_it(tmp_path, pipe, trained_tiny,
                                                                               capsys):
    """IPTC trainedAlgorithmicMedia in XMP and medsynth's own text chunks, read back by inspect and classify."""
    from PIL import Image

    from medsynth.diffusion import save_pipeline
    from medsynth.synthetic.marking import DIGITAL_SOURCE_TYPE, read_marking

    save_pipeline(pipe, tmp_path / "p")
    assert main(["generate", "--checkpoint", str(tmp_path / "p"), "--class", "covid", "--n", "1", "--steps", "2",
                 "--seed", "4", "--guidance", "2", "--out", str(tmp_path / "g")]) == 0
    png = tmp_path / "g" / "covid_000004.png"
    with Image.open(png) as img:
        assert DIGITAL_SOURCE_TYPE in img.text["XML:com.adobe.xmp"]
        assert img.text["medsynth:synthetic"] == "true" and img.text["medsynth:seed"] == "4"
    marking = read_marking(png)
    assert marking["by"] == "medsynth" and marking["class"] == "covid" and marking["guidance"] == "2.0"
    assert marking["generator"] == str(tmp_path / "p") and marking["domain"] == "covid_ct"
    capsys.readouterr()
    real = tmp_path / "real.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(real)
    assert main(["inspect", str(png), str(real), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["synthetic"] for x in lines] == [True, False] and lines[0]["marking"]["seed"] == "4"
    assert main(["inspect", str(png)]) == 0
    assert "synthetic covid_ct image; class covid" in capsys.readouterr().out
    checkpoint, _ = trained_tiny
    assert main(["classify", "--checkpoint", str(checkpoint), str(png), str(real), "--json"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    assert results[0]["synthetic"]["seed"] == "4" and results[1]["synthetic"] is None


def test_the_app_summary_and_zip_carry_the_mark(tmp_path):
    import zipfile

    from medsynth import service
    from medsynth.synthetic.marking import read_marking

    item = service.Generated(np.zeros((16, 16, 1), np.uint8), "covid", 3,
                             {"generator": "covid_ct/diffusion", "domain": "covid_ct", "class": "covid", "seed": 3})
    png = item.save_png(tmp_path / "g.png")
    line = service.summary_line("real-trained", {"covid": 0.7, "non_covid": 0.3}, {"in_domain": True}, str(png))
    assert "**Synthetic image:** synthetic covid_ct image; class covid" in line
    assert "Synthetic" not in service.summary_line("real-trained", {"covid": 1.0}, {"in_domain": True}, None)
    service.write_zip([item], tmp_path / "z.zip", "covid_ct")
    with zipfile.ZipFile(tmp_path / "z.zip") as zf:
        zf.extract("covid/covid_000003.png", tmp_path / "unzipped")
    assert read_marking(tmp_path / "unzipped" / "covid" / "covid_000003.png")["seed"] == "3"


def _test_signer(tmp_path):
    """A certificate chain made here (a test root and an ES256 signing certificate), as C2PA requires."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medsynth test")])

    def usage(**on):
        flags = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                     data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                     encipher_only=False, decipher_only=False)
        return x509.KeyUsage(**{**flags, **on})

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    valid = dict(not_valid_before=now - datetime.timedelta(days=1), not_valid_after=now + datetime.timedelta(days=30))
    ca = (x509.CertificateBuilder(**valid).subject_name(name("test root")).issuer_name(name("test root"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder(**valid).subject_name(name("medsynth signer")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "chain.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM)
                                         + ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "chain.pem", tmp_path / "key.pem"


def test_a_configured_certificate_adds_a_signed_c2pa_manifest(tmp_path, monkeypatch, capsys):
    from medsynth.cli import main
    from medsynth.errors import MedsynthError
    from medsynth.synthetic.marking import read_marking, save_marked_png

    image = np.random.default_rng(0).integers(0, 255, (32, 32, 1), dtype=np.uint8)
    save_marked_png(image, tmp_path / "plain.png", domain="covid_ct", seed=1)
    assert "c2pa" not in read_marking(tmp_path / "plain.png")  # no certificate: no manifest, same bytes as before
    cert, key = _test_signer(tmp_path)
    monkeypatch.setenv("MEDSYNTH_C2PA_CERT", str(cert))
    monkeypatch.setenv("MEDSYNTH_C2PA_KEY", str(key))
    save_marked_png(image, tmp_path / "signed.png", domain="covid_ct", seed=1, **{"class": "covid"})
    marking = read_marking(tmp_path / "signed.png")
    assert marking["by"] == "medsynth" and marking["seed"] == "1"  # the text chunks survive the signing
    assert marking["c2pa"]["digital_source_type"].endswith("trainedAlgorithmicMedia")
    assert marking["c2pa"]["claim_generator"].startswith("medsynth") and marking["c2pa"]["signed_by"] == "medsynth test"
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "signed.png"))[..., None], image)  # pixels untouched
    assert main(["inspect", str(tmp_path / "signed.png")]) == 0
    assert "signed C2PA manifest by medsynth test" in capsys.readouterr().out
    monkeypatch.delenv("MEDSYNTH_C2PA_KEY")
    with pytest.raises(MedsynthError, match="needs both MEDSYNTH_C2PA_CERT"):
        save_marked_png(image, tmp_path / "half.png", domain="covid_ct")
    assert not (tmp_path / "half.png").exists()
