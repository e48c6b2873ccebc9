"""Training the class-conditional diffusion model (medsynth.training.diffusion): Min-SNR weights, the
step budget, time budget, resume, fine-tuning and the statistics training records."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medsynth.cli import main
from medsynth.diffusion import (
    load_pipeline, make_noise_scheduler, save_pipeline,
)
from medsynth.cards.rebuild import rebuild_card
from medsynth.errors import MedsynthError
from medsynth.recipes import DiffusionRecipe
from medsynth.training.diffusion import min_snr_weights, train_diffusion

from conftest import CT, make_dataset


def _gen(seed: int):
    return torch.Generator().manual_seed(seed)


def _recipe(tmp_path, data, **kw):
    base = dict(domain="covid_ct", data=str(data), out=str(tmp_path / "run"), preset="tiny", resolution=16,
                batch_size=4, max_steps=3, warmup_steps=1, log_every=1, sample_every=100, checkpoint_every=2,
                device="cpu", progress=False)
    base.update(kw)
    return DiffusionRecipe(**base)


def test_min_snr_weights():
    ac = make_noise_scheduler().alphas_cumprod
    t = torch.tensor([0, 500, 999])
    w = min_snr_weights(ac, t, 5.0, "epsilon")
    snr = ac[t] / (1 - ac[t])
    torch.testing.assert_close(w, torch.clamp(snr, max=5.0) / snr)
    assert w[0] < 0.01 and w[2] == pytest.approx(1.0)  # low noise: down-weighted; high noise: 1
    wv = min_snr_weights(ac, t, 5.0, "v_prediction")
    torch.testing.assert_close(wv, torch.clamp(snr, max=5.0) / (snr + 1))


def test_training_max_steps_and_resume(tmp_path, ct_data):
    summary = train_diffusion(_recipe(tmp_path, ct_data, max_steps=3))
    run = tmp_path / "run"
    assert summary["steps"] == 3 and summary["stop_reason"] == "reached --max-steps"
    assert {"model_index.json", "unet", "scheduler", "loss.csv", "sample_grid.png", "README.md", "args.json",
            "split.json", "checkpoints", "samples"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "checkpoints" / "step_0000003" / "state.json").read_text())["step"] == 3
    assert [int(r["step"]) for r in csv.DictReader(open(run / "loss.csv"))] == [1, 2, 3]
    assert load_pipeline(run)(["covid"], 2, generator=_gen(0)).shape == (1, 16, 16, 1)
    card = (run / "README.md").read_text()
    assert card.startswith("---\n") and "\nlicense: other\n" in card and "library_name: diffusers" in card
    assert "3 steps" in card

    with pytest.raises(MedsynthError, match="already holds a diffusion run; pass --resume"):
        train_diffusion(_recipe(tmp_path, ct_data, max_steps=5))
    with pytest.raises(MedsynthError, match="--resume: resolution was 16"):
        train_diffusion(_recipe(tmp_path, ct_data, max_steps=5, resume=True, resolution=32))
    summary = train_diffusion(_recipe(tmp_path, ct_data, max_steps=5, resume=True))
    assert summary["steps"] == 5  # continued from 3, not restarted
    assert summary["resumed_at_steps"] == [3]
    # args.json is what the last invocation ran, so a shipped recipe and a rebuilt card tell the truth
    args = json.loads((run / "args.json").read_text())
    assert args["max_steps"] == 5 and args["resume"] is True and args["resumed_at_steps"] == [3]
    assert "continued with `--resume` at step(s) 3" in (run / "README.md").read_text()
    assert "continued with `--resume` at step(s) 3" in rebuild_card(run)
    assert [int(r["step"]) for r in csv.DictReader(open(run / "loss.csv"))] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000004", "step_0000005"]


def test_max_minutes_stops_and_saves(tmp_path, ct_data):
    summary = train_diffusion(_recipe(tmp_path, ct_data, max_steps=50, max_minutes=1e-6))
    assert summary["steps"] == 1 and summary["stop_reason"].startswith("time budget")
    assert (tmp_path / "run" / "model_index.json").exists()


def test_resume_without_checkpoint(tmp_path, ct_data):
    with pytest.raises(MedsynthError, match="has no checkpoints"):
        train_diffusion(_recipe(tmp_path, ct_data, resume=True))


def test_train_diffusion_cli_smoke(tmp_path, ct_data, capsys):
    assert main(["train-diffusion", "--domain", "covid_ct", "--data", str(ct_data), "--out", str(tmp_path / "r"),
                 "--preset", "tiny", "--resolution", "16", "--max-steps", "2", "--batch-size", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["resolution"] == 16


def test_cli_resume_keeps_the_recorded_recipe(tmp_path, ct_data, capsys):
    """Options left off a --resume command keep the run's recorded values, not the parser's defaults;
    options given on it win."""
    from safetensors import safe_open

    base = ["train-diffusion", "--domain", "covid_ct", "--data", str(ct_data), "--out", str(tmp_path / "r"),
            "--preset", "tiny", "--resolution", "16", "--batch-size", "4", "--checkpoint-every", "2", "--json"]
    assert main(base + ["--max-steps", "2", "--save-dtype", "fp16", "--lr", "0.002"]) == 0
    capsys.readouterr()
    assert main(["train-diffusion", "--domain", "covid_ct", "--data", str(ct_data), "--out", str(tmp_path / "r"),
                 "--resume", "--max-step=3", "--json"]) == 0  # an abbreviation counts as given
    err = capsys.readouterr().err
    assert "resuming with the recorded" in err and "--save-dtype fp16" in err and "--lr 0.002" in err
    recorded = json.loads((tmp_path / "r" / "args.json").read_text())
    assert (recorded["save_dtype"], recorded["lr"], recorded["max_steps"], recorded["resolution"]) == ("fp16", 0.002, 3, 16)
    with safe_open(str(tmp_path / "r" / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}


def test_fine_tune_from_a_diffusion_checkpoint(tmp_path, pipe, ct_data):
    save_pipeline(pipe, tmp_path / "base")
    (tmp_path / "base" / "train_summary.json").write_text(json.dumps({"steps": 5, "seconds": 1.0}))
    summary = train_diffusion(_recipe(tmp_path, ct_data, init_from=str(tmp_path / "base"), resolution=None,
                                      preset="cpu", max_steps=1))
    assert summary["resolution"] == 16  # the base's, not the cpu preset's 64
    tuned = load_pipeline(tmp_path / "run")
    from medsynth.synthetic.provenance import write_provenance

    # a set drawn from the continued model counts the base's steps too: 5 + 1, not the continuation's 1
    assert write_provenance(tmp_path / "ds", tmp_path / "run", tuned)["diffusion_training_steps"] == 6
    assert list(tuned.unet.config.block_out_channels) == list(pipe.unet.config.block_out_channels)
    with pytest.raises(MedsynthError, match="do not match domain brain_mri"):
        train_diffusion(_recipe(tmp_path, ct_data, domain="brain_mri", out=str(tmp_path / "r2"),
                                init_from=str(tmp_path / "base")))


def test_training_records_class_means(tmp_path, ct_data):
    from medsynth.training.diffusion import class_means

    images = np.zeros((4, 2, 2, 1), np.uint8)
    images[2:] = 255
    assert class_means(images, [0, 0, 1, 1], 3) == [[-1.0], [1.0], [0.0]]
    train_diffusion(_recipe(tmp_path, ct_data, max_steps=1))
    pipe = load_pipeline(tmp_path / "run")
    recorded = pipe.config.class_means
    assert len(recorded) == 2 and all(-1 <= m[0] <= 1 for m in recorded)


def test_class_means_command_restores_what_training_records(tmp_path, ct_data, capsys):
    """An older checkpoint without class_means warns on loading; 'class-means' computes them from the
    training images its split.json lists, the same numbers train-diffusion records."""
    train_diffusion(_recipe(tmp_path, ct_data, max_steps=1))
    run = tmp_path / "run"
    index = json.loads((run / "model_index.json").read_text())
    recorded = index.pop("class_means")
    (run / "model_index.json").write_text(json.dumps(index))
    with pytest.warns(UserWarning, match="no class_means.*medsynth class-means --checkpoint"):
        assert load_pipeline(run).config.get("class_means") is None
    # a folder without the images the split lists for a class is refused, and nothing is written
    other = make_dataset(tmp_path / "other", CT, n_per_class=2, size=24, channels=1, seed=5)
    for f in (other / "covid").iterdir():
        f.rename(f.with_name("x" + f.name))
    assert main(["class-means", "--checkpoint", str(run), "--data", str(other)]) == 2
    assert "none of the training images that" in capsys.readouterr().err
    assert "class_means" not in json.loads((run / "model_index.json").read_text())
    assert main(["class-means", "--checkpoint", str(tmp_path), "--data", str(ct_data)]) == 2
    assert "is not a diffusion checkpoint" in capsys.readouterr().err

    assert main(["class-means", "--checkpoint", str(run), "--data", str(ct_data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    split = json.loads((run / "split.json").read_text())
    assert result["from_split"] and result["images"] == len(split["train"])
    assert list(result["class_means"].values()) == recorded
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_pipeline(run).config.class_means == recorded
