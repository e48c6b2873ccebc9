"""Training a CNN classifier (medsynth.training.classifier): schedule, options, stopping rules, regularisers."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from medsynth.errors import MedsynthError
from medsynth.recipes import ClassifierRecipe
from medsynth.training.classifier import train_classifier
from medsynth.training.schedule import warmup_cosine

from conftest import TINY_ARCH, make_dataset


def test_warmup_cosine_schedule():
    f = warmup_cosine(warmup_steps=4, total_steps=14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(9) == pytest.approx(0.5) and f(14) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(4, 14))
    assert warmup_cosine(0, 10)(0) == 1.0 and not math.isnan(warmup_cosine(0, 0)(0))


def _recipe(tmp_path, data, **kw):
    base = dict(domain="covid_ct", data=str(data), out=str(tmp_path / "out"), arch=TINY_ARCH, pretrained=False,
                epochs=2, batch_size=4, image_size=32, device="cpu", progress=False)
    base.update(kw)
    return ClassifierRecipe(**base)


def test_max_minutes_stops_cleanly_and_saves(tmp_path):
    data = make_dataset(tmp_path / "d", ["covid", "non_covid"], n_per_class=4, channels=1)
    summary = train_classifier(_recipe(tmp_path, data, epochs=5, max_minutes=1e-6))
    assert summary["epochs_run"] == 1 and summary["stop_reason"].startswith("time budget")
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "README.md").exists()


def test_separate_validation_folder(tmp_path):
    train = make_dataset(tmp_path / "train", ["covid", "non_covid"], n_per_class=4, channels=1, seed=1)
    val = make_dataset(tmp_path / "val", ["covid", "non_covid"], n_per_class=3, channels=1, seed=2)
    summary = train_classifier(_recipe(tmp_path, train, val_data=str(val), epochs=1))
    assert summary["n_train"] == 8 and summary["n_val"] == 6
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert all("/val/" in p for p in split["val"])
    assert "the separate folder" in (tmp_path / "out" / "README.md").read_text()


def test_no_validation_keeps_last_epoch(tmp_path):
    data = make_dataset(tmp_path / "d", ["covid", "non_covid"], n_per_class=3, channels=1)
    summary = train_classifier(_recipe(tmp_path, data, val_fraction=0.0, epochs=2))
    assert summary["best_epoch"] == 2 and summary["val_metrics"] is None and summary["n_val"] == 0


@pytest.mark.parametrize(
    "field,value,message",
    [("epochs", 0, "--epochs must be at least 1"), ("lr", 0.0, "--lr must be positive"),
     ("val_fraction", 1.0, r"--val-fraction must be in \[0, 1\)"), ("image_size", 8, "--image-size must be at least 32"),
     ("balance", "oversample", "--balance must be"), ("device", "tpu", "--device must be"),
     ("augment", "extreme", "--augment must be 'domain' or 'strong'"), ("mixup", -0.2, "--mixup must be >= 0"),
     ("freeze_stages", -1, "--freeze-stages must be >= 0"), ("ema", 1.0, r"--ema must be a per-step decay in \[0, 1\)")],
)
def test_recipe_validation(tmp_path, field, value, message):
    with pytest.raises(MedsynthError, match=message):
        train_classifier(_recipe(tmp_path, tmp_path, **{field: value}))


def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    data = make_dataset(tmp_path / "d", ["covid", "non_covid"], n_per_class=3, channels=1)
    with pytest.raises(MedsynthError, match="fp16 needs a GPU"):
        train_classifier(_recipe(tmp_path, data, mixed_precision="fp16"))


def test_fine_tune_from_a_checkpoint(tmp_path, trained_tiny):
    base, data = trained_tiny
    summary = train_classifier(ClassifierRecipe(
        domain="all_blood", data=str(data), out=str(tmp_path / "ft"), arch=TINY_ARCH, init_from=str(base), epochs=1,
        batch_size=8, device="cpu", progress=False))
    assert summary["pretrained"] == f"fine-tuned from {base}"
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["input_size"] == 32  # kept from the base
    with pytest.raises(MedsynthError, match="do not match domain covid_ct"):
        train_classifier(_recipe(tmp_path, data, init_from=str(base)))
    with pytest.raises(MedsynthError, match="pass --arch test_efficientnet"):
        train_classifier(ClassifierRecipe(domain="all_blood", data=str(data), out=str(tmp_path / "x"),
                                          init_from=str(base), progress=False))


def test_freeze_stages_keeps_the_stem_and_early_stages_and_their_statistics(tmp_path):
    from safetensors.torch import load_file

    from medsynth.classify import create_classifier
    from medsynth.training.classifier import freeze_stages

    data = make_dataset(tmp_path / "d", ["covid", "non_covid"], n_per_class=6, channels=1)
    torch.manual_seed(0)
    initial, _ = create_classifier(TINY_ARCH, 2, 1, pretrained=False)
    train_classifier(_recipe(tmp_path, data, freeze_stages=2, val_fraction=0.0, epochs=2, lr=1e-2))
    trained = load_file(str(tmp_path / "out" / "model.safetensors"))
    start = initial.state_dict()
    # Group 0 is the stem, group 1 the first stage: weights and batch-norm running statistics unchanged.
    for name in ("conv_stem.weight", "bn1.weight", "bn1.running_mean", "blocks.0.0.conv.weight", "blocks.0.0.bn1.running_var"):
        assert torch.equal(trained[name], start[name]), name
    assert not torch.equal(trained["classifier.weight"], start["classifier.weight"])
    assert not torch.equal(trained["blocks.1.0.conv_exp.weight"], start["blocks.1.0.conv_exp.weight"])
    with pytest.raises(MedsynthError, match="so at most"):
        freeze_stages(initial, 99)
    assert json.loads((tmp_path / "out" / "args.json").read_text())["freeze_stages"] == 2


def test_mixup_and_strong_augmentation_train_and_are_recorded(tmp_path):
    data = make_dataset(tmp_path / "d", ["covid", "non_covid"], n_per_class=6, channels=1)
    summary = train_classifier(_recipe(tmp_path, data, augment="strong", mixup=0.4, epochs=2))
    assert summary["epochs_run"] == 2 and math.isfinite(summary["val_metrics"]["accuracy"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| `augment` | `strong` |" in card and "| `mixup` | `0.4` |" in card


def test_weight_average_follows_the_live_weights_and_statistics():
    from medsynth.training.classifier import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.dtype.is_floating_point:
                v.add_(1.0)
        model[1].num_batches_tracked += 7
    average.update(model)  # the first step's decay is min(0.5, 2 / 11): the average moves 9/11 of the way
    got = average.module.state_dict()
    for k in ("0.weight", "0.bias", "1.running_mean", "1.running_var"):
        assert torch.allclose(got[k], start[k] + 9 / 11), k
    assert got["1.num_batches_tracked"] == 0 and not any(p.requires_grad for p in average.module.parameters())
    average.update(model)  # decay min(0.5, 3 / 12) = 0.25: it closes 3/4 of the remaining 2/11
    assert torch.allclose(average.module.state_dict()["0.weight"], start["0.weight"] + 1 - (2 / 11) / 4)


def test_ema_keeps_the_average_and_logs_the_live_weights_beside_it(tmp_path):
    from safetensors.torch import load_file

    from medsynth.classify import load_classifier
    from medsynth.evaluate import evaluate_folder

    train = make_dataset(tmp_path / "train", ["covid", "non_covid"], n_per_class=8, channels=1, seed=1)
    val = make_dataset(tmp_path / "val", ["covid", "non_covid"], n_per_class=6, channels=1, seed=2)
    train_classifier(_recipe(tmp_path, train, val_data=str(val), epochs=3, lr=1e-2, patience=0,
                             out=str(tmp_path / "plain")))
    summary = train_classifier(_recipe(tmp_path, train, val_data=str(val), epochs=3, lr=1e-2, patience=0, ema=0.9))
    rows = list(csv.DictReader((tmp_path / "out" / "train_log.csv").open()))
    plain_rows = list(csv.DictReader((tmp_path / "plain" / "train_log.csv").open()))
    # The average does not touch training: its live columns are the run without it, step for step.
    assert [r["live_val_accuracy"] for r in rows] == [r["val_accuracy"] for r in plain_rows]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in plain_rows]
    # Same trajectory, so the saved weights differ from the run without it only by being the average.
    saved, live = load_file(str(tmp_path / "out" / "model.safetensors")), load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert not torch.equal(saved["classifier.weight"], live["classifier.weight"])
    # What was saved is the average at the best epoch: scoring the checkpoint reproduces its logged score.
    best = rows[summary["best_epoch"] - 1]
    result = evaluate_folder(load_classifier(tmp_path / "out"), val, progress=False)
    assert result["accuracy"] == pytest.approx(float(best["val_accuracy"]))
    assert result["macro_f1"] == pytest.approx(float(best["val_macro_f1"]))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| `ema` | `0.9` |" in card and "moving average of the training weights (`--ema 0.9`" in card
    steps = summary["ema"]["steps"]  # 16 images in batches of 4, 3 epochs
    assert steps == 12 and summary["ema"]["final_decay"] == pytest.approx(13 / 22)  # short of 0.9
    assert f"after {steps} steps" in card and "what each epoch validated" in card
    # Without validation both keep their last epoch: the same point of the same run, yet the
    # average is not the live weights.
    train_classifier(_recipe(tmp_path, train, val_fraction=0.0, epochs=2, lr=1e-2, out=str(tmp_path / "plain_last")))
    train_classifier(_recipe(tmp_path, train, val_fraction=0.0, epochs=2, lr=1e-2, ema=0.9, out=str(tmp_path / "ema_last")))
    last_live = load_file(str(tmp_path / "plain_last" / "model.safetensors"))
    last_average = load_file(str(tmp_path / "ema_last" / "model.safetensors"))
    assert not torch.equal(last_live["classifier.weight"], last_average["classifier.weight"])
    assert "(the average at its end)" in (tmp_path / "ema_last" / "README.md").read_text()
    assert "live accuracy" in card and "live accuracy" not in (tmp_path / "plain" / "README.md").read_text()


def test_a_synthetic_folder_at_a_lower_resolution_is_seen_through_it(tmp_path):
    """A CNN trained at 32 px on 16-px generated images passes every input through 16 px, in training
    and in use, so a real scan brings it no more detail than its training images had; --source-size
    sets that resolution, 0 turns it off, and one at or above the input size is refused."""
    import numpy as np

    from medsynth.classify import ClassifierConfig, load_classifier
    from medsynth.transforms import fit_to_input, square_resize, square_resize_uint8, to_float_chw

    data = make_dataset(tmp_path / "syn", ["covid", "non_covid"], n_per_class=4, size=16, channels=1)
    (data / "generation.json").write_text(json.dumps({"synthetic": True, "resolution": 16, "diffusion_domain": "covid_ct"}))
    train_classifier(_recipe(tmp_path, data, epochs=1))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["input_size"] == 32 and config["source_size"] == 16
    assert "16 px first" in (tmp_path / "out" / "README.md").read_text()

    # A 64-px image with detail finer than 16 px: the classifier sees exactly its 16-px version, upsampled.
    fine = np.zeros((64, 64, 1), np.uint8)
    fine[(np.arange(64) // 2) % 2 == 0] = 255  # stripes 2 px wide: visible at 32 px, gone at 16
    clf = load_classifier(tmp_path / "out")
    seen = clf.preprocess([fine])[0].cpu()
    through = clf.normalize(fit_to_input(to_float_chw(fine), 32, 16)[None].to(clf.device))[0].cpu()
    torch.testing.assert_close(seen, through)
    # ... rounded to 8-bit levels at both sizes, exactly as training stored its images
    levels = lambda t: (t.clamp(0, 1) * 255).round() / 255  # noqa: E731
    torch.testing.assert_close(fit_to_input(to_float_chw(fine), 32, 16),
                               levels(square_resize(levels(square_resize(to_float_chw(fine), 16)), 32)))
    torch.testing.assert_close(fit_to_input(to_float_chw(fine), 32, 16),
                               to_float_chw(square_resize_uint8(fine, 32, 16)), atol=0, rtol=0)
    assert float(fit_to_input(to_float_chw(fine), 32, 16).std()) < 0.05 < 0.2 < float(square_resize(to_float_chw(fine), 32).std())
    low = square_resize_uint8(fine, 16)
    torch.testing.assert_close(clf.preprocess([low])[0].cpu(), seen, atol=0.02, rtol=0)
    from medsynth.explain import explain

    exp = explain(fine, clf, "gradcam", render=False)  # the explanations show the view it classifies
    assert exp.image.shape == (32, 32, 1) and float(exp.image.astype(float).std()) < 0.05 * 255

    train_classifier(_recipe(tmp_path, data, epochs=1, source_size=0, out=str(tmp_path / "off")))
    assert json.loads((tmp_path / "off" / "config.json").read_text())["source_size"] is None
    with pytest.raises(MedsynthError, match="--source-size 32 must be below the input size 32"):
        train_classifier(_recipe(tmp_path, data, source_size=32))
    with pytest.raises(MedsynthError, match="source_size must be a whole number of px below input_size"):
        ClassifierConfig.from_dict({**config, "source_size": 32})
    real = make_dataset(tmp_path / "real", ["covid", "non_covid"], n_per_class=3, size=16, channels=1)
    train_classifier(_recipe(tmp_path, real, epochs=1, out=str(tmp_path / "real_out")))
    assert json.loads((tmp_path / "real_out" / "config.json").read_text())["source_size"] is None
