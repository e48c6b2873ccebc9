"""The quality command (medsynth.quality): FD-Lite0 and class recognisability of a synthetic set, and its card section."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from medsynth.cli import main
from medsynth.recipes import ClassifierRecipe
from medsynth.training.classifier import train_classifier

from conftest import CT, TINY_ARCH, make_dataset


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


