"""The out-of-domain guard: the score, its threshold, its file, and the guard at work in classify."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medsynth import ood
from medsynth.errors import MedsynthError

from conftest import make_dataset


def _clusters(rng, n, centre):
    return centre + rng.normal(0, 1.0, (n, 32))


def test_far_points_score_high_and_the_threshold_passes_its_quantile():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (3, 32))
    train = np.concatenate([_clusters(rng, 200, c) for c in centres])
    labels = np.repeat(np.arange(3), 200)
    ref = ood.fit(train, labels, n_components=8)
    calib = np.concatenate([_clusters(rng, 100, c) for c in centres])
    threshold = ood.calibrate(ref, calib, 0.95)
    assert threshold == pytest.approx(np.quantile(ref.score(calib), 0.95, method="higher"))
    held = np.concatenate([_clusters(rng, 100, c) for c in centres])
    assert 0.0 < ref.flags(held).mean() < 0.12  # ~5 % of in-domain points, by design
    far = rng.normal(0, 5, (50, 32)) + 40  # another "modality"
    assert ref.flags(far).all()
    off_subspace = centres[0] + np.eye(32)[31] * 30  # near a class mean but along an axis never seen
    assert ref.flags(off_subspace[None]).all()


def test_reference_round_trips_and_a_damaged_file_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    ref = ood.fit(rng.normal(size=(40, 16)), np.repeat([0, 1], 20), n_components=4)
    ood.calibrate(ref, rng.normal(size=(20, 16)))
    ref.info["domain"] = "covid_ct"
    ood.save(ref, tmp_path)
    back = ood.load(tmp_path)
    x = rng.normal(size=(5, 16))
    assert np.allclose(back.score(x), ref.score(x), rtol=1e-5) and back.threshold == ref.threshold
    assert back.info["domain"] == "covid_ct" and back.info["n_calibration"] == 20
    assert ood.load(tmp_path / "nothing_here") is None
    (tmp_path / ood.REFERENCE_NAME).write_bytes(b"\x80\x04K\x01.")  # a pickle, not safetensors
    with pytest.raises(MedsynthError, match="ood.safetensors: not a valid out-of-domain reference"):
        ood.load(tmp_path)
    with pytest.raises(MedsynthError, match="at least 10 held-out images"):
        ood.calibrate(ref, rng.normal(size=(5, 16)))


def test_no_reference_means_unchecked_not_in_domain_but_blank_is_always_caught():
    noise = np.random.default_rng(0).integers(0, 255, (20, 20, 1), dtype=np.uint8)
    unchecked, blank = ood.check(None, [noise, np.full((20, 20, 1), 90, np.uint8)])
    assert unchecked["checked"] is False and unchecked["in_domain"] is None and unchecked["blank"] is False
    assert ood.headline("glioma", unchecked) == "glioma" and "not checked" in ood.sentence("glioma", 0.9, unchecked)
    assert blank["blank"] is True and blank["in_domain"] is False
    assert ood.headline("glioma", blank) == "blank image"
    assert ood.sentence("glioma", 0.92, blank).startswith("Blank image: it is one flat colour")


def test_ood_fit_then_classify_flags_photos_and_blank_images(tmp_path, trained_tiny):
    """The CLI end to end: fit a domain's guard, then `classify --json` says which inputs are out of domain."""
    from PIL import Image

    from medsynth.cli import main
    from medsynth.domains import get_domain

    checkpoint, data = trained_tiny
    classes = get_domain("all_blood").classes
    calib = make_dataset(tmp_path / "calib", classes, n_per_class=4, size=40, channels=3, seed=5)
    domain_dir = tmp_path / "checkpoints" / "all_blood"
    shutil.copytree(checkpoint, domain_dir / "classifier")
    with pytest.raises(SystemExit):
        main(["ood-fit", "--domain", "all_blood", "--train", str(data), "--calibration", str(calib)])  # no --out
    assert main(["ood-fit", "--domain", "all_blood", "--train", str(data), "--calibration", str(data),
                 "--out", str(domain_dir)]) == 2  # calibrating on the training images is refused
    assert main(["ood-fit", "--domain", "all_blood", "--train", str(data), "--calibration", str(calib),
                 "--out", str(domain_dir), "--components", "8"]) == 0
    assert (domain_dir / ood.REFERENCE_NAME).is_file()

    import skimage.data

    Image.fromarray(skimage.data.astronaut()).save(tmp_path / "astronaut.png")
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(tmp_path / "white.png")
    in_domain = sorted((calib / classes[0]).glob("*.png"))[0]
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["classify", "--checkpoint", str(domain_dir / "classifier"), "--json", str(in_domain),
                     str(tmp_path / "astronaut.png"), str(tmp_path / "white.png")]) == 0
    results = json.loads(out.getvalue().strip().splitlines()[-1])["results"]
    assert [r["in_domain"] for r in results] == [True, False, False]  # a calibration image passes by construction
    assert "blank" in results[2]["out_of_domain"]["note"]
    # the headline never names a class for what is not a scan
    assert [r["headline"] for r in results] == [results[0]["class"], "out of domain", "blank image"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["classify", "--checkpoint", str(domain_dir / "classifier"), str(in_domain),
              str(tmp_path / "astronaut.png"), str(tmp_path / "white.png")])
    lines = out.getvalue().strip().splitlines()
    assert "the image looks like the domain's real images" in lines[0]
    assert "astronaut.png: Out of domain: this image does not look like this domain's images" in lines[1]
    assert "white.png: Blank image: it is one flat colour, so there is nothing to classify" in lines[2]
    assert main(["explain", "--checkpoint", str(domain_dir / "classifier"), str(tmp_path / "white.png"),
                 "--method", "gradcam", "--out", str(tmp_path / "w.png")]) == 2
    assert not (tmp_path / "w.png").exists()
    assert results[1]["out_of_domain"]["score"] > results[1]["out_of_domain"]["threshold"]
    # a classifier without a reference anywhere is unchecked, said plainly
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["classify", "--checkpoint", str(checkpoint), "--json", str(in_domain)])
    assert json.loads(out.getvalue().strip().splitlines()[-1])["results"][0]["in_domain"] is None
