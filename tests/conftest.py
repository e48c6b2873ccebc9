"""Shared fixtures: offline environment, tiny generated datasets and a tiny trained classifier."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.pop("MEDSYNTH_ALLOW_HUB", None)

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(2)

TINY_ARCH = "test_efficientnet"  # timm's ~0.1 M-parameter test model


def square_image(label: int, num_classes: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Noise, plus a centred bright square whose size encodes the class.

    Size survives every domain augmentation (flips, 90-degree turns, small affine), so a tiny CNN
    learns the task in seconds.
    """
    img = rng.integers(0, 60, size=(size, size, channels), dtype=np.uint8)
    side = int(size * (label + 1) / (num_classes + 2))
    start = (size - side) // 2
    img[start : start + side, start : start + side] = 230
    return img


def make_dataset(root: Path, classes, n_per_class: int = 6, size: int = 40, channels: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = square_image(label, len(classes), size, channels, rng)
            Image.fromarray(arr[..., 0] if channels == 1 else arr).save(folder / f"{name}_{i:03d}.png")
    (root / "manifest.csv").write_text("file,label\n")
    return root


@pytest.fixture
def blood_folder(tmp_path) -> Path:
    from medsynth.domains import get_domain

    return make_dataset(tmp_path / "blood", get_domain("all_blood").classes, n_per_class=6, size=40, channels=3)


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny classifier trained for 4 epochs (16 steps) on generated all_blood-shaped data: (checkpoint, data)."""
    from medsynth.domains import get_domain
    from medsynth.recipes import ClassifierRecipe
    from medsynth.training.classifier import train_classifier

    root = tmp_path_factory.mktemp("tiny")
    data = make_dataset(root / "data", get_domain("all_blood").classes, n_per_class=10, size=40, channels=3)
    out = root / "clf"
    train_classifier(ClassifierRecipe(
        domain="all_blood", data=str(data), out=str(out), arch=TINY_ARCH, pretrained=False, epochs=4,
        batch_size=8, lr=1e-2, image_size=32, val_fraction=0.2, patience=0, device="cpu", progress=False,
    ))
    return out, data


CT = ["covid", "non_covid"]  # covid_ct's classes


@pytest.fixture
def pipe():
    """A tiny untrained covid_ct pipeline (16 px), seeded."""
    from medsynth.diffusion import ClassConditionalPipeline, create_unet, make_noise_scheduler

    torch.manual_seed(0)
    unet = create_unet("tiny", num_classes=2, channels=1, resolution=16)
    return ClassConditionalPipeline(unet=unet, scheduler=make_noise_scheduler(), domain="covid_ct", classes=CT)


@pytest.fixture
def ct_data(tmp_path):
    return make_dataset(tmp_path / "ct", CT, n_per_class=5, size=24, channels=1)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A saved tiny covid_ct pipeline, a labelled synthetic set from it, and real-looking folders."""
    from medsynth.cli import main
    from medsynth.diffusion import ClassConditionalPipeline, create_unet, make_noise_scheduler, save_pipeline
    from medsynth.recipes import ClassifierRecipe
    from medsynth.training.classifier import train_classifier

    root = tmp_path_factory.mktemp("quality")
    torch.manual_seed(0)
    unet = create_unet("tiny", num_classes=2, channels=1, resolution=16)
    save_pipeline(ClassConditionalPipeline(unet=unet, scheduler=make_noise_scheduler(), domain="covid_ct",
                                           classes=CT), root / "diff")
    assert main(["generate", "--checkpoint", str(root / "diff"), "--n-per-class", "4", "--steps", "2",
                 "--guidance", "2", "--seed", "5", "--out", str(root / "syn"), "--json"]) == 0
    make_dataset(root / "real", CT, n_per_class=5, size=24, channels=1, seed=1)
    make_dataset(root / "train", CT, n_per_class=6, size=24, channels=1, seed=2)
    train_classifier(ClassifierRecipe(  # a CNN trained on the real-looking images, for the quality command
        domain="covid_ct", data=str(root / "train"), val_data=str(root / "real"), out=str(root / "clf_real"),
        arch=TINY_ARCH, pretrained=False, epochs=1, batch_size=4, image_size=32, device="cpu", progress=False,
    ))
    return root
