"""The synthetic-data audit: metric properties, the copying verdict, and `medsynth audit` end to end."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from medsynth.cli import main
from medsynth.fidelity import frechet_distance, kid, prdc
from medsynth.memorization import copy_statistics, nearest

from conftest import TINY_ARCH

CT = ["covid", "non_covid"]


def blob_image(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A random scene: three soft blobs at random places (class 1 brighter), plus noise. Every draw differs."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size))
    for _ in range(3):
        cy, cx = rng.uniform(4, size - 4, 2)
        r = rng.uniform(2, 6)
        img += rng.uniform(0.4, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    img = img * (120 + 80 * label) + rng.normal(0, 8, img.shape) + 20
    return np.clip(img, 0, 255).astype(np.uint8)


def write_set(root, n_per_class: int, seed: int, classes=CT):
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(blob_image(label, rng)).save(root / name / f"{name}_{seed}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """train / test / fresh (new draws) / copies (training images, renamed) of the same blob distribution."""
    root = tmp_path_factory.mktemp("audit")
    write_set(root / "train", 60, seed=1)
    write_set(root / "test", 30, seed=2)
    write_set(root / "fresh", 30, seed=3)
    for name in CT:  # a "generator" that copies: 30 training images per class, renamed
        (root / "copies" / name).mkdir(parents=True)
        for i, src in enumerate(sorted((root / "train" / name).iterdir())[:30]):
            shutil.copy(src, root / "copies" / name / f"sample_{i:03d}.png")
    return root


# -- metric properties ------------------------------------------------------------------------------
def test_kid_of_a_set_against_itself_is_about_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    same = kid(a, a, subsets=20, subset_size=100)
    shifted = kid(a, rng.normal(size=(300, 16)) + 1.0, subsets=20, subset_size=100)
    assert same["subset_size"] == 100 and same["subsets"] == 20
    assert abs(same["kid"]) < 0.01 * shifted["kid"] and shifted["kid"] > 5 * shifted["kid_std"]
    other = kid(a, rng.normal(size=(300, 16)), subsets=20, subset_size=100)
    assert abs(other["kid"]) < 3 * other["kid_std"]  # unbiased: another draw of the distribution scores about 0


def test_prdc_of_identical_sets_is_about_one():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    r = prdc(a, a.copy(), k=5)
    assert r["precision"] == 1.0 and r["recall"] == 1.0 and r["coverage"] == 1.0
    assert r["density"] == pytest.approx(6 / 5)  # each ball holds its centre and its k = 5 neighbours
    fresh = prdc(a, rng.normal(size=(200, 8)), k=5)  # another draw of the same distribution
    assert fresh["density"] == pytest.approx(1.0, abs=0.15) and fresh["precision"] > 0.8 and fresh["coverage"] > 0.8
    far = prdc(a, a + 10.0, k=5)  # a set far from the real one: no fidelity, no coverage
    assert far["precision"] == 0.0 and far["coverage"] == 0.0
    with pytest.raises(ValueError, match="more than 5"):
        prdc(a[:5], a, k=5)


def test_frechet_distance_is_one_implementation():
    from medsynth import quality

    assert quality.frechet_distance is frechet_distance


def test_nearest_finds_exact_copies_at_distance_zero():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 64))
    index, dist = nearest(ref[[7, 3]] * 2.0 + 1.0, ref, metric="ncc")  # brightness/contrast do not hide a copy
    assert index.tolist() == [7, 3] and np.allclose(dist, 0, atol=1e-9)
    index, dist = nearest(ref[[4]], ref, metric="cosine")
    assert index.tolist() == [4] and dist[0] == pytest.approx(0, abs=1e-9)


def test_copy_statistics_flags_copies_and_not_fresh_draws():
    rng = np.random.default_rng(0)
    heldout = rng.uniform(0.2, 1.0, 300)
    fresh = copy_statistics(rng.uniform(0.2, 1.0, 400), heldout)
    assert not fresh["suspicious"] and fresh["below"]["5"]["ci"][0] <= 0.05 <= fresh["below"]["5"]["ci"][1] + 0.02
    copies = copy_statistics(np.concatenate([np.zeros(100), rng.uniform(0.2, 1.0, 300)]), heldout)
    assert copies["suspicious"] and copies["below"]["1"]["share"] >= 0.25 and copies["z"] < -3
    assert any("closer to a training image" in r for r in copies["reasons"])
    small = copy_statistics(np.zeros(5), heldout[:10])
    assert not small["suspicious"] and any("too few" in w for w in small["warnings"])


# -- the command, end to end ------------------------------------------------------------------------
def _tiny_weights(tmp_path):
    """A random-weight tiny timm model in safetensors: a user-supplied extractor (file:WEIGHTS@ARCH)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(TINY_ARCH, pretrained=False, num_classes=0)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return f"file:{path}@{TINY_ARCH}"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _tiny_weights(tmp_path_factory.mktemp("weights"))


def _audit(folders, synthetic, out, weights, *extra):
    return main(["audit", "--synthetic", str(folders / synthetic), "--train", str(folders / "train"),
                 "--test", str(folders / "test"), "--out", str(out), "--domain", "covid_ct", "--resolution", "32",
                 "--features", weights, "--json", *extra])


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def classifier(folders):
    """A tiny CNN trained on the real training blobs: the classifier:CKPT extractor."""
    from medsynth.recipes import ClassifierRecipe
    from medsynth.training.classifier import train_classifier

    out = folders / "clf"
    train_classifier(ClassifierRecipe(domain="covid_ct", data=str(folders / "train"), val_data=str(folders / "test"),
                                      out=str(out), arch=TINY_ARCH, pretrained=False, epochs=1, batch_size=16,
                                      image_size=32, device="cpu", progress=False))
    return out


@pytest.fixture(scope="module")
def copies_run(folders, weights, tmp_path_factory):
    """`audit --card` of the set of copies: (out, result, card folder)."""
    root = tmp_path_factory.mktemp("copies_run")
    card = root / "ckpt"
    card.mkdir()
    (card / "README.md").write_text("# model\n\n## Limitations\n\n- none\n")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert _audit(folders, "copies", root / "out", weights, "--card", str(card)) == 0
    return root / "out", json.loads(buf.getvalue().strip().splitlines()[-1]), card


@pytest.fixture(scope="module")
def fresh_run(folders, weights, classifier, tmp_path_factory):
    """`audit` of fresh draws in two learned feature spaces (a user file and a classifier): (out, result)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("fresh_run") / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert _audit(folders, "fresh", out, weights, "--features", "classifier:" + str(classifier)) == 0
    return out, json.loads(buf.getvalue().strip().splitlines()[-1])


def test_audit_flags_a_set_of_copies(copies_run):
    out, result, _ = copies_run
    for group in ("all", "covid", "non_covid"):
        assert result["memorization"][group]["verdict"].startswith("suspicious"), group
        pixel = result["memorization"][group]["spaces"]["pixel"]
        assert pixel["below"]["1"]["share"] == 1.0 and pixel["median_synthetic"] == pytest.approx(0, abs=1e-9)
    report = (out / "report.md").read_text()
    assert "**covid**: suspicious" in report
    with (out / "nearest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 60 and float(rows[0]["pixel_distance"]) == pytest.approx(0, abs=1e-6)
    assert rows[0]["pixel_nearest_train"].endswith("covid_1_000.png")  # names the copied training image


def test_audit_card_section(copies_run):
    _, _, card = copies_run
    text = (card / "README.md").read_text()
    assert text.index("## Synthetic-data audit") < text.index("## Limitations") and "suspicious" in text
    assert json.loads((card / "audit.json").read_text())["domain"] == "covid_ct"


def test_lite0_extractor_names_itself():
    from medsynth.features import create_extractor

    extractor = create_extractor("lite0")
    assert extractor.key == "lite0" and "EfficientNet-Lite0" in extractor.name and "224 px" in extractor.name
    assert extractor([np.zeros((32, 32, 1), np.uint8)]).shape == (1, 1280)


def test_audit_of_fresh_draws_finds_no_copying_and_writes_every_output(fresh_run):
    out, result = fresh_run
    assert [result["memorization"][g]["verdict"] for g in ("all", "covid", "non_covid")] == \
        ["consistent with no copying"] * 3
    assert sorted(k.split("_")[0] for k in result["spaces"]) == ["classifier", "file", "pixel"]
    table = result["fidelity"][next(k for k in result["spaces"] if k.startswith("file_"))]
    for group in ("all", "covid"):
        for side in ("synthetic", "real_reference"):
            row = table[group][side]
            assert {"fd", "kid", "kid_std", "precision", "recall", "density", "coverage", "precision_ci"} <= set(row)
    # Fresh draws of the same distribution score like the real reference, not like a different set.
    assert table["all"]["synthetic"]["kid"] < 3 * table["all"]["synthetic"]["kid_std"] + 0.01
    assert result["n"]["synthetic"] == {"covid": 30, "non_covid": 30} and result["resolution"] == 32
    names = " ".join(space["name"] for space in result["spaces"].values())
    assert TINY_ARCH in names and "penultimate layer of the classifier" in names and "pixels at 32 px" in names
    for name in result["figures"].values():
        assert (out / name).is_file() and (out / name).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    for text in ("## Set-up", "## Verdict", "## Fidelity and coverage", "## Memorization", "32 px", "C_T z"):
        assert text in report
    cached = sorted(p.name for p in out.glob("features_*.npz"))
    assert len(cached) == 2 and all(name.startswith(("features_file_", "features_classifier_")) for name in cached)


def test_audit_rerun_uses_the_feature_cache(folders, weights, classifier, fresh_run, capsys, monkeypatch):
    out, first = fresh_run
    import medsynth.features as features

    def refuse(self, *args, **kwargs):
        raise AssertionError("features were computed again")

    monkeypatch.setattr(features._ImageNetExtractor, "__call__", refuse)
    monkeypatch.setattr(features.ClassifierFeatures, "__call__", refuse)
    assert _audit(folders, "fresh", out, weights, "--features", "classifier:" + str(classifier)) == 0
    second = _last_json(capsys)
    for key in first["fidelity"]:
        assert first["fidelity"][key]["all"]["synthetic"]["fd"] == second["fidelity"][key]["all"]["synthetic"]["fd"]


@pytest.mark.parametrize("args, message", [
    (["--features", "nonsense"], "unknown feature extractor"),
    (["--features", "file:/no/such.safetensors"], "do not exist"),
    (["--features", "classifier:/no/such/ckpt"], "/no/such/ckpt: no such classifier checkpoint folder"),
])
def test_audit_errors_are_clear(folders, tmp_path, capsys, args, message):
    assert main(["audit", "--synthetic", str(folders / "fresh"), "--train", str(folders / "train"),
                 "--test", str(folders / "test"), "--out", str(tmp_path / "e"), "--domain", "covid_ct", *args]) == 2
    assert message in capsys.readouterr().err


def test_audit_refuses_a_domain_mismatch_and_unknown_class_folders(folders, tmp_path, capsys):
    code = main(["audit", "--synthetic", str(folders / "fresh"), "--train", str(folders / "train"),
                 "--test", str(folders / "test"), "--out", str(tmp_path / "f"), "--domain", "brain_mri"])
    assert code == 2 and "is not a known class" in capsys.readouterr().err
    code = main(["audit", "--synthetic", str(folders / "fresh"), "--train", str(folders / "fresh"),
                 "--test", str(folders / "test"), "--out", str(tmp_path / "g"), "--domain", "covid_ct"])
    assert code == 2 and "three different folders" in capsys.readouterr().err


def test_detect_arch_recognises_inception_and_dinov2_names():
    import torch

    from medsynth.errors import MedsynthError
    from medsynth.features import detect_arch

    assert detect_arch({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}) == "inception_v3"
    assert detect_arch({"cls_token": torch.zeros(1), "patch_embed.proj.weight": torch.zeros(384, 3, 14, 14)}) == \
        "vit_small_patch14_dinov2"
    with pytest.raises(MedsynthError, match="@TIMM_ARCH"):
        detect_arch({"conv.weight": torch.zeros(1)})


def test_a_rebuilt_model_card_keeps_its_audit_section():
    from medsynth.audit import CARD_SECTION
    from medsynth.cards.rebuild import _keep_measured_sections

    old = f"# card\n\nrecipe\n\n{CARD_SECTION}\n\nFD 65.4; consistent with no copying\n\n## Licence\n\nx\n"
    rebuilt = _keep_measured_sections(old, "# card\n\nnew recipe\n")
    assert f"{CARD_SECTION}\n\nFD 65.4; consistent with no copying\n" in rebuilt and "new recipe" in rebuilt
