"""Training jobs for the app's Train tab: build the CLI command, run it in the background, watch it.

The app stays a thin layer over this module. A job is the ``medsynth train-diffusion`` or
``medsynth train-classifier`` command run as a subprocess (under ``accelerate launch`` when GPUs
are asked for), so a training run from the UI is exactly the run the CLI would do, and a crash in
it cannot take the web server down. :class:`JobManager` runs one job at a time, writes its output
to ``<jobs_dir>/<job id>/log.txt`` and reports state, the end of the log and the loss curve read
from the files the run writes into its output folder (``loss.csv`` or ``train_log.csv``).

Training data must lie under one folder the operator chose (``MEDSYNTH_DATA_ROOT``), so a UI user
cannot point a job at arbitrary paths on the server. Process control uses process groups: POSIX only.
"""

from __future__ import annotations

import csv
import math
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .domains import DOMAINS
from .errors import MedsynthError

TRAINING_KINDS = ("diffusion", "classifier")  # the Train tab's jobs (build_command)
KINDS = (*TRAINING_KINDS, "tstr")  # every job the manager runs; tstr: the Experiment tab's run of the experiment
DATA_ROOT_ENV = "MEDSYNTH_DATA_ROOT"

# What each kind of run logs: file in its output folder, x column, y columns (one curve each).
_LOSS_FILES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "diffusion": ("loss.csv", "step", ("loss",)),
    "classifier": ("train_log.csv", "epoch", ("train_loss", "val_macro_f1")),
}
_TAIL_BLOCK = 8192
_TAIL_MAX_BYTES = 256 * 1024  # a progress bar redrawn with \r for hours is one very long "line"


def gpu_count() -> int:
    """Number of CUDA GPUs this process can see; 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def describe_gpus() -> list[str]:
    """One line per visible GPU (index, name, memory), for the UI to show what a job can use."""
    import torch

    lines = []
    for i in range(gpu_count()):
        props = torch.cuda.get_device_properties(i)
        lines.append(f"cuda:{i}: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    return lines


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise MedsynthError(f"{name} must be a whole number of at least 1, got {value!r}")


def _check_gpus(gpus: int | None) -> None:
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0):
        raise MedsynthError(f"gpus must be 0 (CPU or the default device) or a positive number, got {gpus!r}")
    if gpus:
        available = gpu_count()
        if gpus > available:
            raise MedsynthError(f"{gpus} GPU(s) asked for, but {available} visible; choose at most {available}")


def _medsynth_command(args: list[str], gpus: int | None) -> list[str]:
    """``python -m medsynth ARGS``, under ``accelerate launch`` (``--multi_gpu`` from 2 on) when GPUs are asked for."""
    if not gpus:
        return [sys.executable, "-m", "medsynth", *args]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus)]
    if gpus > 1:
        launch.append("--multi_gpu")
    return [*launch, "-m", "medsynth", *args]


def build_command(
    kind: str,
    domain: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    base_checkpoint: str | os.PathLike | None = None,
    gpus: int | None = None,
    resume: bool = False,
) -> list[str]:
    """The argv of a training run, checked before anything starts.

    ``kind`` is "diffusion" (``--max-steps`` from ``steps``) or "classifier" (``--epochs``).
    Options left as None keep the CLI's defaults. ``gpus`` >= 1 runs the command under
    ``accelerate launch --num_processes GPUS`` (``--multi_gpu`` from 2 on); 0 or None runs it
    directly. ``base_checkpoint`` fine-tunes from that checkpoint (``--init-from``); for diffusion,
    a base equal to ``out`` continues that run instead (``--resume``). ``resume=True`` continues the
    interrupted run in ``out`` (see :func:`interrupted_run`) with ``--resume``. Every problem is a
    :class:`MedsynthError` whose message says what to change.
    """
    if kind not in TRAINING_KINDS:
        raise MedsynthError(f"unknown training kind {kind!r}; expected one of: {', '.join(TRAINING_KINDS)}")
    if domain not in DOMAINS:
        raise MedsynthError(f"unknown domain {domain!r}; expected one of: {', '.join(DOMAINS)}")
    if kind == "classifier" and steps is not None:
        raise MedsynthError("steps applies to diffusion training; a classifier is trained for a number of epochs")
    if kind == "diffusion" and epochs is not None:
        raise MedsynthError("epochs applies to classifier training; diffusion is trained for a number of steps")
    _check_positive("steps", steps)
    _check_positive("epochs", epochs)
    _check_positive("batch size", batch_size)
    _check_gpus(gpus)

    args = ["train-diffusion" if kind == "diffusion" else "train-classifier",
            "--domain", domain, "--data", str(data), "--out", str(out)]
    if steps is not None:
        args += ["--max-steps", str(steps)]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    if batch_size is not None:
        args += ["--batch-size", str(batch_size)]
    if resume:
        args.append("--resume")  # the run keeps the base it recorded
    elif base_checkpoint is not None:
        if Path(base_checkpoint).resolve() == Path(out).resolve():
            if kind != "diffusion":
                raise MedsynthError("a classifier run cannot continue in place; choose a new output folder")
            args.append("--resume")
        else:
            args += ["--init-from", str(base_checkpoint)]

    return _medsynth_command(args, gpus)


def build_tstr_command(
    domain: str,
    real_train: str | os.PathLike,
    real_test: str | os.PathLike,
    out: str | os.PathLike,
    *,
    diffusion: str | os.PathLike,
    preset: str = "cpu",
    train_sets: tuple[str, ...] = ("real", "synthetic", "mixed"),
    fractions: tuple[float, ...] = (1.0,),
    seeds: tuple[int, ...] = (0,),
    epochs: int | None = None,
    synthetic_per_class: int | None = None,
    gpus: int | None = None,
) -> list[str]:
    """The argv of a ``medsynth tstr`` run (the Experiment tab's job), checked before anything starts.

    The synthetic set is drawn from ``diffusion`` with the ``tstr`` defaults (the shipped recipe);
    ``gpus`` >= 1 runs under ``accelerate launch``, which shares the cells out across the GPUs.
    Rerunning the same command with the same ``out`` resumes the run. Every problem is a
    :class:`MedsynthError` whose message says what to change.
    """
    from .tstr import PRESETS, TRAIN_SETS

    if not train_sets or any(t not in TRAIN_SETS for t in train_sets):
        raise MedsynthError(f"training sets must be some of {', '.join(TRAIN_SETS)}; got {list(train_sets)}")
    if domain not in DOMAINS:
        raise MedsynthError(f"unknown domain {domain!r}; expected one of: {', '.join(DOMAINS)}")
    if preset not in PRESETS:
        raise MedsynthError(f"unknown preset {preset!r}; expected one of: {', '.join(PRESETS)}")
    if not fractions or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1
                            for f in fractions):
        raise MedsynthError(f"fractions must be numbers in (0, 1], e.g. 1.0,0.25,0.1; got {list(fractions)}")
    if not seeds or any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2**31 for x in seeds):
        raise MedsynthError(f"seeds must be whole numbers from 0 to 2**31 - 1, e.g. 0,1; got {list(seeds)}")
    _check_positive("epochs", epochs)
    _check_positive("synthetic images per class", synthetic_per_class)
    _check_gpus(gpus)
    args = ["tstr", "--domain", domain, "--real-train", str(real_train), "--real-test", str(real_test),
            "--diffusion", str(diffusion), "--out", str(out), "--preset", preset,
            "--train-sets", ",".join(t for t in TRAIN_SETS if t in train_sets),
            "--fractions", ",".join(f"{float(f):g}" for f in fractions), "--seeds", ",".join(str(x) for x in seeds)]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    if synthetic_per_class is not None:
        args += ["--synthetic-per-class", str(synthetic_per_class)]
    return _medsynth_command(args, gpus)


def interrupted_run(kind: str, out: str | os.PathLike) -> str | None:
    """How far the run in ``out`` got if it stopped before finishing (killed, crashed, cancelled or out of
    time) and can be continued with ``--resume``, e.g. "stopped after epoch 3"; None otherwise.

    Reads only the files the run writes: a classifier's ``state/state.json``, a diffusion run's latest
    ``checkpoints/step_*/state.json`` beyond the steps its ``train_summary.json`` (if any) finished.
    """
    import json

    out = Path(out)
    try:
        if kind == "classifier":
            state = out / "state" / "state.json"
            return f"stopped after epoch {json.loads(state.read_text())['epoch']}" if state.is_file() else None
        if kind == "diffusion":
            steps = [int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*")
                     if (p / "state.json").is_file()]
            if not steps:
                return None
            summary = out / "train_summary.json"
            finished = json.loads(summary.read_text()).get("steps", 0) if summary.is_file() else 0
            return f"stopped at step {max(steps)}" if max(steps) > finished else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def describe_exit(returncode: int | None) -> str:
    """A job's end in words: "" while running or after success, "exit code 3", or "killed by SIGKILL"."""
    if returncode in (None, 0):
        return ""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        why = " (out of memory, or stopped from outside the app)" if name == "SIGKILL" else ""
        return f"killed by {name}{why}"
    return f"exit code {returncode}"


def default_data_root() -> Path | None:
    """The folder UI training data must lie under (env ``MEDSYNTH_DATA_ROOT``); None: UI training is off."""
    value = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(value).expanduser() if value else None


def resolve_data_dir(user_path: str | os.PathLike, data_root: str | os.PathLike) -> Path:
    """The existing folder ``user_path`` names, made absolute, if it lies inside ``data_root``.

    A relative path is taken relative to ``data_root``. Symbolic links and ``..`` are resolved
    before the check, so neither can lead outside the root. Raises :class:`MedsynthError` otherwise.
    """
    try:
        root = Path(data_root).expanduser().resolve(strict=True)
    except (OSError, ValueError):
        raise MedsynthError(
            f"the data root {data_root} does not exist; ask the operator to fix {DATA_ROOT_ENV}"
        ) from None
    if not root.is_dir():
        raise MedsynthError(f"the data root {root} is not a folder; ask the operator to fix {DATA_ROOT_ENV}")
    text = str(user_path).strip()
    if not text:
        raise MedsynthError(f"no data folder given; enter a folder inside {root}")
    try:
        path = (root / text).resolve()  # an absolute `text` replaces `root` here
    except (OSError, ValueError) as exc:
        raise MedsynthError(f"data folder {text!r} is not a valid path ({exc})") from None
    if not path.is_relative_to(root):
        raise MedsynthError(f"data folder {text!r} is outside the data root {root}; training data must lie inside it")
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise MedsynthError(f"data folder {path} {what}; enter a folder with one sub-folder per class inside {root}")
    return path


def read_log_tail(path: str | os.PathLike, n_lines: int = 40) -> str:
    """The last ``n_lines`` lines of a log, reading only the end of the file.

    A progress bar that redraws itself with carriage returns is shown as its latest state: of each
    line only the part after the last ``\\r`` is kept. At most 256 KiB are read. "" if no file.
    """
    if n_lines < 1:
        return ""
    try:
        with open(path, "rb") as fh:
            end = pos = fh.seek(0, os.SEEK_END)
            data = b""
            while pos > 0 and data.count(b"\n") <= n_lines and end - pos < _TAIL_MAX_BYTES:
                size = min(_TAIL_BLOCK, pos, _TAIL_MAX_BYTES - (end - pos))
                pos -= size
                fh.seek(pos)
                data = fh.read(size) + data
    except FileNotFoundError:
        return ""
    lines = data.decode("utf-8", errors="replace").split("\n")
    if pos > 0 and len(lines) > 1:
        lines = lines[1:]  # starts mid-line
    if lines[-1] == "":
        lines.pop()  # the log ends with a newline
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines[-n_lines:])


def read_loss_points(kind: str, out_dir: str | os.PathLike) -> list[dict]:
    """Loss-curve points of a run's output folder, for a line plot: ``{"x", "y", "series"}`` dicts.

    Diffusion: x = step, series "loss" from ``loss.csv``. Classifier: x = epoch, series
    "train_loss" and (when validated) "val_macro_f1" from ``train_log.csv``. tstr: x = finished
    cell, y = its test accuracy, series = its training set. A missing file gives
    []; a last line without its newline (still being written), rows with missing fields and
    empty or non-finite values are skipped, so a plot of a running job never fails.
    """
    if kind not in KINDS:
        raise MedsynthError(f"unknown training kind {kind!r}; expected one of: {', '.join(KINDS)}")
    if kind == "tstr":  # an experiment: each finished cell's test accuracy, by training set
        from .tstr import progress_points

        return progress_points(out_dir)[2]
    name, x_col, y_cols = _LOSS_FILES[kind]
    try:
        text = (Path(out_dir) / name).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return []
    lines = text.split("\n")[:-1]  # complete lines only: the last element follows the last newline
    rows = list(csv.reader(lines))
    if not rows or x_col not in rows[0]:
        return []
    header = rows[0]
    x_index = header.index(x_col)
    y_indices = [(col, header.index(col)) for col in y_cols if col in header]
    points = []
    for row in rows[1:]:
        if len(row) != len(header):
            continue
        try:
            x = int(float(row[x_index]))
        except ValueError:
            continue
        for col, i in y_indices:
            try:
                y = float(row[i])
            except ValueError:
                continue
            if math.isfinite(y):
                points.append({"x": x, "y": y, "series": col})
    return points


@dataclass
class Job:
    """One training subprocess: its command, files, and a thread that reaps it and notes the end time."""

    job_id: str
    kind: str
    command: list[str]
    out_dir: str
    log_path: Path
    started: float
    process: subprocess.Popen
    ended: float | None = None
    cancelled: bool = False
    watcher: threading.Thread | None = field(default=None, repr=False)

    @property
    def state(self) -> str:
        """One of running, cancelled (ended after :meth:`JobManager.cancel`), finished (exit 0) or failed."""
        code = self.process.poll()
        if code is None:
            return "running"
        if self.cancelled:
            return "cancelled"
        return "finished" if code == 0 else "failed"


class JobManager:
    """Runs at most one training job at a time and reports on the latest one; safe to share between threads.

    ``cancel_timeout`` is how long a cancelled job gets to exit after SIGTERM before SIGKILL.
    """

    def __init__(self, jobs_dir: str | os.PathLike, cancel_timeout: float = 10.0):
        self.jobs_dir = Path(jobs_dir)
        self.cancel_timeout = cancel_timeout
        self._lock = threading.Lock()
        self._job: Job | None = None

    @property
    def job(self) -> Job | None:
        """The running or most recent job; None before the first."""
        with self._lock:
            return self._job

    def start(self, cmd: list[str], out_dir: str | os.PathLike, kind: str) -> Job:
        """Start ``cmd`` (from :func:`build_command`) in the background, its output going to the job's log.

        The job runs in a new session (its own process group) so that :meth:`cancel` can stop it and
        every process it started. Refused with :class:`MedsynthError` while another job runs.
        """
        if kind not in KINDS:
            raise MedsynthError(f"unknown training kind {kind!r}; expected one of: {', '.join(KINDS)}")
        if not cmd:
            raise MedsynthError("empty command")
        with self._lock:
            running = self._job
            if running is not None and running.state == "running":
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(running.started))
                what = "an experiment (Experiment tab)" if running.kind == "tstr" else "a training job (Train tab)"
                raise MedsynthError(
                    f"{what} is already running (started {when}, job {running.job_id}); one job runs at a time: "
                    "cancel it or wait"
                )
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{secrets.token_hex(3)}"
            log_path = self.jobs_dir / job_id / "log.txt"
            log_path.parent.mkdir(parents=True)
            with open(log_path, "wb") as log:
                log.write(f"$ {shlex.join(cmd)}\n".encode())
                log.flush()
                try:
                    process = subprocess.Popen(
                        cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                        env=os.environ | {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"},
                    )
                except OSError as exc:
                    raise MedsynthError(f"could not start {cmd[0]}: {exc}") from None
            job = Job(job_id=job_id, kind=kind, command=list(cmd), out_dir=str(out_dir), log_path=log_path,
                      started=time.time(), process=process)
            job.watcher = threading.Thread(target=self._watch, args=(job,), name=f"medsynth-job-{job_id}", daemon=True)
            job.watcher.start()
            self._job = job
        return job

    @staticmethod
    def _watch(job: Job) -> None:
        job.process.wait()
        job.ended = time.time()

    def status(self) -> dict:
        """State of the latest job as plain values for the UI; state "idle" and None elsewhere before any job."""
        job = self.job
        if job is None:
            return {"state": "idle", "job_id": None, "kind": None, "command": None, "started": None,
                    "elapsed_seconds": None, "returncode": None, "out_dir": None, "log_path": None}
        state = job.state
        end = job.ended if job.ended is not None else time.time()
        return {"state": state, "job_id": job.job_id, "kind": job.kind, "command": shlex.join(job.command),
                "started": job.started, "elapsed_seconds": round(end - job.started, 1),
                "returncode": job.process.returncode, "out_dir": job.out_dir, "log_path": str(job.log_path)}

    def tail(self, n_lines: int = 40) -> str:
        """The last lines of the latest job's log (see :func:`read_log_tail`); "" before any job."""
        job = self.job
        return read_log_tail(job.log_path, n_lines) if job is not None else ""

    def loss_points(self) -> list[dict]:
        """The latest job's loss curve so far (see :func:`read_loss_points`); [] before any job."""
        job = self.job
        return read_loss_points(job.kind, job.out_dir) if job is not None else []

    def wait(self, timeout: float | None = None) -> str:
        """Block until the latest job has ended or ``timeout`` seconds passed; return its state."""
        job = self.job
        if job is None:
            return "idle"
        job.watcher.join(timeout)
        return job.state

    def cancel(self, kind: str | None = None) -> bool:
        """Stop the running job and every process it started; False if none was running (or, with
        ``kind``, if the running job is of another kind: checked under the lock, so no race).

        SIGTERM goes to the job's whole process group; whatever has not exited after
        ``cancel_timeout`` seconds gets SIGKILL. Blocks until the job's main process has ended.
        """
        with self._lock:
            job = self._job
            if job is None or job.state != "running" or (kind is not None and job.kind != kind):
                return False
            job.cancelled = True
        pgid = job.process.pid  # start_new_session: the job leads its own process group
        _signal_group(pgid, signal.SIGTERM)
        try:
            job.process.wait(timeout=self.cancel_timeout)
        except subprocess.TimeoutExpired:
            pass
        # Also catches group members that outlived the main process (e.g. ones that ignore SIGTERM). An
        # emptied group's id is a PID, which Linux hands out again only after wrapping around.
        _signal_group(pgid, signal.SIGKILL)
        job.process.wait()
        return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the group has already gone
        pass
