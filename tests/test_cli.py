"""Training a tiny classifier and the command-line contract of docs/cli.md (evaluate, classify, errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsynth.classify import load_classifier
from medsynth.cli import main

from conftest import TINY_ARCH, make_dataset

RECORD_KEYS = ["domain", "n", "accuracy", "macro_f1", "classes", "per_class", "confusion_matrix", "seconds"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    return subprocess.run([sys.executable, "-m", "medsynth", *args], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)


def test_training_writes_checkpoint_card_and_logs(trained_tiny):
    out, _ = trained_tiny
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "train_log.csv", "args.json", "split.json",
            "train_summary.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == TINY_ARCH and config["classes"] == ["benign", "early", "pre", "pro"]
    assert config["input_size"] == 32 and config["channels"] == 3 and len(config["mean"]) == 3
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "\nlicense: other\n" in card and "library_name: timm" in card
    assert "Research use only" in card
    log = (out / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,train_loss,val_accuracy,val_macro_f1") and len(log) == 5
    split = json.loads((out / "split.json").read_text())
    assert len(split["val"]) == 8 and not set(split["val"]) & set(split["train"])



def test_evaluate_json_contract(trained_tiny, capsys):
    out, data = trained_tiny
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(data), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(record) == RECORD_KEYS
    assert record["domain"] == "all_blood" and record["n"] == 40
    assert record["classes"] == ["benign", "early", "pre", "pro"]
    assert set(record["per_class"]["pre"]) == {"precision", "recall", "f1", "support"}
    cm = np.array(record["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == 40 and cm.sum(1).tolist() == [10, 10, 10, 10]
    assert record["accuracy"] == pytest.approx(np.trace(cm) / 40)
    assert record["accuracy"] >= 0.5  # the bright square is easy; chance is 0.25


def test_evaluate_text_and_plot(trained_tiny, tmp_path, capsys):
    out, data = trained_tiny
    plot = tmp_path / "cm.png"
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(data), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "confusion matrix" in text
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_round_trip_probabilities_identical(trained_tiny):
    out, data = trained_tiny
    a, b = load_classifier(out), load_classifier(out)
    images = [np.asarray(Image.open(p)) for p in sorted((data / "pre").glob("*.png"))[:4]]
    np.testing.assert_array_equal(a.predict_proba(images), b.predict_proba(images))


def test_unknown_class_folder_is_one_line_error(trained_tiny, tmp_path):
    out, _ = trained_tiny
    data = make_dataset(tmp_path / "eval", ["benign", "early"], n_per_class=2)
    (data / "leukaemia_other").mkdir()
    proc = run_cli("evaluate", "--checkpoint", str(out), "--data", str(data), "--json")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert "folder 'leukaemia_other' is not a known class" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_unreadable_image_is_named(trained_tiny, tmp_path, capsys):
    out, _ = trained_tiny
    data = make_dataset(tmp_path / "eval", ["benign", "early"], n_per_class=2)
    (data / "early" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(data), "--json"]) == 2
    assert "broken.jpg" in capsys.readouterr().err


def test_batch_classify_goes_on_past_a_bad_file(trained_tiny, tmp_path, capsys):
    out, data = trained_tiny
    good = [str(p) for p in sorted((data / "pro").glob("*.png"))[:2]]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    files = [good[0], str(tmp_path / "bad.png"), good[1]]
    assert main(["classify", "--checkpoint", str(out), *files, "--json"]) == 2
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.out.strip().splitlines()]
    assert [x["file"] for x in lines[:3]] == files  # a JSON line each, in order
    assert "class" in lines[0] and "class" in lines[2] and "not a recognised image" in lines[1]["error"]
    assert [r["file"] for r in lines[3]["results"]] == [good[0], good[1]] and len(lines[3]["errors"]) == 1
    assert "bad.png: not a recognised image" in captured.err and "1 of 3 files could not be read" in captured.err
    assert main(["classify", "--checkpoint", str(out), *files]) == 2  # plain output: the two readable files
    captured = capsys.readouterr()
    assert [line.split(":")[0] for line in captured.out.strip().splitlines()] == [good[0], good[1]]
    assert "Traceback" not in captured.err


def test_classify_json(trained_tiny, capsys):
    out, data = trained_tiny
    files = [str(p) for p in sorted((data / "pro").glob("*.png"))[:2]]
    assert main(["classify", "--checkpoint", str(out), *files, "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["file"] for r in record["results"]] == files
    for r in record["results"]:
        assert set(r["probabilities"]) == {"benign", "early", "pre", "pro"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["probability"] == max(r["probabilities"].values())
    assert main(["classify", "--checkpoint", str(out), files[0]]) == 0
    assert files[0] in capsys.readouterr().out


def test_one_epoch_cli_training_then_evaluate(tmp_path):
    """docs/cli.md's contract end to end through `python -m medsynth`: train one epoch, then evaluate --json."""
    data = make_dataset(tmp_path / "data", ["covid", "non_covid"], n_per_class=5, size=36, channels=1)
    out = tmp_path / "clf"
    proc = run_cli("train-classifier", "--domain", "covid_ct", "--data", str(data), "--out", str(out),
                   "--arch", TINY_ARCH, "--no-pretrained", "--epochs", "1", "--batch-size", "4",
                   "--image-size", "32", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["epochs_run"] == 1
    proc = run_cli("evaluate", "--checkpoint", str(out), "--data", str(data), "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(record) == RECORD_KEYS and record["n"] == 10 and record["classes"] == ["covid", "non_covid"]
    # A second run into the same folder must not silently replace the checkpoint.
    proc = run_cli("train-classifier", "--domain", "covid_ct", "--data", str(data), "--out", str(out))
    assert proc.returncode == 2 and "already holds a checkpoint; pass --overwrite" in proc.stderr


@pytest.mark.parametrize(
    "argv,message",
    [
        (["evaluate", "--data", "x"], "the following arguments are required: --checkpoint"),
        (["train-classifier", "--domain", "lungs", "--data", "x", "--out", "y"], "invalid choice: 'lungs'"),
        (["train-classifier", "--domain", "covid_ct", "--data", "x", "--out", "y", "--epochs", "0"], "must be at least 1"),
        (["classify", "--checkpoint", "nowhere", "a.png"], "nowhere: no such classifier checkpoint folder"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        code = main(argv)
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_train_data_errors(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", ["covid"], n_per_class=2)
    assert main(["train-classifier", "--domain", "covid_ct", "--data", str(data), "--out", str(tmp_path / "o"),
                 "--arch", TINY_ARCH]) == 2
    assert "class folder 'non_covid' is missing" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train-classifier", "evaluate", "classify", "split", "domains"])
def test_help_documents_every_option(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage: medsynth " + command in text
    if command == "train-classifier":
        for opt in ("--arch", "--epochs", "--batch-size", "--lr", "--image-size", "--seed", "--device",
                    "--num-workers", "--val-fraction"):
            assert opt in text


def test_split_command(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", ["covid", "non_covid"], n_per_class=10, channels=1)
    assert main(["split", "--domain", "covid_ct", "--data", str(data), "--out", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s" / "val" / "covid").iterdir())) == 2
    assert len(list((tmp_path / "s" / "train" / "non_covid").iterdir())) == 8
    assert main(["split", "--domain", "covid_ct", "--data", str(data), "--out", str(tmp_path / "s")]) == 2


def test_two_processes_under_torchrun(tmp_path):
    """The multi-GPU code paths (sharding, gather, the shared stop trigger, rank-0 output) on two CPU processes."""
    data = make_dataset(tmp_path / "data", ["covid", "non_covid"], n_per_class=6, size=36, channels=1)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "medsynth"]
    proc = subprocess.run(torchrun + ["train-classifier", "--domain", "covid_ct", "--data", str(data), "--out",
                                      str(tmp_path / "clf"), "--arch", TINY_ARCH, "--no-pretrained", "--epochs", "3",
                                      "--batch-size", "4", "--image-size", "32", "--max-minutes", "0.000001", "--json"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 only
    summary = json.loads(lines[0])
    assert summary["epochs_run"] == 1 and "2 processes" in summary["hardware"]
    assert (tmp_path / "clf" / "model.safetensors").exists()


def test_help_and_argument_errors_import_no_heavy_library():
    """--help and a bad option answer without torch, timm, diffusers or gradio (the CLI's start-up time)."""
    import subprocess
    import sys

    probe = ("import sys, runpy\n"
             "sys.argv = ['medsynth'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('medsynth', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "heavy = sorted(m for m in ('torch', 'timm', 'diffusers', 'gradio', 'sklearn') if m in sys.modules)\n"
             "print('HEAVY', heavy, 'EXIT', code)\n")
    for argv in (["--help"], ["generate", "--help"], ["train-classifier", "--help"], ["tstr", "--help"],
                 ["audit", "--help"], ["generate", "--steps", "x"]):
        out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
        last = out.stdout.strip().splitlines()[-1]
        assert last.startswith("HEAVY [] EXIT"), (argv, last, out.stderr[-500:])


@pytest.mark.parametrize("command,recipe", [("train-classifier", "ClassifierRecipe"), ("train-diffusion", "DiffusionRecipe"),
                                            ("train-upsampler", "UpsamplerRecipe")])
def test_every_recipe_field_is_one_option_and_every_option_a_field(command, recipe):
    """The training commands build their recipe from options named as its fields (recipes.recipe_options): a
    field without an option, or an option the recipe never receives, fails here."""
    import argparse
    from dataclasses import fields

    from medsynth import recipes
    from medsynth.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices[command]._actions} - {"help"}
    cli_only = {"json", "overwrite", "no_pretrained"}  # output form and folder handling, not the recipe
    names = {f.name for f in fields(getattr(recipes, recipe))}
    assert dests - cli_only <= names, f"options the recipe never receives: {sorted(dests - cli_only - names)}"
    missing = names - dests - set(recipes.NOT_ON_THE_COMMAND_LINE[recipe])
    assert not missing, f"recipe fields with no option: {sorted(missing)}"
