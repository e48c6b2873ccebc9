"""Model cards (medsynth.cards): what a card says of its training data and recipe, rebuilding a card from
run records (keeping measured sections), and evaluation records."""

from __future__ import annotations

import json

import numpy as np

from medsynth.cli import main
from medsynth.domains import get_domain
from medsynth.recipes import ClassifierRecipe
from medsynth.training.classifier import train_classifier

from conftest import CT, TINY_ARCH, make_dataset


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
