"""medsynth's Gradio app: layout and event wiring only; the logic lives in medsynth.service and medsynth.jobs.

    python app.py            # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change)

Offline by default: analytics off and the Hugging Face hub offline unless the user opts in.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio builds anything: no outbound calls
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not os.environ.get("GRADIO_TEMP_DIR"):  # uploads in a private folder (0700) of this process, not /tmp/gradio
    import atexit as _atexit
    import shutil as _shutil
    import tempfile as _tempfile

    os.environ["GRADIO_TEMP_DIR"] = _tempfile.mkdtemp(prefix="medsynth-uploads-")
    _atexit.register(_shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], True)

import atexit  # noqa: E402
import json  # noqa: E402
import queue  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import pandas as pd  # noqa: E402

from medsynth import reports, service  # noqa: E402
from medsynth.recipes import DEFAULT_SAMPLING, SAMPLERS  # noqa: E402
from medsynth.domains import DOMAINS, get_domain  # noqa: E402
from medsynth.errors import ImageLoadError, MedsynthError  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent / "examples"
DISCLAIMER = "**Research use only. medsynth is not a medical device; do not use it for diagnosis or treatment.**"
HEAVY = "heavy"  # one shared concurrency slot for the long model work (generate, explain) on a small CPU
QUICK = "quick"  # classify's own slot: a 0.3-s answer never waits behind a 16-image generation
TRAIN_SERIES = ("loss", "train_loss", "val_macro_f1")  # jobs.read_loss_points: diffusion; classifier
EXPERIMENT_SERIES = ("real", "synthetic", "mixed")  # tstr.progress_points: each finished cell's training set


def curve(points: list[dict] | None, series: tuple[str, ...]) -> pd.DataFrame:
    """Line-plot data with fixed column types (x, y numbers; series text) and one empty (NaN) row per series.

    gradio's LinePlot fixes its colour scale to the series present in the first frame it draws; a frame
    without them (an idle job) drew later lines in no colour at all. The NaN rows keep every series in the
    scale and draw nothing."""
    frame = pd.DataFrame([*(points or []), *({"x": np.nan, "y": np.nan, "series": s} for s in series)],
                         columns=["x", "y", "series"])
    return frame.astype({"x": "float64", "y": "float64", "series": "str"})
NO_BASE = "none (ImageNet / from scratch)"


def _checked_number(component, payload):
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


def _with_checks(component):
    """The component's input runs through ``_checked_number`` (set on the instance: a subclass of a gradio
    component would make gradio write a type-stub file beside this one)."""
    component.preprocess = lambda payload: _checked_number(component, payload)
    return component


def NumberField(*args, **kwargs) -> gr.Number:  # noqa: N802 - stands where gr.Number stood
    """gr.Number whose bad input (from the page or an API client) gets a message naming the field."""
    return _with_checks(gr.Number(*args, **kwargs))


def SliderField(*args, **kwargs) -> gr.Slider:  # noqa: N802
    """gr.Slider whose bad input (an API client can send anything) gets a message naming the field."""
    return _with_checks(gr.Slider(*args, **kwargs))


def example_class(path: Path) -> str:
    """An example's true class, from its file name (``<class>_<number>.jpg``)."""
    return path.stem.rsplit("_", 1)[0]


def in_public_space() -> bool:
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("MEDSYNTH_SPACE") == "1"


try:  # Hugging Face ZeroGPU Spaces: the model calls borrow a GPU per call; elsewhere nothing changes
    import spaces  # noqa: E402

    gpu = spaces.GPU
except ImportError:
    def gpu(fn):
        return fn


def _user_error(fn):
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


def _prune(folder: Path, max_age_s: float = 3600) -> None:
    """Delete generated files older than an hour: downloads must not fill the disk of a long-running app."""
    now = time.time()
    for item in folder.iterdir():
        try:
            if now - item.stat().st_mtime > max_age_s:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        except OSError:
            pass


def build_app(store: service.ModelStore | None = None, data_root: str | Path | None = None,
              jobs_dir: str | Path | None = None, models_dir: str | Path | None = None) -> gr.Blocks:
    """The app. ``models_dir``: where the Train tab writes models (``<models_dir>/<domain>/<name>``; default
    MEDSYNTH_MODELS or ``runs/models``), never inside the shipped checkpoints."""
    from medsynth import jobs

    store = store or service.ModelStore()
    if store.user_root is None:
        store.user_root = Path(models_dir or os.environ.get("MEDSYNTH_MODELS") or "runs/models").resolve()
    models_dir = store.user_root
    data_root = Path(data_root) if data_root else jobs.default_data_root()
    training_enabled = data_root is not None and not in_public_space()
    work_dir = Path(tempfile.mkdtemp(prefix="medsynth-app-"))  # private (0700), this process only
    manager = jobs.JobManager(Path(jobs_dir) if jobs_dir else work_dir / "jobs")
    downloads = work_dir / "downloads"  # zips and sent images: pruned after an hour (never the jobs' logs)
    downloads.mkdir()
    atexit.register(manager.cancel)  # a training job does not outlive the app that started it
    gen_domains = store.domains_with("diffusion")
    clf_domains = store.domains_with("classifier")
    default_domain = clf_domains[0] if clf_domains else next(iter(DOMAINS))
    default_kind = (store.classifier_kinds(default_domain) or ["real-trained"])[0]

    def class_choices(domain):
        return ["all classes", *get_domain(domain).classes] if domain else ["all classes"]

    def refresh_models(g_dom, c_dom, c_kind_value, g_model_value):
        """Re-scan checkpoints: a finished training job's model shows up in Generate and Classify."""
        g_models = store.models(g_dom, "diffusion") if g_dom else []
        kinds = store.classifier_kinds(c_dom) if c_dom else []
        return (gr.Dropdown(choices=g_models, value=g_model_value if g_model_value in g_models else
                            (g_models[0] if g_models else None)),
                gr.Dropdown(choices=kinds or list(service.CLASSIFIER_KINDS),
                            value=c_kind_value if c_kind_value in kinds else (kinds[0] if kinds else "real-trained")))

    # -- callbacks (thin: parse UI values, call the service, shape the outputs) --------------------
    @gpu
    @_user_error
    def do_generate(domain, class_choice="all classes", count=4, sampler=DEFAULT_SAMPLING["sampler"],
                    steps=DEFAULT_SAMPLING["steps"], guidance=DEFAULT_SAMPLING["guidance"], seed=0, model="diffusion",
                    start=DEFAULT_SAMPLING["start_from"], progress=gr.Progress()):
        # The sampler runs in a worker thread; its per-step x0 estimates stream into the preview.
        updates: queue.Queue = queue.Queue()
        result: dict = {}
        stop = threading.Event()  # set when the visitor cancels or leaves: the worker stops at the next step

        def on_step(step, total, preview):
            if stop.is_set():
                raise InterruptedError("generation cancelled")
            updates.put((step, total, preview))

        def on_stage(name, size):
            updates.put(("stage", name, size))

        def work():
            try:
                result["items"] = service.generate(store, domain, class_choice, count, sampler, steps,
                                                   guidance, seed, on_step, model or "diffusion",
                                                   start or DEFAULT_SAMPLING["start_from"], on_stage=on_stage)
            except Exception as exc:  # re-raised in the event handler below
                result["error"] = exc
            finally:
                updates.put(None)

        started = time.perf_counter()
        threading.Thread(target=work, name="medsynth-generate", daemon=True).start()
        yield None, [], None, "starting…", {}  # the previous images and download are gone: they are not these
        last_shown = 0.0
        stage, stages = "base", []  # the cascade's stages as they start: (name, size in px)
        try:
            while (update := updates.get()) is not None:
                if update[0] == "stage":
                    stage = update[1]
                    stages.append(update[1:])
                    continue
                step, total, preview = update
                what = f"{preview.shape[0]}-px stage, step" if stage == "upsampler" else "denoising step"
                progress((step + 1) / total, desc=f"{what} {step + 1}/{total}")
                if time.perf_counter() - last_shown > 0.25 or step + 1 == total:  # at most ~4 frames/s
                    last_shown = time.perf_counter()
                    label = (f"upsampling to {preview.shape[0]} px: step {step + 1}/{total}" if stage == "upsampler"
                             else f"step {step + 1}/{total}")
                    yield (service.upscale_for_display(preview), gr.skip(), gr.skip(), label, gr.skip())
        finally:
            stop.set()
        if "error" in result:
            raise result["error"]
        items = result["items"]
        seconds = time.perf_counter() - started
        _prune(downloads)
        zip_path = service.write_zip(items, Path(tempfile.mkdtemp(dir=downloads)) / f"{domain}_seed{items[0].seed}.zip",
                                     domain)
        gallery = [(service.upscale_for_display(it.image), it.caption) for it in items]
        status = (f"{len(items)} image(s) in {seconds:.1f} s ({sampler}, {int(steps)} steps, guidance {float(guidance)}"
                  + (", started from the coarse prior" if start == "prior" else "")
                  + (f"; {stages[0][1]} px, enlarged to {items[0].image.shape[0]} px by the upsampler)"
                     if len(stages) > 1 else f"; {items[0].image.shape[0]} px)"))
        yield (service.upscale_for_display(items[0].image), gallery, str(zip_path), status,
               {"domain": domain, "items": items})

    def selected_index(evt: gr.SelectData) -> int:
        return int(evt.index)

    def send_to_classify(generated, selected):
        """The selected generated image, saved as a PNG (marked as synthetic), becomes the Classify tab's file."""
        items = (generated or {}).get("items") or []
        if not items:
            raise gr.Error("generate images first")
        item = items[min(max(int(selected or 0), 0), len(items) - 1)]  # a selection from an older gallery is clamped
        path = item.save_png(Path(tempfile.mkdtemp(dir=downloads)) / f"generated_{item.class_name}_seed{item.seed}.png")
        return str(path), gr.update(value=generated["domain"]), gr.Tabs(selected="classify")

    def show_view(image, domain, classifier, frame=None):
        """A new frame (or domain, or classifier): what the CNN will see, and every older result cleared."""
        cleared = (None, None, None)
        if not image:
            return None, *cleared, ""
        try:
            view = service.preview(store, image, domain, classifier, frame_index(image, frame))
        except ImageLoadError as exc:
            gr.Warning(str(exc))
            return None, *cleared, f"**Cannot use this file:** {exc}"
        except MedsynthError:  # e.g. the classifier list is being refreshed for a new domain: nothing to show yet
            return None, *cleared, ""
        return view, *cleared, ""

    def frame_index(image, frame):
        """The slider's frame, or None (the middle one) for a file with one picture or an API call without it."""
        return None if frame is None or service.frames(image) <= 1 else int(frame)

    def show_file(image, domain, classifier):
        """A new file: the frame slider (shown only for a multi-frame DICOM or a NIfTI volume, at the middle
        frame), what the CNN sees, and every older result cleared."""
        count = service.frames(image) if image else 1
        slider = (gr.Slider(minimum=0, maximum=count - 1, value=count // 2, visible=True,
                            label=f"frame / slice (0-{count - 1}; the file holds {count})")
                  if count > 1 else gr.Slider(minimum=0, maximum=1, value=0, visible=False))
        return slider, None, *show_view(image, domain, classifier)

    def pick_frame(image, domain, classifier, frame):
        """The slider moved: that frame becomes the API's `frame`, and the view shows it."""
        return int(frame), *show_view(image, domain, classifier, frame)

    def label_for(probs, verdict):
        """gr.Label's value: the probabilities under the top class, or under "blank image" / "out of domain"
        (the headline never names a class for them). gr.Label takes such a headline only from a JSON file."""
        head = service.headline(probs, verdict)
        if head == max(probs, key=probs.get):
            return probs
        fd, path = tempfile.mkstemp(suffix=".json", dir=downloads)
        with os.fdopen(fd, "w") as fh:
            json.dump({"label": head, "confidences": [{"label": c, "confidence": p} for c, p in
                                                      sorted(probs.items(), key=lambda kv: -kv[1])]}, fh)
        return path

    @gpu
    @_user_error
    def do_classify(image, domain=default_domain, classifier=default_kind, frame=None):
        frame = frame_index(image, frame)
        probs, verdict = service.assess(store, image, domain, classifier, frame)
        return label_for(probs, verdict), service.summary_line(classifier, probs, verdict, image, frame)

    @gpu
    @_user_error
    def do_explain(image, domain=default_domain, classifier=default_kind, lime_seed=0, frame=None,
                   progress=gr.Progress()):
        frame = frame_index(image, frame)
        probs, lime, cam, summary, verdict = service.explain_both(
            store, image, domain, classifier, lime_seed, progress=lambda f: progress(f, desc="LIME"), frame=frame)
        return label_for(probs, verdict), lime, cam, summary

    def sampling_for(domain, model):
        """The chosen model's own recipe (the settings its audited set was drawn with) as the defaults."""
        rec = service.sampling_defaults(store, domain, model or "diffusion") if domain else dict(DEFAULT_SAMPLING)
        return (gr.Dropdown(value=rec["sampler"]), gr.Slider(value=rec["steps"]), gr.Slider(value=rec["guidance"]),
                gr.Radio(value=rec["start_from"]))

    def cards_for(domain):
        parts = []
        for folder in ("diffusion", "upsampler", "classifier", "classifier_synthetic"):
            card = store.card(domain, folder)
            if card is None and folder == "upsampler":
                continue  # a domain without a second stage
            body = card.split("---", 2)[-1] if card else "_not installed_"
            # Relative image links (the sample grid) cannot resolve inside the app: the Generate tab shows samples.
            body = "\n".join(line for line in body.splitlines() if not line.startswith("!["))
            parts.append(f"## {folder}\n\n" + body)
        return "\n\n".join(parts)

    shipped_results = Path(__file__).resolve().parent / "benchmarks" / "results"
    results_roots = [] if in_public_space() else [
        Path(p) for p in (os.environ.get("MEDSYNTH_RESULTS") or "runs").split(os.pathsep) if p]

    def report_index() -> dict:
        return {r.label: r for r in reports.find_reports(shipped_results, results_roots)}

    def report_choices() -> list[str]:
        return list(report_index())

    def show_report(label):
        """The chosen report's text and its figures (loaded as images: the browser cannot follow its links)."""
        from PIL import Image

        found = report_index().get(label)
        if found is None:
            raise MedsynthError(f"no report named {label!r}; choose one from the list (press Refresh list)")
        body, figures = reports.read_report(found.path)
        return body, [(Image.open(path).convert("RGB"), caption) for path, caption in figures]

    # -- the experiment as a job (the Train tab's rules: a data root, not in a public Space) -------------
    def experiment_status():
        """The latest job if it is a tstr run: status line with cells done, log tail, per-cell accuracy."""
        from medsynth.tstr import progress_points

        st = manager.status()
        if st["kind"] != "tstr":
            note = (f" (a Train-tab job is {st['state']}; one job runs at a time)" if st["state"] == "running" else "")
            return "**no experiment started since the app started**" + note, "", curve([], EXPERIMENT_SERIES)
        done, total, points = progress_points(st["out_dir"])
        text = (f"**{st['state']}** · {done} of {total or '?'} cells · {st['elapsed_seconds']:.0f} s · "
                f"`{st['out_dir']}` · `{st['command']}`")
        if st.get("returncode") not in (None, 0):
            text += f" · {jobs.describe_exit(st['returncode'])} (see the log)"
        if st["state"] == "finished" and (Path(st["out_dir"]) / "report.md").is_file():
            text += " · the report is selected above"
        return text, manager.tail(40), curve(points, EXPERIMENT_SERIES)

    def experiment_tick(seen_job):
        """experiment_status, plus: when a run has just finished, select its report in the list (once)."""
        text, log, frame = experiment_status()
        st = manager.status()
        report = gr.skip()
        if st["kind"] == "tstr" and st["state"] == "finished" and st["job_id"] != seen_job:
            seen_job = st["job_id"]
            mine = [label for label, r in report_index().items()
                    if r.path.resolve() == Path(st["out_dir"]).resolve()]
            report = gr.Dropdown(choices=report_choices(), value=mine[0]) if mine else gr.skip()
        return text, log, frame, report, seen_job

    @_user_error
    def start_experiment(domain, real_train, real_test, diffusion_model, preset, train_sets, fractions, seeds,
                         epochs, per_class, gpus, name):
        from medsynth import tstr
        from medsynth.data import scan_dataset

        check_training_allowed()
        classes = get_domain(domain).classes
        folders = []
        for label, text in (("real training folder", real_train), ("real test folder", real_test)):
            try:
                folder = jobs.resolve_data_dir(text, data_root)
                scan_dataset(folder, classes, require_all=True)
            except MedsynthError as exc:
                raise MedsynthError(f"{label}: {exc}") from None
            folders.append(folder)
        if folders[0] == folders[1]:
            raise MedsynthError("the real test folder is the training folder; test on images the CNNs never see")
        models = store.models(domain, "diffusion")
        if not models:
            raise MedsynthError(f"no diffusion model of {domain} is installed; train one in the Train tab first")
        if diffusion_model not in models:
            raise MedsynthError(f"{diffusion_model!r} is not a diffusion model of {domain}; choose one from the list")
        diffusion = store.path(domain, diffusion_model)
        name = (name or "").strip() or f"tstr_{domain}"
        if not all(ch.isalnum() or ch in "._-" for ch in name) or name.startswith("."):
            raise MedsynthError(f"run name {name!r}: use letters, digits, '.', '_' and '-' only")
        if not results_roots:
            raise MedsynthError("no results folder: set MEDSYNTH_RESULTS to a folder for the runs")
        out = (results_roots[0] / name).resolve()
        epochs = service.whole_number(epochs, "epochs", 1, 1000)
        per_class = service.whole_number(per_class, "synthetic images per class", 1, 100_000)
        tstr.check_same_run(out, domain=domain, real_train=str(folders[0]), real_test=str(folders[1]),
                            diffusion=str(diffusion), epochs=epochs, synthetic_per_class=per_class)
        cmd = jobs.build_tstr_command(
            domain, folders[0], folders[1], out, diffusion=diffusion, preset=preset,
            train_sets=tuple(train_sets or ()),
            fractions=service.number_list(fractions, "fractions", float, 0.01, 1.0, "1.0,0.25,0.1"),
            seeds=service.number_list(seeds, "seeds", int, 0, 2**31 - 1, "0,1"),
            epochs=epochs, synthetic_per_class=per_class,
            gpus=service.whole_number(gpus, "GPUs", 0, max(jobs.gpu_count(), 0)))
        manager.start(cmd, str(out), "tstr")
        return experiment_status()

    @_user_error
    def cancel_experiment():
        check_training_allowed()
        st = manager.status()
        if st["state"] == "running" and st["kind"] != "tstr":
            raise MedsynthError("the running job was started in the Train tab; cancel it there")
        manager.cancel(kind="tstr")  # never a Train-tab job, even one started since the line above
        return experiment_status()

    def base_choices(kind, domain):
        models = store.models(domain, "diffusion" if kind == "diffusion" else "classifier") if domain else []
        return gr.Dropdown(choices=[NO_BASE, *models], value=NO_BASE)

    def check_training_allowed():
        if in_public_space():
            raise MedsynthError("training is disabled in the public Space; run medsynth locally to train")
        if data_root is None:
            raise MedsynthError("training from the app needs a data root: start it with MEDSYNTH_DATA_ROOT=/path/to/data")

    def default_job_name(kind, domain):
        return f"{kind}_{domain}_{time.strftime('%Y%m%d-%H%M')}"

    @_user_error
    def start_training(kind, domain, data, steps, epochs, batch_size, gpus, base=NO_BASE, name=""):
        from medsynth.data import scan_dataset

        check_training_allowed()
        if kind not in jobs.TRAINING_KINDS:
            raise MedsynthError(f"unknown job {kind!r}; expected one of: {', '.join(jobs.TRAINING_KINDS)}")
        steps = service.whole_number(steps, "steps", 1, 1_000_000) if kind == "diffusion" else None
        epochs = service.whole_number(epochs, "epochs", 1, 10_000) if kind == "classifier" else None
        batch_size = service.whole_number(batch_size, "batch size", 1, 4096)
        gpus = service.whole_number(gpus, "GPUs", 0, max(jobs.gpu_count(), 0))
        folder = jobs.resolve_data_dir(data, data_root)
        try:  # a folder of another domain, or one missing a class, fails here, not minutes into the job
            scan_dataset(folder, get_domain(domain).classes, require_all=True)
        except MedsynthError as exc:
            raise MedsynthError(f"data folder {data!r} does not fit {domain}: {exc}") from None
        name = (name or "").strip() or default_job_name(kind, domain)
        if not all(ch.isalnum() or ch in "._-" for ch in name) or name.startswith(".") or len(name) > 100:
            raise MedsynthError(f"output name {name!r}: use up to 100 letters, digits, '.', '_' and '-'")
        if name in service.RESERVED_NAMES:
            raise MedsynthError(f"{name!r} is the name of a shipped model; choose another output name")
        out = models_dir / get_domain(domain).key / name
        # the same name as a job that was killed, crashed or cancelled continues it (--resume)
        resume = out.is_dir() and jobs.interrupted_run(kind, out) is not None
        if not resume:
            if name in store.models(domain, "diffusion") + store.models(domain, "classifier"):
                raise MedsynthError(f"a model named {name!r} already exists for {domain}; choose another output name")
            if out.exists():
                raise MedsynthError(f"output name {name!r} is taken; choose another output name")
        base_path = None if base in (None, "", NO_BASE) else store.path(domain, base)
        if base_path is not None and base not in store.models(domain, "diffusion" if kind == "diffusion" else "classifier"):
            raise MedsynthError(f"base checkpoint {base!r} is not a {kind} model of {domain}")
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = jobs.build_command(kind, domain, str(folder), str(out), steps=steps, epochs=epochs, batch_size=batch_size,
                                 base_checkpoint=base_path, gpus=gpus, resume=resume)
        manager.start(cmd, str(out), kind)
        return refresh_job()

    def job_fields(kind, domain):
        """Only the chosen job's fields; a readable output name for it; its base checkpoints."""
        return (gr.Number(visible=kind == "diffusion"), gr.Number(visible=kind == "classifier"),
                gr.Textbox(placeholder=default_job_name(kind, domain)), base_choices(kind, domain))

    @_user_error
    def cancel_training():
        check_training_allowed()  # where visitors may not train, they may not stop the operator's job either
        manager.cancel()
        return refresh_job()

    def refresh_job():
        st = manager.status()
        text = f"**{st['state']}**"
        if st.get("command"):
            text += f" · {st['elapsed_seconds']:.0f} s · `{st['command']}`"
            if st.get("returncode") not in (None, 0):
                text += f" · {jobs.describe_exit(st['returncode'])}"
            stopped = jobs.interrupted_run(st["kind"], st["out_dir"]) if st["state"] != "running" else None
            if stopped:
                text += (f" · it {stopped}, and what it saved loads; start the same job with the same output name "
                         f"({Path(st['out_dir']).name}) to continue it")
        points = manager.loss_points()
        frame = curve(points, TRAIN_SERIES)
        return text, manager.tail(40), frame

    # -- layout ---------------------------------------------------------------------------------
    # delete_cache: gradio's copies of previews, galleries and overlays older than an hour, checked hourly
    with gr.Blocks(title="medsynth", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# medsynth\nSynthetic medical images from class-conditional diffusion models, CNN classifiers "
                    "trained on them, and what those classifiers look at. " + DISCLAIMER)
        generated = gr.State({})
        selected = gr.State(0)
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        g_domain = gr.Dropdown(list(DOMAINS), value=gen_domains[0] if gen_domains else next(iter(DOMAINS)),
                                               label="domain")
                        g_models = store.models(gen_domains[0], "diffusion") if gen_domains else []
                        g_model = gr.Dropdown(g_models, value=g_models[0] if g_models else None,
                                              label="model (shipped, or one you trained)", allow_custom_value=True)
                        g_class = gr.Dropdown(class_choices(gen_domains[0] if gen_domains else None), value="all classes",
                                              label="class", allow_custom_value=True)  # checked by the service
                        g_count = SliderField(1, service.MAX_IMAGES, value=4, step=1, label="images")
                        recipe = (service.sampling_defaults(store, gen_domains[0], g_models[0])
                                  if gen_domains and g_models else dict(DEFAULT_SAMPLING))
                        g_sampler = gr.Dropdown(list(SAMPLERS), value=recipe["sampler"], label="sampler",
                                                info="defaults: the settings this model's audited set was drawn with")
                        g_steps = SliderField(1, service.MAX_STEPS, value=recipe["steps"], step=1, label="steps")
                        g_guidance = SliderField(1.0, 8.0, value=recipe["guidance"], step=0.5,
                                               label="guidance (1 = none)")
                        g_start = gr.Radio(["mean", "prior"], value=recipe["start_from"], label="start from",
                                           info="the class's mean colour, or a coarse layout drawn from the training "
                                                "images' prior (more varied)")
                        with gr.Row():
                            g_seed = NumberField(0, precision=0, label="seed")
                            g_dice = gr.Button("random seed", scale=0)
                        g_go = gr.Button("Generate", variant="primary")
                    with gr.Column(scale=2):
                        g_preview = gr.Image(label="preview (first image; enlarged, nearest neighbour)", type="numpy",
                                             format="png", height=280, interactive=False)
                        g_gallery = gr.Gallery(elem_id="generate-gallery", label="samples (enlarged, nearest neighbour; click one to select it)",
                                               columns=6, format="png", height="auto", object_fit="contain")
                        g_status = gr.Markdown()
                        with gr.Row():
                            g_zip = gr.File(label="download (PNGs + labels.csv)")
                            g_send = gr.Button("Send selected image to Classify")
                if not gen_domains:
                    gr.Markdown("_No diffusion checkpoint is installed under `checkpoints/`._")
                g_domain.change(lambda d: gr.Dropdown(choices=class_choices(d), value="all classes"), g_domain, g_class,
                                api_name="generate_classes")
                g_model.change(sampling_for, [g_domain, g_model], [g_sampler, g_steps, g_guidance, g_start],
                               api_visibility="private")
                g_dice.click(lambda: random.randint(0, 2**31 - 1), None, g_seed, api_name="random_seed")
                g_go.click(do_generate, [g_domain, g_class, g_count, g_sampler, g_steps, g_guidance, g_seed, g_model,
                                         g_start],
                           [g_preview, g_gallery, g_zip, g_status, generated], api_name="generate",
                           concurrency_id=HEAVY)
                g_gallery.select(selected_index, None, selected, api_name="select_generated")

            with gr.Tab("Classify & Explain", id="classify"):
                with gr.Row():
                    with gr.Column(scale=1):
                        c_image = gr.File(label="scan: any image file (PNG, JPEG, TIFF, 16-bit, WebP, DICOM, NIfTI)",
                                          type="filepath", height=110, elem_id="scan-file")
                        c_slider = gr.Slider(0, 1, value=0, step=1, visible=False, label="frame / slice",
                                             elem_id="scan-frame")
                        # the API's `frame` (None: the middle frame/slice); the slider above sets it
                        c_frame = gr.Number(value=None, precision=0, visible=False, label="frame")
                        c_view = gr.Image(label="what the CNN sees (its input, enlarged)", type="numpy", format="png",
                                          height=260, interactive=False, elem_id="scan-view")
                        c_domain = gr.Dropdown(list(DOMAINS), value=default_domain, label="domain")
                        kinds = store.classifier_kinds(default_domain) or list(service.CLASSIFIER_KINDS)
                        c_kind = gr.Dropdown(kinds, value=default_kind, label="classifier", allow_custom_value=True)
                        c_seed = NumberField(0, precision=0, minimum=0, label="LIME seed")
                        with gr.Row():
                            c_go = gr.Button("Classify", variant="primary")
                            c_explain = gr.Button("Explain (LIME + Grad-CAM)")
                        examples = sorted(EXAMPLES.glob("*/*.jpg"))
                        if examples:
                            gr.Examples([[str(p), p.parent.name] for p in examples], inputs=[c_image, c_domain],
                                        example_labels=[f"{p.parent.name}: {example_class(p)}" for p in examples],
                                        label="real examples, by true class (provenance: examples/README.md)")
                    with gr.Column(scale=2):
                        c_label = gr.Label(label="class probabilities", elem_id="scan-label")
                        c_summary = gr.Markdown(elem_id="scan-summary")
                        with gr.Row():
                            c_lime = gr.Image(label="LIME (the superpixels that support the class most)", format="png",
                                              interactive=False, elem_id="scan-lime")
                            c_cam = gr.Image(label="Grad-CAM", format="png", interactive=False)
                ev_classify = c_go.click(do_classify, [c_image, c_domain, c_kind, c_frame], [c_label, c_summary],
                                         api_name="classify",
                           concurrency_id=HEAVY if os.environ.get("MEDSYNTH_ONE_SLOT") == "1" else QUICK)
                ev_explain = c_explain.click(do_explain, [c_image, c_domain, c_kind, c_seed, c_frame],
                                             [c_label, c_lime, c_cam, c_summary],
                                api_name="explain", concurrency_id=HEAVY)
                view_outputs = [c_view, c_label, c_lime, c_cam, c_summary]
                # new input: old results go, running ones stop
                c_image.change(show_file, [c_image, c_domain, c_kind], [c_slider, c_frame, *view_outputs],
                               api_visibility="private", cancels=[ev_classify, ev_explain])
                c_slider.release(pick_frame, [c_image, c_domain, c_kind, c_slider], [c_frame, *view_outputs],
                                 api_visibility="private", cancels=[ev_classify, ev_explain])
                for trigger in (c_domain.change, c_kind.change):
                    trigger(show_view, [c_image, c_domain, c_kind, c_frame], view_outputs,
                            api_visibility="private", cancels=[ev_classify, ev_explain])
            g_send.click(send_to_classify, [generated, selected], [c_image, c_domain, tabs],
                         api_name="send_to_classify")
            for trigger in (g_domain.change, c_domain.change):
                trigger(refresh_models, [g_domain, c_domain, c_kind, g_model], [g_model, c_kind],
                        api_visibility="private")

            with gr.Tab("Experiment", id="experiment"):
                gr.Markdown("Reports of the study's experiment (`medsynth tstr`: CNNs trained on synthetic, real and "
                            "mixed images, tested on real scans) and of synthetic-set audits (`medsynth audit`: "
                            "fidelity, coverage, memorization). The shipped reports come first"
                            + ("" if in_public_space() else
                               f"; yours are found under {', '.join(f'`{r}`' for r in results_roots) or 'no folder'} "
                               "(set MEDSYNTH_RESULTS to add folders)") + ".")
                comparison, _ = reports.classifier_comparison(store.root)  # the table now; figures drawn below
                confusions_ready: dict = {}

                def draw_confusions():  # ~2 s of matplotlib, off the start-up path; kept in memory
                    folder = Path(tempfile.mkdtemp(dir=work_dir))
                    confusions_ready["figures"] = [(Image.open(p).convert("RGB"), c) for p, c in
                                                   reports.classifier_comparison(store.root, folder)[1]]
                    shutil.rmtree(folder, ignore_errors=True)

                drawing = threading.Thread(target=draw_confusions, name="medsynth-confusions", daemon=True)

                def confusion_gallery():
                    drawing.join()
                    return confusions_ready.get("figures", [])

                if comparison:
                    drawing.start()
                    with gr.Accordion("The shipped CNNs: trained on real vs on synthetic images only", open=True):
                        gr.Markdown("Each scored on its domain's held-out real images: never trained on, the same "
                                    "images for both CNNs; they also chose each CNN's best epoch, so these figures "
                                    "lean optimistic (the experiment's reports below select on training images "
                                    "only). The full model cards are at the bottom of this tab.\n\n" + comparison)
                        e_confusions = gr.Gallery(columns=6, height="auto", object_fit="contain",
                                                  label="confusion matrices (rows: true class)")
                    demo.load(confusion_gallery, None, e_confusions, api_visibility="private", queue=False)
                first_reports = report_choices()
                with gr.Row():
                    e_report = gr.Dropdown(first_reports, value=first_reports[0] if first_reports else None,
                                           label="report", scale=4)
                    e_refresh = gr.Button("Refresh list", scale=1)
                e_body = gr.Markdown(show_report(first_reports[0])[0] if first_reports else "_no reports found_")
                e_figures = gr.Gallery(show_report(first_reports[0])[1] if first_reports else [], label="figures",
                                       columns=2, height="auto", object_fit="contain")
                e_report.change(_user_error(show_report), e_report, [e_body, e_figures], api_name="experiment_report")
                e_refresh.click(lambda: gr.Dropdown(choices=report_choices()), None, e_report,
                                api_visibility="private")
                with gr.Accordion("Run the experiment", open=False):
                    if not training_enabled:
                        gr.Markdown("Runs are off here: " + (
                            "the public Space shows the shipped reports only." if in_public_space() else
                            "start the app with MEDSYNTH_DATA_ROOT=/path/to/data to run the experiment on your "
                            "images.") + " The same run from a terminal: `python -m medsynth tstr ...` "
                            "(docs/tstr.md).")
                    gr.Markdown("Trains CNNs on real, synthetic and real+synthetic images at each fraction of your "
                                "real training folder and seed, tests each on your real test folder, and writes a "
                                "report that appears in the list above. The synthetic set is drawn once from the "
                                "chosen diffusion model with the shipped recipe. Starting the same run name with the "
                                "same settings resumes it; one job (this or a Train-tab job) runs at a time.")
                    x_domains = [d for d in DOMAINS if store.models(d, "diffusion")] or list(DOMAINS)
                    with gr.Row():
                        x_domain = gr.Dropdown(x_domains, value=x_domains[0], label="domain")
                        x_model = gr.Dropdown(store.models(x_domains[0], "diffusion"),
                                              value=(store.models(x_domains[0], "diffusion") or [None])[0],
                                              label="diffusion model (draws the synthetic set)")
                        x_train = gr.Textbox(label="real training folder (inside the data root)",
                                             placeholder="brain_mri_split/train")
                        x_test = gr.Textbox(label="real test folder (inside the data root; never trained on)",
                                            placeholder="brain_mri_split/val")
                    with gr.Row():
                        x_preset = gr.Radio(["cpu", "study"], value="cpu", label="architectures",
                                            info="cpu: EfficientNet-Lite0 and -Lite2 (ImageNet weights); study: the paper's 8 "
                                                 "families, which start from random weights offline")
                        x_sets = gr.CheckboxGroup(["real", "synthetic", "mixed"], value=["real", "synthetic", "mixed"],
                                                  label="training sets", info="mixed: real plus synthetic")
                        x_fractions = gr.Textbox("1.0,0.25,0.1", label="fractions of the real training images")
                        x_seeds = gr.Textbox("0,1", label="seeds")
                        x_epochs = NumberField(8, precision=0, minimum=1, label="epochs per CNN")
                        x_per_class = NumberField(200, precision=0, minimum=1, label="synthetic images per class")
                        x_gpus = NumberField(jobs.gpu_count(), precision=0, minimum=0, maximum=max(jobs.gpu_count(), 0),
                                           label="GPUs")
                        x_name = gr.Textbox(label="run name", placeholder="tstr_<domain>")
                    with gr.Row():
                        x_start = gr.Button("Start the experiment", variant="primary", interactive=training_enabled)
                        x_cancel = gr.Button("Cancel", variant="stop", interactive=training_enabled)
                    x_status = gr.Markdown("**no experiment started since the app started**")
                    x_plot = gr.LinePlot(curve([], EXPERIMENT_SERIES), x="x", y="y", color="series", height=240,
                                         title="test accuracy of each finished CNN: real (blue), synthetic "
                                               "(orange), mixed (green) training set",
                                         color_map={"real": "#1971c2", "synthetic": "#e8590c", "mixed": "#2f9e44"},
                                         x_title="cell", y_title="accuracy")
                    x_log = gr.Textbox(label="log (tail)", lines=10, max_lines=10, autoscroll=True)
                    x_seen = gr.State(None)
                    x_domain.change(lambda d: gr.Dropdown(choices=store.models(d, "diffusion"),
                                                          value=(store.models(d, "diffusion") or [None])[0]),
                                    x_domain, x_model, api_visibility="private")
                    x_start.click(start_experiment, [x_domain, x_train, x_test, x_model, x_preset, x_sets, x_fractions,
                                                     x_seeds, x_epochs, x_per_class, x_gpus, x_name],
                                  [x_status, x_log, x_plot], api_name="experiment_start")
                    x_cancel.click(cancel_experiment, None, [x_status, x_log, x_plot], api_name="experiment_cancel")
                    x_timer = gr.Timer(2.0, active=training_enabled)
                    x_timer.tick(experiment_tick, x_seen, [x_status, x_log, x_plot, e_report, x_seen],
                                 api_name="experiment_status", queue=False)
                with gr.Accordion("Model cards of the installed checkpoints", open=False):
                    e_domain = gr.Dropdown(list(DOMAINS), value=next(iter(DOMAINS)), label="domain")
                    e_cards = gr.Markdown(cards_for(next(iter(DOMAINS))))
                    e_domain.change(cards_for, e_domain, e_cards, api_name="model_cards")

            with gr.Tab("Train", id="train"):
                if in_public_space():
                    gr.Markdown("Training is disabled in the public Space. Install medsynth locally "
                                "(`pip install -r requirements.txt`) and run `python app.py` to train on your GPUs.")
                gpus = jobs.gpu_count()
                gr.Markdown(f"GPUs detected: **{gpus}** {', '.join(jobs.describe_gpus())}. Data root: "
                            f"`{'hidden' if in_public_space() else data_root or 'not set (start with MEDSYNTH_DATA_ROOT=...)'}`. "
                            "One job at a time; a finished job's model is written to "
                            f"`{'the models folder' if in_public_space() else models_dir}/<domain>/<output name>` "
                            "and appears in Generate and Classify.")
                with gr.Row():
                    t_kind = gr.Radio(["diffusion", "classifier"], value="classifier", label="job")
                    t_domain = gr.Dropdown(list(DOMAINS), value=next(iter(DOMAINS)), label="domain", elem_id="train-domain")
                    t_data = gr.Textbox(label="data folder (inside the data root; one sub-folder per class)",
                                        placeholder=next(iter(DOMAINS)))
                    t_base = gr.Dropdown([NO_BASE, *store.models(next(iter(DOMAINS)), "classifier")], value=NO_BASE,
                                         label="base checkpoint (fine-tune)", allow_custom_value=True)
                with gr.Row():
                    t_steps = NumberField(2000, precision=0, minimum=1, label="diffusion steps", visible=False)
                    t_epochs = NumberField(10, precision=0, minimum=1, label="classifier epochs")
                    t_batch = NumberField(16, precision=0, minimum=1, label="batch size")
                    t_gpus = NumberField(gpus, precision=0, minimum=0, maximum=max(gpus, 0), label="GPUs")
                    t_name = gr.Textbox("", label="output name (empty: the name shown)",
                                        placeholder=default_job_name("classifier", next(iter(DOMAINS))))
                with gr.Row():
                    t_start = gr.Button("Start", variant="primary", interactive=training_enabled)
                    t_cancel = gr.Button("Cancel", variant="stop", interactive=training_enabled)
                t_status = gr.Markdown("**idle**")
                t_plot = gr.LinePlot(curve([], TRAIN_SERIES), x="x", y="y", color="series", title="training curve: loss (orange), validation macro-F1 (blue)",
                                     color_map={"loss": "#e8590c", "train_loss": "#e8590c", "val_macro_f1": "#1971c2"},
                                     x_title="step (diffusion) or epoch (classifier)", y_title="value", height=260, elem_id="train-plot")
                t_log = gr.Textbox(label="log (tail)", lines=12, max_lines=12, autoscroll=True)
                timer = gr.Timer(2.0, active=training_enabled)  # no polling where training is off
                for trigger in (t_kind.change, t_domain.change):
                    trigger(job_fields, [t_kind, t_domain], [t_steps, t_epochs, t_name, t_base],
                            api_visibility="private")
                t_start.click(start_training, [t_kind, t_domain, t_data, t_steps, t_epochs, t_batch, t_gpus, t_base,
                                               t_name], [t_status, t_log, t_plot], api_name="train_start")
                t_cancel.click(cancel_training, None, [t_status, t_log, t_plot], api_name="train_cancel")
                # cheap reads, outside the queue so that polling never fills it
                timer.tick(refresh_job, None, [t_status, t_log, t_plot], api_name="train_status", queue=False)
                # when a job ends, its checkpoint becomes selectable in Generate and Classify
                timer.tick(refresh_models, [g_domain, c_domain, c_kind, g_model], [g_model, c_kind],
                           api_visibility="private", queue=False)

            with gr.Tab("About", id="about"):
                gr.Markdown(ABOUT)
    demo.queue(max_size=64, default_concurrency_limit=1)
    return demo


ABOUT = f"""
## About medsynth

medsynth turns the study *Diffusion-Based Approaches in Medical Image Generation and Analysis*
(Nafi, Hossain, Rifat, Zaman, Ahsan, Raman; arXiv 2412.16860, 2024) into software: one
class-conditional diffusion model per domain generates labelled synthetic images, CNNs trained on
synthetic images alone are tested on real scans, and LIME and Grad-CAM show what the CNNs look at.
The study's code was not published; every choice and every number here is medsynth's own.

{DISCLAIMER} Synthetic images are not patients' scans and must never be presented as such.

### Data

| domain | dataset | licence (as reported, not confirmed) |
| --- | --- | --- |
""" + "\n".join(f"| {d.title} | {d.dataset} | {d.dataset_license} |" for d in DOMAINS.values()) + """

ImageNet weights: EfficientNet-Lite0/Lite2 by Google (Apache-2.0), PyTorch conversion by ML Illustrated.
Reports of the experiment, audits of the synthetic sets and the model cards of the installed checkpoints
are in the Experiment tab.
"""


if __name__ == "__main__":
    build_app().launch()
