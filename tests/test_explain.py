"""Explanations on a tiny classifier trained so that a bright square decides the class.

Class "covid" images hold a bright 40-px square somewhere on noise, "non_covid" images are noise
only; so for a "covid" image, whatever the classifier relies on must be the square.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medsynth.classify import load_classifier
from medsynth.cli import main
from medsynth.errors import MedsynthError
from medsynth.explain import explain, top_superpixels

from conftest import TINY_ARCH

SIZE, SIDE = 128, 40


def square_scan(rng, with_square: bool, corner: tuple[int, int] | None = None):
    img = rng.integers(0, 70, size=(SIZE, SIZE), dtype=np.uint8)
    if with_square:
        y, x = corner if corner is not None else rng.integers(4, SIZE - SIDE - 4, size=2)
        img[y : y + SIDE, x : x + SIDE] = 235
    return img


@pytest.fixture(scope="module")
def square_classifier(tmp_path_factory):
    from medsynth.recipes import ClassifierRecipe
    from medsynth.training.classifier import train_classifier

    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for name, with_square in (("covid", True), ("non_covid", False)):
        (root / "data" / name).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(square_scan(rng, with_square)).save(root / "data" / name / f"{i:03d}.png")
    out = root / "clf"
    train_classifier(ClassifierRecipe(
        domain="covid_ct", data=str(root / "data"), out=str(out), arch=TINY_ARCH, pretrained=False, epochs=8,
        batch_size=16, lr=1e-2, image_size=SIZE, val_fraction=0.1, patience=0, device="cpu", progress=False,
    ))
    return load_classifier(out), out


@pytest.fixture(scope="module")
def test_image():
    y, x = 16, 70
    img = square_scan(np.random.default_rng(123), True, corner=(y, x))
    inside = np.zeros((SIZE, SIZE), bool)
    inside[y : y + SIDE, x : x + SIDE] = True
    return img, inside


def test_classifier_learned_the_square(square_classifier, test_image):
    clf, _ = square_classifier
    img, _ = test_image
    assert clf.predict_proba([img])[0, 0] > 0.8
    assert clf.predict_proba([square_scan(np.random.default_rng(5), False)])[0, 0] < 0.5


def test_lime_top_superpixel_is_on_the_square(square_classifier, test_image):
    clf, _ = square_classifier
    img, inside = test_image
    progress = []
    exp = explain(img, clf, "lime", progress=progress.append)
    assert exp.target_class == "covid" and exp.mask.shape == (SIZE, SIZE)
    top = exp.weights[0]
    assert top[1] > 0
    region = exp.segments == top[0]
    assert inside[region].mean() > 0.5  # most of the top superpixel lies on the square
    # SLIC cuts the square into a few clean superpixels; on average they carry more weight than the background.
    weight = dict(exp.weights)
    on_square = [w for s, w in weight.items() if inside[exp.segments == s].mean() > 0.5]
    off_square = [w for s, w in weight.items() if inside[exp.segments == s].mean() <= 0.5]
    assert np.mean(on_square) > np.mean(off_square)
    assert progress and progress[-1] == 1.0 and progress == sorted(progress)
    assert exp.overlay.ndim == 3 and exp.overlay.shape[2] == 3 and exp.overlay.shape[0] > 200


def test_gradcam_peak_is_on_the_square(square_classifier, test_image):
    clf, _ = square_classifier
    img, inside = test_image
    exp = explain(img, clf, "gradcam")
    assert exp.heatmap.shape == (SIZE, SIZE) and exp.heatmap.max() == pytest.approx(1.0)
    y, x = np.unravel_index(exp.heatmap.argmax(), exp.heatmap.shape)
    margin = 16  # the last feature map of a stride-32 CNN is 4x4 at 128 px
    ys, xs = np.nonzero(inside)
    assert ys.min() - margin <= y <= ys.max() + margin and xs.min() - margin <= x <= xs.max() + margin
    assert exp.heatmap[inside].mean() > exp.heatmap[~inside].mean()


def test_lime_seeds_reproduce(square_classifier, test_image):
    clf, _ = square_classifier
    img, _ = test_image
    a = explain(img, clf, "lime", seed=3, render=False)
    b = explain(img, clf, "lime", seed=3, render=False)
    c = explain(img, clf, "lime", seed=4, render=False)
    assert a.weights == b.weights and np.array_equal(a.mask, b.mask)
    assert a.weights != c.weights
    assert top_superpixels(a, 1) == top_superpixels(c, 1)  # a different seed, the same answer


def test_options_negative_and_target(square_classifier, test_image):
    clf, _ = square_classifier
    img, _ = test_image
    exp = explain(img, clf, "lime", target="non_covid", positive_only=False, num_features=8, hide_color=0,
                  num_samples=64, render=False)
    assert exp.target_class == "non_covid" and exp.target == 1
    assert (exp.mask != 0).any() and len([w for _, w in exp.weights]) == len(np.unique(exp.segments))


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(method="shap"), "unknown explanation method 'shap'"), (dict(target="flu"), "unknown target class 'flu'"),
     (dict(target=7), "target index 7 out of range"), (dict(num_samples=5), "num_samples must be at least 10"),
     (dict(num_features=0), "num_features must be at least 1")],
)
def test_argument_errors(square_classifier, test_image, kwargs, message):
    clf, _ = square_classifier
    with pytest.raises(MedsynthError, match=message):
        explain(test_image[0], clf, **kwargs)


def test_explain_cli(square_classifier, test_image, tmp_path, capsys):
    _, ckpt = square_classifier
    Image.fromarray(test_image[0]).save(tmp_path / "scan.png")
    for method in ("lime", "gradcam"):
        out = tmp_path / f"{method}.png"
        assert main(["explain", "--checkpoint", str(ckpt), str(tmp_path / "scan.png"), "--method", method,
                     "--out", str(out), "--json"]) == 0
        record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert record["class"] == "covid" and record["out"] == str(out) and record["method"] == method
        with Image.open(out) as im:
            assert im.format == "PNG" and im.size[0] > 200
    assert main(["explain", "--checkpoint", str(ckpt), str(tmp_path / "scan.png"), "--target", "flu",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown target class 'flu'" in capsys.readouterr().err
