"""What every tab of the app shares: the checked number fields, the error wrapper, the line-plot frames,
the ZeroGPU decorator, and ``AppContext`` (the store, the job manager and the folders of one app)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from .. import service
from ..domains import get_domain
from ..errors import MedsynthError

DISCLAIMER = "**Research use only. medsynth is not a medical device; do not use it for diagnosis or treatment.**"
HEAVY = "heavy"  # one shared concurrency slot for the long model work (generate, explain) on a small CPU
QUICK = "quick"  # classify's own slot: a 0.3-s answer never waits behind a 16-image generation
TRAIN_SERIES = ("loss", "train_loss", "val_macro_f1")  # jobs.read_loss_points: diffusion; classifier
EXPERIMENT_SERIES = ("real", "synthetic", "mixed")  # tstr.progress_points: each finished cell's training set


@dataclass
class AppContext:
    """One app's state, shared by its tabs."""

    store: service.ModelStore
    root: Path  # the folder of app.py: examples/ and benchmarks/results/ live beside it
    data_root: Path | None
    training_enabled: bool
    work_dir: Path  # private (0700), this process only
    manager: object  # jobs.JobManager
    downloads: Path  # zips and sent images: pruned after an hour (never the jobs' logs)
    models_dir: Path
    default_domain: str
    default_kind: str
    results_roots: list[Path] = field(default_factory=list)

    def check_training_allowed(self) -> None:
        if in_public_space():
            raise MedsynthError("training is disabled in the public Space; run medsynth locally to train")
        if self.data_root is None:
            raise MedsynthError("training from the app needs a data root: start it with MEDSYNTH_DATA_ROOT=/path/to/data")


#: How the model dropdowns name the shipped folders (the value stays the folder name, for the API).
SHIPPED_LABELS = {"diffusion": "shipped", "classifier": "shipped (real-trained)",
                  "classifier_synthetic": "shipped (synthetic-only)"}


def model_choices(names) -> list[tuple[str, str]]:
    """Dropdown choices (label, value): the shipped models are called "shipped", yours by their names."""
    return [(SHIPPED_LABELS.get(n, n), n) for n in names]


def class_choices(domain):
    return ["all classes", *get_domain(domain).classes] if domain else ["all classes"]


def curve(points: list[dict] | None, series: tuple[str, ...]) -> pd.DataFrame:
    """Line-plot data with fixed column types (x, y numbers; series text) and one empty (NaN) row per series.

    gradio's LinePlot fixes its colour scale to the series present in the first frame it draws; a frame
    without them (an idle job) drew later lines in no colour at all. The NaN rows keep every series in the
    scale and draw nothing."""
    frame = pd.DataFrame([*(points or []), *({"x": np.nan, "y": np.nan, "series": s} for s in series)],
                         columns=["x", "y", "series"])
    return frame.astype({"x": "float64", "y": "float64", "series": "str"})


NO_BASE = "none (ImageNet / from scratch)"


def checked_number(component, payload):
    """A number from the page or an API client, checked with the field's own label (a client can send
    text, NaN or a value beyond the slider): gradio's own check raises a bare TypeError or says "Value"."""
    import math

    name = component.label or "number"
    if payload is None:
        return None  # the callback says which field is empty
    if isinstance(payload, bool) or not isinstance(payload, (int, float)):
        try:
            payload = float(str(payload).strip())
        except ValueError:
            raise gr.Error(f"{name} must be a number, got {str(payload)[:40]!r}") from None
    try:
        payload = float(payload) if isinstance(payload, int) and abs(payload) > 2**53 else payload
    except OverflowError:
        raise gr.Error(f"{name} is far too large") from None
    if not math.isfinite(payload):
        raise gr.Error(f"{name} must be a finite number, got {payload!r}")
    if component.minimum is not None and payload < component.minimum:
        raise gr.Error(f"{name} must be at least {component.minimum:g}, got {payload:g}")
    if component.maximum is not None and payload > component.maximum:
        raise gr.Error(f"{name} must be at most {component.maximum:g}, got {payload:g}")
    if component.precision == 0 and not float(payload).is_integer():
        raise gr.Error(f"{name} must be a whole number, got {payload:g}")
    return gr.Number.round_to_precision(payload, component.precision)


def with_checks(component):
    """The component's input runs through ``checked_number`` (set on the instance: a subclass of a gradio
    component would make gradio write a type-stub file beside this one)."""
    component.preprocess = lambda payload: checked_number(component, payload)
    return component


def NumberField(*args, **kwargs) -> gr.Number:  # noqa: N802 - stands where gr.Number stood
    """gr.Number whose bad input (from the page or an API client) gets a message naming the field."""
    return with_checks(gr.Number(*args, **kwargs))


def SliderField(*args, **kwargs) -> gr.Slider:  # noqa: N802
    """gr.Slider whose bad input (an API client can send anything) gets a message naming the field."""
    return with_checks(gr.Slider(*args, **kwargs))


def example_class(path: Path) -> str:
    """An example's true class, from its file name (``<class>_<number>.jpg``)."""
    return path.stem.rsplit("_", 1)[0]


def in_public_space() -> bool:
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("MEDSYNTH_SPACE") == "1"


try:  # Hugging Face ZeroGPU Spaces: the model calls borrow a GPU per call; elsewhere nothing changes
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn):
        return fn


def user_error(fn):
    """Show MedsynthError (bad file, unknown class, missing model) as a UI error, not a stack trace."""
    import functools
    import inspect

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except MedsynthError as exc:
                raise gr.Error(str(exc)) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MedsynthError as exc:
            raise gr.Error(str(exc)) from None
    return wrapper


def prune(folder: Path, max_age_s: float = 3600) -> None:
    """Delete generated files older than an hour: downloads must not fill the disk of a long-running app."""
    now = time.time()
    for item in folder.iterdir():
        try:
            if now - item.stat().st_mtime > max_age_s:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        except OSError:
            pass
