"""`medsynth match`: weighting a synthetic set towards real images by nearest neighbours."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from medsynth.cards.render import _synthetic_note
from medsynth.cli import main
from medsynth.synthetic.match import extra_copies

from conftest import make_dataset

CT = ["covid", "non_covid"]


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
