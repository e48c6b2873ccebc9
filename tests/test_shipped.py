"""The trained checkpoints shipped under checkpoints/<domain>/: the layout of docs/checkpoints.md and size budget,
loadable with the package alone, one small inference each, and complete model cards.

A domain whose models have not been shipped yet is skipped; a partly shipped domain fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from medsynth.domains import DOMAINS

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints"
EXAMPLES = ROOT / "examples"
PARTS = ("diffusion", "classifier", "classifier_synthetic")
OPTIONAL_PARTS = ("upsampler",)  # the cascade's second stage, named by diffusion/cascade.json
MB = 1024 * 1024


def shipped(key: str) -> Path:
    folder = CHECKPOINTS / key
    if not folder.is_dir():
        pytest.skip(f"no models shipped for {key} yet")
    return folder


def card_header(path: Path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n"), f"{path} has no YAML header"
    header = yaml.safe_load(text.split("---\n", 2)[1])
    for key in ("license", "license_name", "license_link", "library_name", "tags"):
        assert header.get(key), f"{path}: YAML header lacks {key!r}"
    assert "datasets" not in header, f"{path}: datasets are linked in the card's text, not given as Hub ids"
    return header


def test_budget_and_safetensors_only():
    if not CHECKPOINTS.is_dir():
        pytest.skip("no checkpoints shipped yet")
    files = [p for p in CHECKPOINTS.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert total < 200 * MB, f"checkpoints/ holds {total / MB:.1f} MB; the budget is 200 MB"
    for p in files:
        assert p.stat().st_size <= 45 * MB, f"{p} is {p.stat().st_size / MB:.1f} MB; no file may exceed 45 MB"
        assert p.suffix not in {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}, f"{p}: weights must be safetensors"
        assert p.suffix not in {".tmp", ".part"} and not p.name.startswith("."), f"{p}: leftover temporary file"
    for folder in CHECKPOINTS.iterdir():
        assert folder.name in DOMAINS, f"checkpoints/{folder.name} is not a registered domain"
        parts = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in OPTIONAL_PARTS)
        assert parts == sorted(PARTS), folder


@pytest.mark.parametrize("key", sorted(DOMAINS))
@pytest.mark.parametrize("part", ["classifier", "classifier_synthetic"])
def test_classifier_loads_and_classifies(key, part):
    from medsynth.classify import load_classifier
    from medsynth.io import load_image

    folder = shipped(key) / part
    domain = DOMAINS[key]
    clf = load_classifier(folder)
    assert clf.config.domain == key and clf.classes == list(domain.classes)
    images = sorted((EXAMPLES / key).iterdir())
    probs = clf.predict_proba([load_image(p, domain.channels) for p in images])
    assert probs.shape == (len(images), domain.num_classes)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    if part == "classifier":  # the real-trained CNN knows the committed real examples
        expected = [domain.class_index(p.name.rsplit("_", 1)[0]) for p in images]
        assert probs.argmax(1).tolist() == expected

    header = card_header(folder / "README.md")
    assert header["library_name"] == "timm"
    card = (folder / "README.md").read_text()
    assert "## Validation metrics" in card and "Accuracy **" in card
    for caveat in domain.caveats:
        assert caveat in card
    summary = json.loads((folder / "train_summary.json").read_text())
    provenance = summary.get("synthetic_training_data")
    if part == "classifier_synthetic":
        assert provenance and provenance["synthetic"], "the synthetic-trained CNN must record its generated data"
        assert "Synthetic images only" in card
    else:
        assert not provenance


@pytest.mark.parametrize("key", sorted(DOMAINS))
def test_upsampler_is_named_by_the_generator_loads_and_enlarges(key):
    """The cascade's second stage: fp16 weights, named by the generator's cascade.json, measured on its card."""
    from safetensors import safe_open

    from medsynth.diffusion import load_pipeline
    from medsynth.upsampler import check_cascade, load_upsampler, named_upsampler

    folder = shipped(key) / "upsampler"
    if not folder.is_dir():
        pytest.skip(f"no upsampler shipped for {key} yet")
    domain = DOMAINS[key]
    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
    stage = load_upsampler(folder)
    pipe = load_pipeline(shipped(key) / "diffusion")
    assert named_upsampler(shipped(key) / "diffusion").resolve() == folder.resolve()
    check_cascade(pipe, stage)
    import torch

    low = pipe([domain.classes[0]], num_inference_steps=2, sampler="dpmpp", generator=[torch.Generator().manual_seed(0)])
    high = stage(low, num_inference_steps=2, generator=[torch.Generator().manual_seed(0)])
    size = pipe.unet.config.sample_size * stage.scale
    assert high.shape == (1, size, size, domain.channels) and high.dtype == np.uint8
    text = (folder / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n", 2)[1])
    assert header["library_name"] == "diffusers" and header["license"] and "super-resolution" in header["tags"]
    assert "## Measured against bicubic enlargement" in text and "PSNR" in text
    assert "## Cascade" in (shipped(key) / "diffusion" / "README.md").read_text()
    assert json.loads((folder / "split.json").read_text())["val"] == json.loads(
        (shipped(key) / "diffusion" / "split.json").read_text())["val"]


@pytest.mark.parametrize("key", sorted(DOMAINS))
def test_diffusion_loads_and_generates(key):
    from safetensors import safe_open

    from medsynth.diffusion import load_pipeline

    folder = shipped(key) / "diffusion"
    domain = DOMAINS[key]
    assert (folder / "model_index.json").is_file() and (folder / "scheduler").is_dir()
    weights = list((folder / "unet").glob("*.safetensors"))
    assert len(weights) == 1
    with safe_open(str(weights[0]), "pt") as f:  # shipped in fp16, as the issue asks
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
    pipe = load_pipeline(folder)
    assert pipe.classes == list(domain.classes)
    import torch

    images = pipe([domain.classes[-1]], num_inference_steps=2, sampler="dpmpp",
                  generator=[torch.Generator().manual_seed(0)])
    size = pipe.unet.config.sample_size
    assert images.shape == (1, size, size, domain.channels) and images.dtype == np.uint8
    # every shipped model carries the coarse start prior of its training split ('generate --start-from prior')
    assert pipe.start_prior is not None and int(pipe.start_prior["images"]) == len(
        json.loads((folder / "split.json").read_text())["train"])
    assert pipe([domain.classes[0]], num_inference_steps=2, sampler="dpmpp", start_from="prior",
                generator=[torch.Generator().manual_seed(0)]).shape == images.shape

    header = card_header(folder / "README.md")
    assert header["library_name"] == "diffusers"
    card = (folder / "README.md").read_text()
    assert "## Measured quality" in card and "FD-Lite0" in card
    assert (folder / "sample_grid.png").is_file() and "sample_grid.png" in card
    for caveat in domain.caveats:
        assert caveat in card
    quality = json.loads((folder / "quality.json").read_text())
    assert quality["domain"] == key and quality["fd"] > 0
