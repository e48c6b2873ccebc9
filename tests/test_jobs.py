"""Training jobs for the app: command building, data-folder checks, job lifecycle, log tail, loss curves."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from medsynth import jobs
from medsynth.errors import MedsynthError
from medsynth.jobs import JobManager, build_command, read_log_tail, read_loss_points, resolve_data_dir

from conftest import make_dataset

PY = sys.executable
# Prints "hello", then a number every 0.2 s for 20 s: a job that is still running when inspected.
LONG = [PY, "-c",
        "import time; print('hello', flush=True); [print(i, flush=True) or time.sleep(0.2) for i in range(100)]"]


@pytest.fixture
def manager(tmp_path):
    mgr = JobManager(tmp_path / "jobs", cancel_timeout=5.0)
    yield mgr
    mgr.cancel()  # never leave a test's process behind


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """True for a running process; a zombie (dead, not yet reaped by its new parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- build_command -------------------------------------------------------------------------------


def test_build_command_without_gpus():
    cmd = build_command("diffusion", "covid_ct", "/d", "/o", steps=100, batch_size=8)
    assert cmd == [PY, "-m", "medsynth", "train-diffusion", "--domain", "covid_ct", "--data", "/d", "--out", "/o",
                   "--max-steps", "100", "--batch-size", "8"]
    assert build_command("diffusion", "covid_ct", "/d", "/o", steps=100, batch_size=8, gpus=0) == cmd
    cmd = build_command("classifier", "all_blood", Path("/d"), Path("/o"), epochs=3)
    assert cmd == [PY, "-m", "medsynth", "train-classifier", "--domain", "all_blood", "--data", "/d", "--out", "/o",
                   "--epochs", "3"]


def test_build_command_with_gpus(monkeypatch):
    monkeypatch.setattr(jobs, "gpu_count", lambda: 2)
    tail = ["-m", "medsynth", "train-classifier", "--domain", "brain_mri", "--data", "/d", "--out", "/o",
            "--batch-size", "4"]
    launch = [PY, "-m", "accelerate.commands.launch", "--num_processes"]
    assert build_command("classifier", "brain_mri", "/d", "/o", batch_size=4, gpus=1) == [*launch, "1", *tail]
    assert build_command("classifier", "brain_mri", "/d", "/o", batch_size=4, gpus=2) == [*launch, "2", "--multi_gpu",
                                                                                          *tail]
    with pytest.raises(MedsynthError, match="3 GPU"):
        build_command("classifier", "brain_mri", "/d", "/o", gpus=3)


def test_build_command_fine_tunes_from_a_base(tmp_path):
    for kind in ("diffusion", "classifier"):
        cmd = build_command(kind, "covid_ct", "/d", tmp_path / "new", base_checkpoint="/ckpt/base")
        assert cmd[-2:] == ["--init-from", "/ckpt/base"]


def test_build_command_resume_when_base_is_out(tmp_path):
    cmd = build_command("diffusion", "covid_ct", "/d", tmp_path / "run", steps=5,
                        base_checkpoint=str(tmp_path / "x" / ".." / "run"))
    assert cmd[-1] == "--resume"


def test_build_tstr_command(monkeypatch):
    cmd = jobs.build_tstr_command("brain_mri", "/tr", "/te", "/runs/x", diffusion="/ckpt/diffusion",
                                  train_sets=("mixed", "real"), fractions=(1.0, 0.25), seeds=(0, 1), epochs=8,
                                  synthetic_per_class=200)
    assert cmd == [PY, "-m", "medsynth", "tstr", "--domain", "brain_mri", "--real-train", "/tr", "--real-test", "/te",
                   "--diffusion", "/ckpt/diffusion", "--out", "/runs/x", "--preset", "cpu", "--train-sets",
                   "real,mixed", "--fractions", "1,0.25", "--seeds", "0,1", "--epochs", "8",
                   "--synthetic-per-class", "200"]
    monkeypatch.setattr(jobs, "gpu_count", lambda: 2)
    cmd = jobs.build_tstr_command("covid_ct", "/tr", "/te", "/o", diffusion="/d", gpus=2)
    assert cmd[:6] == [PY, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu"]
    for kwargs, message in [(dict(preset="gpu"), "unknown preset 'gpu'"), (dict(train_sets=("fake",)), "training sets"),
                            (dict(fractions=(0.0,)), "fractions must be"), (dict(seeds=(-1,)), "seeds must be"),
                            (dict(epochs=0), "epochs must be"), (dict(gpus=3), "3 GPU")]:
        with pytest.raises(MedsynthError, match=message):
            jobs.build_tstr_command("covid_ct", "/tr", "/te", "/o", diffusion="/d", **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="gan"), "unknown training kind 'gan'; expected one of: diffusion, classifier"),
    (dict(domain="knee_xray"), "unknown domain 'knee_xray'; expected one of: brain_mri, all_blood, covid_ct"),
    (dict(steps=0), "steps must be"),
    (dict(batch_size=-1), "batch size must be"),
    (dict(epochs=3), "epochs applies to classifier"),
    (dict(kind="classifier", steps=3), "steps applies to diffusion"),
    (dict(gpus=-1), "gpus must be"),
    (dict(kind="classifier", base_checkpoint="/o"), "cannot continue in place"),
])
def test_build_command_rejects(kwargs, message):
    args = dict(kind="diffusion", domain="covid_ct", data="/d", out="/o") | kwargs
    kind, domain, data, out = (args.pop(k) for k in ("kind", "domain", "data", "out"))
    with pytest.raises(MedsynthError, match=message):
        build_command(kind, domain, data, out, **args)


# --- data folder ---------------------------------------------------------------------------------


def test_resolve_data_dir(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "covid" / "train").mkdir(parents=True)
    (root / "file.txt").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link_out").symlink_to(outside)
    (root / "link_in").symlink_to(root / "covid")

    real = root.resolve()
    assert resolve_data_dir("covid/train", root) == real / "covid" / "train"
    assert resolve_data_dir(str(root / "covid"), root) == real / "covid"
    assert resolve_data_dir("link_in/train", root) == real / "covid" / "train"
    for escape in ("..", "../outside", "covid/../../outside", str(outside), "link_out", "/"):
        with pytest.raises(MedsynthError, match="outside the data root"):
            resolve_data_dir(escape, root)
    with pytest.raises(MedsynthError, match="does not exist"):
        resolve_data_dir("covid/val", root)
    with pytest.raises(MedsynthError, match="is not a folder"):
        resolve_data_dir("file.txt", root)
    with pytest.raises(MedsynthError, match="no data folder given"):
        resolve_data_dir(" ", root)
    with pytest.raises(MedsynthError, match="data root .* does not exist"):
        resolve_data_dir("covid", tmp_path / "missing")

    monkeypatch.delenv(jobs.DATA_ROOT_ENV, raising=False)
    assert jobs.default_data_root() is None
    monkeypatch.setenv(jobs.DATA_ROOT_ENV, str(root))
    assert jobs.default_data_root() == root


# --- job lifecycle -------------------------------------------------------------------------------


def test_idle_manager(manager):
    assert manager.status()["state"] == "idle"
    assert manager.tail() == "" and manager.loss_points() == [] and manager.wait(0) == "idle"
    assert manager.cancel() is False


def test_job_runs_to_completion(manager, tmp_path):
    script = ("import sys; print('start'); "
              "[sys.stdout.write(f'\\rprogress {i}/3') for i in range(4)]; print(); print('done')")
    job = manager.start([PY, "-c", script], tmp_path / "out", "diffusion")
    assert job.log_path == tmp_path / "jobs" / job.job_id / "log.txt"
    assert manager.wait(30) == "finished"
    status = manager.status()
    assert status["state"] == "finished" and status["returncode"] == 0 and status["job_id"] == job.job_id
    assert status["out_dir"] == str(tmp_path / "out") and status["log_path"] == str(job.log_path)
    assert status["command"].startswith(PY) and status["elapsed_seconds"] >= 0
    assert manager.tail(3) == "start\nprogress 3/3\ndone"  # only the latest state of the progress bar
    assert manager.tail(1) == "done"
    assert manager.start([PY, "-c", "pass"], tmp_path / "out", "diffusion").job_id != job.job_id  # free again


def test_failed_job(manager, tmp_path):
    manager.start([PY, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "out", "classifier")
    assert manager.wait(30) == "failed"
    assert manager.status()["returncode"] == 3 and manager.tail().endswith("boom")


def test_running_job_status_refusal_and_cancel(manager, tmp_path):
    job = manager.start(LONG, tmp_path / "out", "diffusion")
    _wait_for(lambda: "hello" in manager.tail().splitlines())  # not the "$ command" line
    status = manager.status()
    assert status["state"] == "running" and status["returncode"] is None and status["started"] <= time.time()
    with pytest.raises(MedsynthError, match=r"a training job \(Train tab\) is already running \(started .*\); one job "
                                            "runs at a time: cancel it or wait"):
        manager.start(LONG, tmp_path / "out2", "diffusion")
    assert manager.wait(0.1) == "running"
    assert manager.cancel(kind="tstr") is False and manager.status()["state"] == "running"  # not an experiment
    assert manager.cancel() is True
    status = manager.status()
    assert status["state"] == "cancelled" and status["returncode"] is not None and status["job_id"] == job.job_id
    assert manager.cancel() is False


def test_cancel_kills_the_process_tree(manager, tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = ("import subprocess, sys, time; child = subprocess.Popen(['sleep', '60']); "
              "open(sys.argv[1] + '.tmp', 'w').write(str(child.pid)); "
              "import os; os.replace(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(60)")
    manager.start([PY, "-c", parent, str(pid_file)], tmp_path / "out", "diffusion")
    _wait_for(pid_file.exists)
    child = int(pid_file.read_text())
    assert _alive(child)
    started = time.monotonic()
    assert manager.cancel() is True
    assert time.monotonic() - started < 5  # SIGTERM was enough
    assert manager.status()["state"] == "cancelled"
    _wait_for(lambda: not _alive(child), timeout=5)


def test_cancel_escalates_to_sigkill(tmp_path):
    manager = JobManager(tmp_path / "jobs", cancel_timeout=0.5)
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)")
    manager.start([PY, "-c", stubborn], tmp_path / "out", "classifier")
    _wait_for(lambda: "ready" in manager.tail().splitlines())
    assert manager.cancel() is True
    assert manager.status()["state"] == "cancelled" and manager.status()["returncode"] == -9


def test_start_errors(manager, tmp_path):
    with pytest.raises(MedsynthError, match="unknown training kind"):
        manager.start(LONG, tmp_path / "out", "gan")
    with pytest.raises(MedsynthError, match="could not start"):
        manager.start([str(tmp_path / "no-such-program")], tmp_path / "out", "diffusion")
    assert manager.status()["state"] == "idle"


# --- log tail ------------------------------------------------------------------------------------


def test_read_log_tail(tmp_path):
    log = tmp_path / "log.txt"
    assert read_log_tail(log) == ""
    lines = [f"line {i} " + "x" * 50 for i in range(2000)]  # several read blocks
    log.write_text("\n".join(lines) + "\n")
    assert read_log_tail(log, 3) == "\n".join(lines[-3:])
    assert read_log_tail(log, 500) == "\n".join(lines[-500:])
    assert read_log_tail(log, 0) == ""
    log.write_text("a\nb\r\n\rstep 1\rstep 2\rstep 3")  # CRLF line; a bar still being redrawn
    assert read_log_tail(log, 10) == "a\nb\nstep 3"
    log.write_text("first\n" + "".join(f"\rbar {i:07d}" for i in range(40000)))  # one 480 KB "line"
    assert read_log_tail(log, 5) == "bar 0039999"


# --- loss curves ---------------------------------------------------------------------------------


def test_loss_points_diffusion(tmp_path):
    assert read_loss_points("diffusion", tmp_path) == []
    (tmp_path / "loss.csv").write_text("step,lo")
    assert read_loss_points("diffusion", tmp_path) == []
    (tmp_path / "loss.csv").write_text("step,loss,lr,seconds\r\n10,0.5,1e-4,1.0\r\n20,0.25,1e-4,2.0\r\n30,0.1")
    assert read_loss_points("diffusion", tmp_path) == [{"x": 10, "y": 0.5, "series": "loss"},
                                                       {"x": 20, "y": 0.25, "series": "loss"}]


def test_loss_points_classifier(tmp_path):
    (tmp_path / "train_log.csv").write_text(
        "epoch,train_loss,val_accuracy,val_macro_f1,lr,seconds\n"
        "1,0.9,0.5,0.4,0.001,3.0\n"
        "2,0.7,0.6,,0.001,6.0\n"  # no validation value
        "3,nan,0.7,0.6,0.001,9.0\n"
        "4,0.5,0.8"  # half-written
    )
    assert read_loss_points("classifier", tmp_path) == [
        {"x": 1, "y": 0.9, "series": "train_loss"}, {"x": 1, "y": 0.4, "series": "val_macro_f1"},
        {"x": 2, "y": 0.7, "series": "train_loss"}, {"x": 3, "y": 0.6, "series": "val_macro_f1"},
    ]
    (tmp_path / "train_log.csv").write_text("epoch,train_loss,lr,seconds\n1,0.9,0.001,3.0\n")  # no validation
    assert read_loss_points("classifier", tmp_path) == [{"x": 1, "y": 0.9, "series": "train_loss"}]


# --- end to end ----------------------------------------------------------------------------------


# End to end: runs the real CLI (2 steps of the tiny diffusion preset at 16 px on CPU).
def test_real_diffusion_job(manager, tmp_path):
    data = make_dataset(tmp_path / "data", ["covid", "non_covid"], n_per_class=4, size=24, channels=1)
    out = tmp_path / "run"
    cmd = build_command("diffusion", "covid_ct", data, out, steps=2, batch_size=4)
    manager.start(cmd + ["--preset", "tiny", "--resolution", "16"], out, "diffusion")
    state = manager.wait(120)
    assert state == "finished", manager.tail()
    points = manager.loss_points()
    assert points and points[-1]["x"] == 2 and points[-1]["series"] == "loss"
    assert (out / "model_index.json").exists()


def test_interrupted_run_and_describe_exit(tmp_path):
    import json
    import signal

    assert jobs.interrupted_run("classifier", tmp_path / "nothing") is None
    (tmp_path / "c" / "state").mkdir(parents=True)
    (tmp_path / "c" / "state" / "state.json").write_text(json.dumps({"epoch": 3}))
    assert jobs.interrupted_run("classifier", tmp_path / "c") == "stopped after epoch 3"
    run = tmp_path / "d"
    for step in (250, 500):
        (run / "checkpoints" / f"step_{step:07d}").mkdir(parents=True)
        (run / "checkpoints" / f"step_{step:07d}" / "state.json").write_text("{}")
    assert jobs.interrupted_run("diffusion", run) == "stopped at step 500"
    (run / "train_summary.json").write_text(json.dumps({"steps": 500}))
    assert jobs.interrupted_run("diffusion", run) is None  # finished at its last checkpoint
    (run / "train_summary.json").write_text("{broken")
    assert jobs.interrupted_run("diffusion", run) is None
    assert jobs.describe_exit(None) == "" and jobs.describe_exit(0) == ""
    assert jobs.describe_exit(3) == "exit code 3"
    assert jobs.describe_exit(-signal.SIGKILL) == "killed by SIGKILL (out of memory, or stopped from outside the app)"
    assert jobs.describe_exit(-signal.SIGTERM) == "killed by SIGTERM"
    assert jobs.build_command("classifier", "covid_ct", "d", "o", resume=True)[-1] == "--resume"
