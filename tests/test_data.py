"""Labelled folders, their errors, and the deterministic stratified split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsynth.data import Sample, load_resized, scan_dataset, stratified_split
from medsynth.errors import MedsynthError

from conftest import make_dataset

CLASSES = ("benign", "early", "pre", "pro")


def test_scan_ignores_side_files_and_hidden(blood_folder):
    (blood_folder / ".ipynb_checkpoints").mkdir()
    (blood_folder / "benign" / ".DS_Store").write_bytes(b"x")
    (blood_folder / "benign" / "notes.txt").write_text("not an image")
    samples = scan_dataset(blood_folder, CLASSES)
    assert len(samples) == 24
    assert [s.label for s in samples] == sorted(s.label for s in samples)
    assert all(s.path.suffix == ".png" for s in samples)


def test_unknown_folder_is_named(blood_folder):
    (blood_folder / "Benign_old").mkdir()
    with pytest.raises(MedsynthError, match=r"folder 'Benign_old' is not a known class; expected sub-folders named benign, early, pre, pro"):
        scan_dataset(blood_folder, CLASSES)


def test_missing_class_is_an_error_for_training(tmp_path):
    make_dataset(tmp_path, CLASSES[:3], n_per_class=2)
    with pytest.raises(MedsynthError, match="class folder 'pro' is missing"):
        scan_dataset(tmp_path, CLASSES)
    assert len(scan_dataset(tmp_path, CLASSES, require_all=False)) == 6


def test_empty_and_absent_roots(tmp_path):
    with pytest.raises(MedsynthError, match="does not exist"):
        scan_dataset(tmp_path / "nowhere", CLASSES)
    with pytest.raises(MedsynthError, match="no images found"):
        scan_dataset(tmp_path, CLASSES, require_all=False)


def test_natural_order(tmp_path):
    make_dataset(tmp_path, CLASSES, n_per_class=1)
    for name in ("img10.png", "img2.png", "img1.png"):
        (tmp_path / "early" / name).write_bytes((tmp_path / "early" / "early_000.png").read_bytes())
    names = [s.path.name for s in scan_dataset(tmp_path, CLASSES) if s.label == 1]
    assert names == ["early_000.png", "img1.png", "img2.png", "img10.png"]


def _samples(counts):
    return [Sample(Path(f"c{label}/{i:03d}.png"), label) for label, n in enumerate(counts) for i in range(n)]


def test_split_is_deterministic_stratified_and_seeded():
    samples = _samples([50, 20, 7, 2])
    a_train, a_val = stratified_split(samples, 0.2, seed=3)
    b_train, b_val = stratified_split(list(reversed(samples)), 0.2, seed=3)
    assert sorted(map(str, (s.path for s in a_val))) == sorted(map(str, (s.path for s in b_val)))
    per_class = np.bincount([s.label for s in a_val], minlength=4)
    assert per_class.tolist() == [10, 4, 1, 1]  # round(n * 0.2), at least one, never all
    assert not {s.path for s in a_train} & {s.path for s in a_val}
    assert len(a_train) + len(a_val) == len(samples)
    _, c_val = stratified_split(samples, 0.2, seed=4)
    assert {s.path for s in c_val} != {s.path for s in a_val}
    train, val = stratified_split(samples, 0.0, seed=0)
    assert val == [] and len(train) == len(samples)
    with pytest.raises(MedsynthError, match="val fraction must be in"):
        stratified_split(samples, 1.0, seed=0)


def test_load_resized_pads_to_square(tmp_path):
    from PIL import Image

    img = np.zeros((20, 40), dtype=np.uint8)
    img[:, :] = 200
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = load_resized([Sample(tmp_path / "wide.png", 0)], channels=1, size=32, progress=False)
    assert out.shape == (1, 32, 32, 1)
    # Edge replication keeps the padding the same colour as the border: no black bars, no stretching.
    assert out.min() == 200


