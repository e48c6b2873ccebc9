"""The training loop every step-based trainer shares (medsynth.training.loop): one learning-rate step per
optimiser step and different noise on every process, checked on two real CPU processes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from medsynth.training.loop import RANK_SEED_STRIDE, seed_step
from medsynth.training.schedule import warmup_cosine

from conftest import CT, make_dataset

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(args, tmp_path, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def test_seeds_differ_by_rank_and_rank_zero_keeps_the_single_process_seed():
    seed_step(7, 3, 0)
    a = torch.randn(4)
    torch.manual_seed(10)
    assert torch.equal(a, torch.randn(4))  # seed + step, as a one-process run always seeded
    seed_step(7, 3, 1)
    b = torch.randn(4)
    torch.manual_seed(10 + RANK_SEED_STRIDE)
    assert torch.equal(b, torch.randn(4)) and not torch.equal(a, b)


def test_two_processes_draw_different_noise(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent("""
        import torch
        from accelerate import Accelerator
        from medsynth.training.loop import seed_step
        acc = Accelerator(cpu=True)
        seed_step(0, 5, acc.process_index)
        noise = acc.gather(torch.randn(1, 8))
        if acc.is_main_process:
            print("SAME" if torch.equal(noise[0], noise[1]) else "DIFFERENT", flush=True)
        acc.wait_for_everyone()
        acc.end_training()  # tear the process group down before exit: gloo aborts a rank whose peer left first
    """))
    proc = _torchrun([str(script)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DIFFERENT" in proc.stdout


@pytest.mark.parametrize("command", ["train-diffusion", "train-upsampler"])
def test_two_processes_step_the_schedule_once_per_optimiser_step(tmp_path, command):
    data = make_dataset(tmp_path / "ct", CT, n_per_class=8, size=24, channels=1)
    model = (["--preset", "tiny", "--resolution", "16"] if command == "train-diffusion" else
             ["--base-resolution", "12", "--crop", "16", "--block-out-channels", "32,32"])
    proc = _torchrun(["-m", "medsynth", command, "--domain", "covid_ct", "--data", str(data), "--out",
                      str(tmp_path / "run"), *model, "--batch-size", "2", "--max-steps", "6", "--warmup-steps", "2",
                      "--lr", "0.001", "--log-every", "1", "--checkpoint-every", "100", "--sample-every", "100",
                      "--device", "cpu", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "run" / "loss.csv")))
    factor = warmup_cosine(2, 6)
    # after optimiser step k the learning rate is lr * factor(k): the schedule did not run twice as fast
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.001 * factor(k) for k in range(1, 7)], rel=1e-4)
    assert "2 processes" in (tmp_path / "run" / "README.md").read_text()
