"""Damaged checkpoints are refused with a message naming the file; nothing half-loaded gets through."""

from __future__ import annotations

import json
import pickle
import re
import shutil

import pytest
import torch

from medsynth.errors import MedsynthError


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, trained_tiny):
    return trained_tiny[0]


@pytest.mark.parametrize("damage,message", [
    ("truncate", r"model\.safetensors"),
    ("pickle", r"model\.safetensors"),
    ("missing", r"model\.safetensors"),
    ("bad_json", r"config\.json"),
    ("wrong_classes", r"does not match"),
])
def test_damaged_classifier_is_refused_naming_the_file(tmp_path, classifier_dir, damage, message):
    from medsynth.classify import load_classifier

    ckpt = tmp_path / "ck"
    shutil.copytree(classifier_dir, ckpt)
    weights = ckpt / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "pickle":
        weights.write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    elif damage == "missing":
        weights.unlink()
    elif damage == "bad_json":
        (ckpt / "config.json").write_text('{"arch": "x",')
    elif damage == "wrong_classes":
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["classes"] = cfg["classes"][:2]
        cfg["domain"] = "covid_ct"
        cfg["classes"] = ["covid", "non_covid"]
        (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MedsynthError, match=message):
        load_classifier(ckpt)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    from medsynth.diffusion import ClassConditionalPipeline, create_unet, make_noise_scheduler, save_pipeline

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pipe") / "diffusion"
    save_pipeline(ClassConditionalPipeline(unet=create_unet("tiny", num_classes=2, channels=1, resolution=16),
                                           scheduler=make_noise_scheduler(), domain="covid_ct",
                                           classes=["covid", "non_covid"]), path)
    return path


@pytest.mark.parametrize("damage,message", [
    ("truncate", r"cannot be loaded"), ("pickle", r"cannot be loaded"), ("missing_unet", r"cannot be loaded"),
    ("bad_index", r"cannot be loaded")])
def test_damaged_diffusion_checkpoint_is_refused_naming_it(tmp_path, pipeline_dir, damage, message):
    import warnings

    from medsynth.diffusion import load_pipeline

    ckpt = tmp_path / "diffusion"
    shutil.copytree(pipeline_dir, ckpt)
    weights = next((ckpt / "unet").glob("*.safetensors"))
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "pickle":
        weights.unlink()
        (ckpt / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}))
    elif damage == "missing_unet":
        shutil.rmtree(ckpt / "unet")
    elif damage == "bad_index":
        (ckpt / "model_index.json").write_text("{")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MedsynthError, match=re.escape(str(ckpt)) + ": diffusion checkpoint " + message):
            load_pipeline(ckpt)
