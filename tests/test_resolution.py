"""Small uploads (medsynth.resolution): the warning below the measured drop, through the Python API, the
CLI and /classify's summary, with figures read from the checkpoint; the training augmentation's sizes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from medsynth import resolution
from medsynth.transforms import RandomLowResolution

RECORD = {"n": 200, "sizes": [32, 48, 64, 96, 128], "jpeg_quality": 75,
          "plain": {"32": 0.41, "48": 0.55, "64": 0.705, "96": 0.94, "128": 0.965, "full": 0.97},
          "jpeg": {"32": 0.4, "48": 0.5, "64": 0.69, "96": 0.93, "128": 0.96, "full": 0.965}}


def test_threshold_is_the_size_from_which_nothing_drops_clearly():
    assert resolution.threshold(RECORD) == 96  # 64 px drops by 26 points; 96 px by 3, within two errors of 200
    flat = {**RECORD, "plain": {k: 0.97 for k in RECORD["plain"]}}
    assert resolution.threshold(flat) is None
    steep = {**RECORD, "plain": {**RECORD["plain"], "96": 0.80, "128": 0.90}}
    assert resolution.threshold(steep) == 129  # even 128 px drops clearly: every reduced input is warned


def test_warning_quotes_the_record_and_stays_quiet_above_the_threshold():
    record = {**RECORD, "warn_below": 96}
    small = resolution.warning_for(record, (64, 64, 1))
    assert small["low"] is True and small["accuracy"] == 0.705 and small["accuracy_full"] == 0.97
    assert small["note"].startswith("This scan is 64 px; at this size the classifier is right 70% of the time, "
                                    "against 97% on full-size scans")
    between = resolution.warning_for(record, (80, 60, 1))  # longer side 80: quoted at 64 px, the size not above it
    assert between["size"] == 80 and between["measured_at"] == 64 and "measured at 64 px" in between["note"]
    assert resolution.warning_for(record, (256, 256, 1)) == {"width": 256, "height": 256, "size": 256, "low": False,
                                                               "note": None}
    assert resolution.warning_for(None, (20, 30, 1))["low"] is None  # not measured: no claim either way


def test_reduce_gives_an_upload_of_the_asked_size():
    image = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    assert resolution.reduce(image, 50).shape == (30, 50, 3)
    assert resolution.reduce(image, 50, jpeg_quality=75).shape == (30, 50, 3)
    assert resolution.reduce(image, None).shape == image.shape


def test_the_augmentation_draws_sizes_in_the_configured_range_reproducibly():
    aug = RandomLowResolution(floor=40, p=1.0)
    draws = [aug.draw(128, torch.Generator().manual_seed(s)) for s in range(200)]
    sizes = [d["size"] for d in draws]
    assert min(sizes) >= 40 and max(sizes) <= 128 and len(set(sizes)) > 30
    assert draws == [aug.draw(128, torch.Generator().manual_seed(s)) for s in range(200)]  # seeded
    assert any(d["jpeg_quality"] for d in draws) and any(d["jpeg_quality"] is None for d in draws)
    assert all(RandomLowResolution(floor=40, p=0.0).draw(128, torch.Generator().manual_seed(s)) is None
               for s in range(20))
    x = torch.rand(1, 128, 128)
    out = RandomLowResolution.apply(x, 32)
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    # detail is gone: the reduced image is much smoother than the noise it came from
    assert float((out[:, 1:] - out[:, :-1]).abs().mean()) < 0.5 * float((x[:, 1:] - x[:, :-1]).abs().mean())


def _profiled(trained_tiny, tmp_path):
    checkpoint = tmp_path / "checkpoints" / "all_blood" / "classifier"
    shutil.copytree(trained_tiny[0], checkpoint)
    (checkpoint / "evaluation.json").write_text(json.dumps(
        {"held/out": {"n": 200, "accuracy": 0.97, "accuracy_by_input_size": {**RECORD, "warn_below": 96}}}))
    return checkpoint


def test_the_warning_through_the_python_api_and_the_cli(trained_tiny, tmp_path, capsys):
    from medsynth.classify import load_classifier
    from medsynth.cli import main
    from medsynth.evaluate import classify_files

    checkpoint = _profiled(trained_tiny, tmp_path)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "thumb.png")
    Image.fromarray(rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    files = [str(tmp_path / "thumb.png"), str(tmp_path / "full.png")]
    small, full = classify_files(load_classifier(checkpoint), files, checkpoint=checkpoint)
    assert small["resolution"]["low"] is True and "right 70% of the time, against 97%" in small["resolution"]["note"]
    assert full["resolution"] == {"width": 160, "height": 160, "size": 160, "low": False, "note": None}
    assert main(["classify", "--checkpoint", str(checkpoint), *files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "Small scan: This scan is 64 px" in lines[0] and "Small scan" not in lines[1]
    assert main(["classify", "--checkpoint", str(checkpoint), *files, "--json"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["resolution"]["accuracy"] == 0.705 and first["in_domain"] is None  # two separate answers


def test_the_warning_in_the_apps_summary(trained_tiny, tmp_path):
    from medsynth import service

    checkpoint = _profiled(trained_tiny, tmp_path)
    store = service.ModelStore(checkpoint.parents[1])
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(rng.integers(0, 255, (200, 180, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    probs, verdict = service.assess(store, str(tmp_path / "small.png"), "all_blood", "real-trained")
    summary = service.summary_line("real-trained", probs, verdict, str(tmp_path / "small.png"))
    assert "Small scan:** This scan is 40x48 px; at this size the classifier is right 55% of the time" in summary
    probs, verdict = service.assess(store, str(tmp_path / "big.png"), "all_blood", "real-trained")
    summary = service.summary_line("real-trained", probs, verdict, str(tmp_path / "big.png"))
    assert "Input: 180x200 px." in summary and "Small scan" not in summary


@pytest.mark.parametrize("domain", ["brain_mri", "covid_ct", "all_blood"])
def test_shipped_classifiers_carry_their_measured_profile(domain):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "checkpoints" / domain
    for folder in ("classifier", "classifier_synthetic"):
        record = resolution.profile(root / folder)
        assert record is not None, f"{domain}/{folder}: run benchmarks/resolution.py --write"
        assert set(record["plain"]) == {"32", "48", "64", "96", "128", "full"}
        assert record["warn_below"] == resolution.threshold(record)
        assert "## Accuracy by input size" in (root / folder / "README.md").read_text()
