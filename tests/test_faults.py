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


# -- a training process killed with SIGKILL, then --resume ---------------------------------------------

def _medsynth(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "medsynth", *args]


def _kill_when(proc, ready, timeout: float = 120.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled); fail if it ends or times out first."""
    import signal
    import time

    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it could be killed"
        assert time.time() < deadline, "the run never reached the point to kill it at"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def _classifier_args(data, out, epochs: int) -> list[str]:
    from conftest import TINY_ARCH

    return ["train-classifier", "--domain", "covid_ct", "--data", str(data), "--out", str(out), "--arch", TINY_ARCH,
            "--no-pretrained", "--epochs", str(epochs), "--batch-size", "4", "--image-size", "32", "--lr", "0.01",
            "--patience", "0", "--device", "cpu", "--seed", "3"]


def test_sigkill_during_train_classifier_then_resume_loses_at_most_one_epoch(tmp_path):
    """A real train-classifier process killed mid-run: what it wrote loads, --resume finishes the run from the
    last finished epoch, and the resumed run is the uninterrupted one epoch for epoch."""
    import csv
    import subprocess

    from conftest import make_dataset
    from medsynth.classify import load_classifier
    from medsynth.training.classifier import unfinished_epoch

    data = make_dataset(tmp_path / "ct", ["covid", "non_covid"], n_per_class=8, size=36, channels=1)
    epochs = 12
    out = tmp_path / "killed"
    proc = subprocess.Popen(_medsynth(*_classifier_args(data, out, epochs)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: (unfinished_epoch(out) or 0) >= 2)
    stopped = unfinished_epoch(out)
    assert 2 <= stopped < epochs and not (out / "train_summary.json").exists()
    load_classifier(out)  # the best weights so far load

    again = subprocess.run(_medsynth(*_classifier_args(data, out, epochs)), capture_output=True, text=True)
    assert again.returncode == 2 and "stopped after epoch" in again.stderr and "--resume" in again.stderr

    resumed = subprocess.run(_medsynth(*_classifier_args(data, out, epochs), "--resume", "--json"),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["epochs_run"] == epochs and summary["resumed_at_epochs"][0] >= stopped
    assert not (out / "state").exists()  # finished: the training state is removed
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))  # no epoch lost or trained twice

    from medsynth.cli import main

    reference = tmp_path / "whole"  # the same run, never interrupted
    assert main(_classifier_args(data, reference, epochs)) == 0
    ref_rows = list(csv.DictReader(open(reference / "train_log.csv")))
    for mine, ref in zip(rows, ref_rows):
        assert float(mine["train_loss"]) == pytest.approx(float(ref["train_loss"]), rel=1e-4, abs=1e-6)
        assert mine["val_macro_f1"] == ref["val_macro_f1"]
    ours, theirs = load_classifier(out), load_classifier(reference)
    for (name, a), b in zip(ours.model.state_dict().items(), theirs.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name

    with pytest.raises(MedsynthError, match="finished .*nothing to resume"):
        _run_raising([*_classifier_args(data, out, epochs), "--resume"])
    changed = _classifier_args(data, tmp_path / "other", 3)
    assert main([*changed, "--max-minutes", "0.000001"]) == 0  # stopped by its time budget: resumable
    with pytest.raises(MedsynthError, match="--lr was 0.01 .* a resumed run keeps its recipe"):
        _run_raising([*changed, "--resume", "--lr", "0.5"])
    assert main([*changed, "--resume", "--max-minutes", "100"]) == 0  # a time budget may change
    assert json.loads((tmp_path / "other" / "args.json").read_text())["resumed_at_epochs"] == [1]


def _run_raising(argv: list[str]) -> None:
    """Run a CLI command in-process and let its MedsynthError through (``main`` turns it into exit 2)."""
    from medsynth.cli import build_parser

    args = build_parser().parse_args(argv)
    args.argv = argv
    args.func(args)


def test_sigkill_during_train_diffusion_then_resume(tmp_path):
    """A real train-diffusion process killed mid-run leaves a loadable pipeline, and --resume continues from
    its last checkpoint (at most --checkpoint-every steps lost) to the end."""
    import csv
    import subprocess

    from conftest import make_dataset
    from medsynth.diffusion import load_pipeline

    data = make_dataset(tmp_path / "ct", ["covid", "non_covid"], n_per_class=5, size=24, channels=1)
    out = tmp_path / "run"
    args = ["train-diffusion", "--domain", "covid_ct", "--data", str(data), "--out", str(out), "--preset", "tiny",
            "--resolution", "16", "--batch-size", "4", "--max-steps", "30", "--warmup-steps", "1", "--log-every", "1",
            "--sample-every", "1000", "--checkpoint-every", "5", "--device", "cpu"]

    def checkpointed() -> bool:
        return any((p / "state.json").is_file() for p in (out / "checkpoints").glob("step_*")) and \
            (out / "model_index.json").is_file()

    proc = subprocess.Popen(_medsynth(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, checkpointed)
    load_pipeline(out)  # the pipeline of the last checkpoint loads
    last = max(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*") if (p / "state.json").is_file())
    assert 5 <= last < 30

    resumed = subprocess.run(_medsynth(*args, "--resume", "--json"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 30 and summary["resumed_at_steps"][0] >= last
    steps = [int(r["step"]) for r in csv.DictReader(open(out / "loss.csv"))]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # no step logged twice
    assert load_pipeline(out)(["covid"], 2).shape == (1, 16, 16, 1)


@pytest.mark.parametrize("command", ["train-classifier", "train-diffusion", "generate", "tstr"])
def test_an_unwritable_output_is_a_clear_error_before_any_work(tmp_path, command, capsys):
    """An --out that cannot be created (under a file, or in /proc, which even root cannot write) is refused
    at once, naming the folder."""
    from medsynth.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    data = tmp_path / "missing_data"  # never reached: the output is checked first
    for out in (blocker / "out", "/proc/medsynth-out"):
        if command == "train-classifier":
            argv = [command, "--domain", "covid_ct", "--data", str(data), "--out", str(out), "--device", "cpu"]
        elif command == "train-diffusion":
            argv = [command, "--domain", "covid_ct", "--data", str(data), "--out", str(out), "--device", "cpu"]
        elif command == "generate":
            argv = [command, "--checkpoint", str(tmp_path / "no_such_checkpoint"), "--class", "covid", "--n", "1",
                    "--out", str(out)]
        else:
            argv = [command, "--domain", "covid_ct", "--real-train", str(data), "--real-test", str(data),
                    "--synthetic", str(data), "--out", str(out)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"--out {out}: cannot write there" in err and "Traceback" not in err, err


def test_a_full_disk_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    import shutil as shutil_module
    from collections import namedtuple

    from medsynth import atomic

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(MedsynthError, match=r"--out .*: only 1 MB free on its disk, and this run needs about 100 MB"):
        atomic.check_writable(tmp_path / "out", need_mb=100)
