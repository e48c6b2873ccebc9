"""Synthetic-data provenance, the quality command (FD-Lite0, class recognisability) and card rebuilding."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch

from medsynth.cli import main
from medsynth.diffusion import ClassConditionalPipeline, create_unet, make_noise_scheduler, save_pipeline
from medsynth.domains import get_domain
from medsynth.recipes import ClassifierRecipe
from medsynth.training.classifier import train_classifier

from conftest import TINY_ARCH, make_dataset

CT = ["covid", "non_covid"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A saved tiny covid_ct pipeline, a labelled synthetic set from it, and real-looking folders."""
    root = tmp_path_factory.mktemp("quality")
    torch.manual_seed(0)
    unet = create_unet("tiny", num_classes=2, channels=1, resolution=16)
    save_pipeline(ClassConditionalPipeline(unet=unet, scheduler=make_noise_scheduler(), domain="covid_ct",
                                           classes=CT), root / "diff")
    assert main(["generate", "--checkpoint", str(root / "diff"), "--n-per-class", "4", "--steps", "2",
                 "--guidance", "2", "--seed", "5", "--out", str(root / "syn"), "--json"]) == 0
    make_dataset(root / "real", CT, n_per_class=5, size=24, channels=1, seed=1)
    make_dataset(root / "train", CT, n_per_class=6, size=24, channels=1, seed=2)
    train_classifier(ClassifierRecipe(  # a CNN trained on the real-looking images, for the quality command
        domain="covid_ct", data=str(root / "train"), val_data=str(root / "real"), out=str(root / "clf_real"),
        arch=TINY_ARCH, pretrained=False, epochs=1, batch_size=4, image_size=32, device="cpu", progress=False,
    ))
    return root


def test_generate_records_provenance(synthetic):
    record = json.loads((synthetic / "syn" / "generation.json").read_text())
    assert record["synthetic"] is True and record["diffusion_domain"] == "covid_ct"
    assert record["diffusion_checkpoint"] == str(synthetic / "diff")
    assert (record["n_per_class"], record["sampler"], record["steps"], record["guidance"], record["seed"]) == \
        (4, "dpmpp", 2, 2.0, 5)
    assert record["resolution"] == 16 and record["classes"] == CT


def test_synthetic_trained_classifier_card_says_so(synthetic, capsys):
    out = synthetic / "clf_syn"
    summary = train_classifier(ClassifierRecipe(
        domain="covid_ct", data=str(synthetic / "syn"), val_data=str(synthetic / "real"), out=str(out),
        arch=TINY_ARCH, pretrained=False, epochs=1, batch_size=4, image_size=32, device="cpu", progress=False,
    ))
    assert summary["synthetic_training_data"]["diffusion_checkpoint"] == str(synthetic / "diff")
    card = (out / "README.md").read_text()
    assert "**Synthetic images only**" in card and "guidance scale 2.0" in card
    for caveat in get_domain("covid_ct").caveats:  # the dataset's known caveats reach every card
        assert caveat in card

    real = json.loads((synthetic / "clf_real" / "train_summary.json").read_text())
    assert real["synthetic_training_data"] is None
    assert "Synthetic images only" not in (synthetic / "clf_real" / "README.md").read_text()


def test_card_describes_a_set_merged_from_several_generate_runs():
    from medsynth.cards.render import _synthetic_note

    one = {"n_per_class": 500, "sampler": "dpmpp_sde", "steps": 20, "guidance": 2.0, "seed": 0}
    two = {**one, "guidance": 1.5}
    note = _synthetic_note({"synthetic": True, "diffusion_checkpoint": "ckpt", "diffusion_training_steps": 4000,
                            "resolution": 64, "n_per_class": 1000, "parts": [one, two]})
    assert "`ckpt` (4000 training steps) at 64 px: the union of (1) 500 per class" in note
    assert "guidance scale 2.0" in note and "(2) 500 per class, sampler `dpmpp_sde` with 20 steps, guidance scale 1.5" in note
    assert "the union" not in _synthetic_note({"diffusion_checkpoint": "ckpt", **one})
    later = {**one, "diffusion_checkpoint": "later", "diffusion_training_steps": 4500}
    note = _synthetic_note({"diffusion_checkpoint": "ckpt", "diffusion_training_steps": 3478, "parts": [one, later]})
    assert "seeds from 0, from `later` at 4500 training steps" in note and note.count("from `") == 1
    same_run = {**later, "diffusion_checkpoint": "ckpt"}  # the same folder, trained on further
    note = _synthetic_note({"diffusion_checkpoint": "ckpt", "diffusion_training_steps": 3478,
                            "parts": [{**one, "diffusion_checkpoint": "ckpt", "diffusion_training_steps": 3478}, same_run]})
    assert "(1) 500 per class, sampler `dpmpp_sde` with 20 steps, guidance scale 2.0, seeds from 0;" in note
    assert "from `ckpt` at 4500 training steps" in note
    assert _synthetic_note({**one, "note": "Drawn before the fix."}).endswith("(validation). Drawn before the fix.")
    assert "log-SNR" not in _synthetic_note({**one, "start_log_snr": -1.5})  # the default goes unsaid
    assert "seeds from 0, starting at log-SNR -3.0" in _synthetic_note({**one, "start_log_snr": -3.0})


def test_quality_cli_measures_and_writes_the_card(synthetic, capsys):
    card_dir = synthetic / "diff"
    (card_dir / "README.md").write_text("---\nlicense: other\n---\n# card\n\n## Training\n\nx\n\n## Limitations\n\n- y\n")
    args = ["quality", "--synthetic", str(synthetic / "syn"), "--real", str(synthetic / "real"),
            "--reference", str(synthetic / "train"), "--classifier", str(synthetic / "clf_real"),
            "--card", str(card_dir), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["domain"] == "covid_ct" and result["resolution"] == 16  # from generation.json
    assert result["n_synthetic"] == {"covid": 4, "non_covid": 4} and result["n_real"] == {"covid": 5, "non_covid": 5}
    assert result["fd"] > 0 and set(result["fd_per_class"]) == set(CT)
    assert result["n_reference"] == 8 and result["fd_real_reference"] >= 0
    assert 0.0 <= result["classifier_accuracy_on_synthetic"] <= 1.0
    assert json.loads((card_dir / "quality.json").read_text())["fd"] == pytest.approx(result["fd"])
    card = (card_dir / "README.md").read_text()
    assert card.index("## Measured quality") < card.index("## Limitations")
    assert "| all classes | 8 | 10 |" in card

    assert main(args) == 0  # measuring again replaces the section instead of adding a second one
    assert (card_dir / "README.md").read_text().count("## Measured quality") == 1


def test_quality_cli_errors(synthetic, tmp_path, capsys):
    bare = make_dataset(tmp_path / "bare", CT, n_per_class=2, size=16, channels=1)
    assert main(["quality", "--synthetic", str(bare), "--real", str(synthetic / "real")]) == 2
    assert "has no generation.json naming its domain: give --domain" in capsys.readouterr().err
    assert main(["quality", "--synthetic", str(synthetic / "syn"), "--real", str(tmp_path / "nope")]) == 2
    assert "--real " in (err := capsys.readouterr().err) and "no such folder" in err


def test_frechet_distance_with_fewer_images_than_dimensions_is_quiet():
    from medsynth.quality import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 50))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert frechet_distance(a, a + 0.001) == pytest.approx(0.0, abs=1e-2)
        assert frechet_distance(a, rng.normal(size=(10, 50))) > 1.0


def test_card_rebuild_keeps_quality_and_reports_lineage(tmp_path, capsys):
    from medsynth.recipes import DiffusionRecipe
    from medsynth.training.diffusion import train_diffusion

    data = make_dataset(tmp_path / "ct", CT, n_per_class=4, size=24, channels=1)
    common = dict(domain="covid_ct", data=str(data), preset="tiny", resolution=16, batch_size=4, warmup_steps=1,
                  log_every=1, sample_every=100, checkpoint_every=100, device="cpu", progress=False)
    train_diffusion(DiffusionRecipe(out=str(tmp_path / "a"), max_steps=2, **common))
    summary = train_diffusion(DiffusionRecipe(out=str(tmp_path / "b"), max_steps=3, init_from=str(tmp_path / "a"),
                                              **{**common, "resolution": None}))
    assert summary["base"]["steps"] == 2
    card = (tmp_path / "b" / "README.md").read_text()
    assert "continue (`--init-from`" in card and "in all 5 steps" in card
    assert "metrics:\n- frechet_distance" in card

    # A quality section survives a rebuild; the rebuilt card is the same otherwise.
    marked = card.replace("## Limitations", "## Measured quality\n\n| x |\n\n## Limitations")
    (tmp_path / "b" / "README.md").write_text(marked)
    assert main(["card", str(tmp_path / "b")]) == 0
    rebuilt = (tmp_path / "b" / "README.md").read_text()
    assert "## Measured quality\n\n| x |" in rebuilt and "in all 5 steps" in rebuilt
    assert rebuilt.count("## Measured quality") == 1

    assert main(["card", str(data)]) == 2
    assert "cannot rebuild its card without args.json" in capsys.readouterr().err

    # --sample-grid redraws the grid with the current sampler: the same image training drew last.
    from PIL import Image

    grid = tmp_path / "b" / "sample_grid.png"
    drawn = np.asarray(Image.open(grid))
    grid.write_bytes(b"stale")
    assert main(["card", "--sample-grid", str(tmp_path / "b")]) == 0
    assert np.array_equal(np.asarray(Image.open(grid)), drawn)
    assert "## Measured quality" in (tmp_path / "b" / "README.md").read_text()
    assert main(["card", "--sample-grid", str(tmp_path / "a" / "..")]) == 2
    assert "--sample-grid needs a diffusion checkpoint" in capsys.readouterr().err


def test_evaluate_card_records_each_data_folder(trained_tiny, tmp_path, capsys):
    import shutil

    from medsynth.cli import main as cli

    checkpoint, data = trained_tiny
    ckpt = tmp_path / "clf"
    shutil.copytree(checkpoint, ckpt)
    assert cli(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--card", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    card = (ckpt / "README.md").read_text()
    heading = f"## Evaluation: `{data}`"
    assert heading in card and card.index(heading) < card.index("## Limitations")
    assert f"accuracy **{result['accuracy']:.4f}**" in card
    assert json.loads((ckpt / "evaluation.json").read_text())[str(data)]["n"] == result["n"]

    assert cli(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--card"]) == 0  # replaced, not added
    assert cli(["card", str(ckpt)]) == 0  # a rebuilt card keeps it
    assert (ckpt / "README.md").read_text().count(heading) == 1


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


def test_curate_keeps_what_a_real_trained_cnn_assigns_to_the_generated_class(curation, tmp_path, capsys):
    from medsynth.classify import load_classifier
    from medsynth.data import scan_dataset
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
