"""explain-check: faithfulness (deletion/insertion), sanity (weight randomisation), plausibility, the per-image
faithfulness line, and the command end to end, on tiny models and generated images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medsynth.classify import Classifier, ClassifierConfig, load_classifier
from medsynth.cli import main
from medsynth.errors import MedsynthError
from medsynth import explain_check as ec
from medsynth.explain import explain

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many small forward passes: one thread is faster than two that contend with each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CornerNet(torch.nn.Module):
    """Says "covid" exactly as much as the top-left corner is textured: nothing else in the image counts."""

    def forward(self, x):
        texture = x[:, :, : SIZE // 4, : SIZE // 4].std(dim=(1, 2, 3))
        logit = 6.0 * (texture - 0.35)
        return torch.stack([logit, -logit], dim=1)


@pytest.fixture
def corner_clf():
    config = ClassifierConfig(arch="handmade", domain="covid_ct", classes=["covid", "non_covid"], channels=1,
                              input_size=SIZE, mean=[0.5], std=[0.5])
    return Classifier(CornerNet(), config)


def corner_image(seed=0):
    img = np.random.default_rng(seed).integers(20, 80, size=(SIZE, SIZE, 1), dtype=np.uint8)
    corner = img[: SIZE // 4, : SIZE // 4]
    corner[...] = 40
    corner[::2, ::2] = corner[1::2, 1::2] = 220  # a checkerboard: texture that a blur removes
    return img


def test_deletion_falls_faster_for_the_region_the_model_uses(corner_clf):
    img = corner_image()
    good = np.zeros((SIZE, SIZE), np.float32)
    good[: SIZE // 4, : SIZE // 4] = 1.0
    yy, xx = np.mgrid[:SIZE, :SIZE]
    bad = (yy + xx).astype(np.float32)  # relevance rising away from the corner: the corner goes last
    calls = []
    real = corner_clf.predict_proba
    corner_clf.predict_proba = lambda images, **kw: calls.append(len(images)) or real(images, **kw)
    r = ec.deletion_insertion(corner_clf, img, good, target=0, steps=16, n_random=3)
    assert calls == [2 * 17 * 4]  # both curves of the map and of 3 random orderings: one batched call
    assert r["deletion"][0] > 0.95 and len(r["deletion"]) == 17 and r["fractions"][-1] == 1.0
    assert r["deletion_auc"] < r["random"]["deletion_auc"] - 0.2
    assert r["insertion_auc"] > r["random"]["insertion_auc"] + 0.2
    wrong = ec.deletion_insertion(corner_clf, img, bad, target=0)
    assert wrong["deletion_auc"] > r["deletion_auc"] + 0.3
    # the same map and seed give the same curves
    assert ec.deletion_insertion(corner_clf, img, good, target=0) == r


def test_occlusion_finds_the_corner_and_the_line_reads_well(corner_clf):
    img = corner_image()
    exp = ec.explain_map(img, corner_clf, "occlusion")
    rel = ec.relevance_map(exp)
    assert exp.target_class == "covid" and rel.shape == (SIZE, SIZE)
    assert rel[: SIZE // 4, : SIZE // 4].sum() > 0.8 * rel.sum()
    line = ec.faithfulness_line(corner_clf, img, exp, k=3)
    assert set(line) == {"class", "before", "after_top", "after_random", "k", "plausibility", "text"}
    assert line["after_top"] < line["after_random"] <= line["before"] + 1e-6
    assert line["text"].startswith("hiding the 3 most relevant regions lowers covid from")
    assert "of the relevance lies inside the body" in line["text"]


def test_plausibility_of_a_map_inside_the_mask_is_one():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 20, size=(64, 64, 1), dtype=np.uint8)
    yy, xx = np.mgrid[:64, :64]
    head = (yy - 32) ** 2 + (xx - 32) ** 2 < 22 ** 2
    img[head] = 180
    mask = ec.foreground_mask(img, "brain_mri")
    assert (mask == head).mean() > 0.97
    rel = rng.random((64, 64)) * mask
    p = ec.plausibility(rel, mask)
    assert p["inside"] == pytest.approx(1.0) and p["border"] == 0.0
    assert p["chance_inside"] == pytest.approx(mask.mean())
    assert ec.plausibility(np.ones((64, 64)), mask)["inside"] == pytest.approx(mask.mean())
    assert ec.plausibility(np.zeros((64, 64)), mask)["inside"] is None
    # blood smear: purple cells on a pale background
    smear = np.full((64, 64, 3), (235, 225, 230), np.uint8)
    cell = (yy - 20) ** 2 + (xx - 40) ** 2 < 8 ** 2
    smear[cell] = (120, 60, 150)
    assert (ec.foreground_mask(smear, "all_blood") == cell).mean() > 0.97


def test_randomising_the_weights_changes_gradcam():
    """timm's tiny test model at 96 px (a 3 x 3 feature map; ``trained_tiny`` works at 32 px, a 1 x 1 map)."""
    import timm

    from conftest import TINY_ARCH, square_image

    torch.manual_seed(0)
    model = timm.create_model(TINY_ARCH, pretrained=False, num_classes=4, in_chans=3)
    config = ClassifierConfig(arch=TINY_ARCH, domain="all_blood", classes=["benign", "early", "pre", "pro"],
                              channels=3, input_size=96, mean=[0.5] * 3, std=[0.5] * 3)
    clf = Classifier(model, config)
    view = clf.model_view(square_image(3, 4, 96, 3, np.random.default_rng(0)))
    assert np.ptp(ec.relevance_map(explain(view, clf, "gradcam", 3, render=False))) > 0
    before = [p.detach().clone() for p in clf.model.parameters()]
    s = ec.sanity(clf, view, "gradcam", target=3, max_steps=3)
    assert [st["randomised"] for st in s["steps"]][0] == "classifier" and len(s["steps"]) == 3
    assert s["final_spearman"] < 0.5
    assert all(torch.equal(a, b) for a, b in zip(before, clf.model.parameters()))  # on a copy
    st = ec.stability(clf, view, "gradcam", target=3)
    assert st["noise"] > 0.8 and st["seed"] is None  # 2 grey levels of noise hardly move the map
    assert ec.compare(np.arange(16.0), np.arange(16.0)) == pytest.approx(1.0)


def test_explain_json_has_the_faithfulness_line(trained_tiny, tmp_path, capsys):
    ckpt, data = trained_tiny
    image = sorted((data / "pro").glob("*.png"))[0]
    assert main(["explain", "--checkpoint", str(ckpt), str(image), "--method", "gradcam", "--out",
                 str(tmp_path / "o.png"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    line = record["faithfulness"]
    assert line["k"] == 3 and line["class"] == record["class"]
    assert line["text"].startswith("hiding the 3 most relevant regions")
    assert main(["explain", "--checkpoint", str(ckpt), str(image), "--method", "gradcam", "--out",
                 str(tmp_path / "o.png")]) == 0
    assert "Faithfulness: hiding the 3" in capsys.readouterr().out


def test_explain_check_end_to_end(trained_tiny, tmp_path, capsys):
    ckpt, data = trained_tiny
    out = tmp_path / "check"
    assert main(["explain-check", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out),
                 "--n-per-class", "2", "--methods", "gradcam,occlusion", "--compare-with", str(ckpt), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_images"] == 8 and set(summary["methods"]) == {"gradcam", "occlusion"}
    for name in ("explain_check.json", "report.md", "examples.png", "curves.png"):
        assert (out / name).stat().st_size > 100, name
    full = json.loads((out / "explain_check.json").read_text())
    assert len(full["images"]) == 8 and full["images"][0]["methods"]["gradcam"]["sanity"]["steps"]
    agg = summary["methods"]["gradcam"]
    assert agg["compare"]["spearman"]["mean"] == pytest.approx(1.0)  # a CNN compared with itself
    assert {"deletion_auc", "random_deletion_auc", "insertion_auc", "inside", "border", "sanity"} <= set(agg)
    report = (out / "report.md").read_text()
    assert "## gradcam" in report and "## occlusion" in report and "Deletion AUC" in report
    assert "faithful" in summary["verdicts"]["gradcam"]["faithfulness"]


def test_explain_check_refuses_bad_input(trained_tiny, tmp_path, capsys):
    ckpt, data = trained_tiny
    with pytest.raises(MedsynthError, match="unknown explanation method 'shap'"):
        ec.run_check(ckpt, data, tmp_path / "x", methods=["gradcam", "shap"])
    with pytest.raises(MedsynthError, match="does not exist"):
        ec.run_check(ckpt, tmp_path / "missing", tmp_path / "x")
    assert main(["explain-check", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp_path / "x"),
                 "--methods", "gradcam,nope"]) == 2
    assert "unknown explanation method 'nope'" in capsys.readouterr().err


def test_lime_relevance_map_uses_positive_weights(trained_tiny):
    ckpt, data = trained_tiny
    clf = load_classifier(ckpt)
    img = np.asarray(Image.open(sorted((data / "pro").glob("*.png"))[0]))
    exp = explain(img, clf, "lime", num_samples=20, render=False)
    rel = ec.relevance_map(exp)
    signed = ec.relevance_map(exp, positive_only=False)
    assert rel.shape == exp.segments.shape and rel.min() >= 0
    for s, w in exp.weights:
        assert signed[exp.segments == s][0] == pytest.approx(w)


def test_compare_with_a_cnn_of_another_input_size(trained_tiny, tmp_path):
    """A 64-px synthetic-trained CNN beside a 128-px real-trained one: each explains its own view, maps meet at ours."""
    ckpt, data = trained_tiny
    other = load_classifier(ckpt)
    other.config.input_size = 48
    other.save(tmp_path / "other")
    summary = ec.run_check(ckpt, data, tmp_path / "out", methods=["occlusion"], n_per_class=1,
                           compare_with=tmp_path / "other")
    assert summary["compare_input_size"] == 48 and summary["input_size"] == 32
    c = summary["methods"]["occlusion"]["compare"]
    assert c["spearman"]["n"] == 4 and -1 <= c["spearman"]["mean"] <= 1
    with pytest.raises(MedsynthError, match="same domain"):
        bad = load_classifier(ckpt)
        bad.config.domain = "brain_mri"
        ec.run_check(ckpt, data, tmp_path / "out2", methods=["occlusion"], compare_with=bad.save(tmp_path / "bad"))
