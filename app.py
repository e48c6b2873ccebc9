"""medsynth's Gradio app: the tabs (medsynth.ui, one module each) composed, and the events between them.
The logic lives in medsynth.service and medsynth.jobs.

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
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from medsynth import service  # noqa: E402
from medsynth.domains import DOMAINS  # noqa: E402
from medsynth.ui.about_tab import create_about_tab  # noqa: E402
from medsynth.ui.classify_tab import create_classify_tab  # noqa: E402
from medsynth.ui.common import DISCLAIMER, AppContext, in_public_space, model_choices  # noqa: E402
from medsynth.ui.experiment_tab import create_experiment_tab  # noqa: E402
from medsynth.ui.generate_tab import create_generate_tab  # noqa: E402
from medsynth.ui.train_tab import create_train_tab  # noqa: E402

ROOT = Path(__file__).resolve().parent


def build_app(store: service.ModelStore | None = None, data_root: str | Path | None = None,
              jobs_dir: str | Path | None = None, models_dir: str | Path | None = None) -> gr.Blocks:
    """The app. ``models_dir``: where the Train tab writes models (``<models_dir>/<domain>/<name>``; default
    MEDSYNTH_MODELS or ``runs/models``), never inside the shipped checkpoints."""
    from medsynth import jobs

    store = store or service.ModelStore()
    if store.user_root is None:
        store.user_root = Path(models_dir or os.environ.get("MEDSYNTH_MODELS") or "runs/models").resolve()
    data_root = Path(data_root) if data_root else jobs.default_data_root()
    work_dir = Path(tempfile.mkdtemp(prefix="medsynth-app-"))  # private (0700), this process only
    manager = jobs.JobManager(Path(jobs_dir) if jobs_dir else work_dir / "jobs")
    downloads = work_dir / "downloads"
    downloads.mkdir()
    atexit.register(manager.cancel)  # a training job does not outlive the app that started it
    clf_domains = store.domains_with("classifier")
    default_domain = clf_domains[0] if clf_domains else next(iter(DOMAINS))
    ctx = AppContext(
        store=store, root=ROOT, data_root=data_root, training_enabled=data_root is not None and not in_public_space(),
        work_dir=work_dir, manager=manager, downloads=downloads, models_dir=store.user_root,
        default_domain=default_domain, default_kind=(store.classifier_kinds(default_domain) or ["real-trained"])[0],
        results_roots=[] if in_public_space() else [
            Path(p) for p in (os.environ.get("MEDSYNTH_RESULTS") or "runs").split(os.pathsep) if p])

    def refresh_models(g_dom, c_dom, c_kind_value, g_model_value):
        """Re-scan checkpoints: a finished training job's model shows up in Generate and Classify."""
        g_models = store.models(g_dom, "diffusion") if g_dom else []
        kinds = store.classifier_kinds(c_dom) if c_dom else []
        return (gr.Dropdown(choices=model_choices(g_models), value=g_model_value if g_model_value in g_models else
                            (g_models[0] if g_models else None)),
                gr.Dropdown(choices=kinds or list(service.CLASSIFIER_KINDS),
                            value=c_kind_value if c_kind_value in kinds else (kinds[0] if kinds else "real-trained")))

    def send_to_classify(generated, selected):
        """The selected generated image, saved as a PNG (marked as synthetic), becomes the Classify tab's file."""
        items = (generated or {}).get("items") or []
        if not items:
            raise gr.Error("generate images first")
        item = items[min(max(int(selected or 0), 0), len(items) - 1)]  # a selection from an older gallery is clamped
        path = item.save_png(Path(tempfile.mkdtemp(dir=downloads)) / f"generated_{item.class_name}_seed{item.seed}.png")
        return str(path), gr.update(value=generated["domain"]), gr.Tabs(selected="classify")

    # delete_cache: gradio's copies of previews, galleries and overlays older than an hour, checked hourly
    with gr.Blocks(title="medsynth", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# medsynth\nSynthetic medical images from class-conditional diffusion models, CNN classifiers "
                    "trained on them, and what those classifiers look at. " + DISCLAIMER)
        with gr.Tabs() as tabs:
            generate = create_generate_tab(ctx)
            classify = create_classify_tab(ctx)
            # between tabs: a generated image goes to Classify; new models show up in both tabs' lists
            generate.send.click(send_to_classify, [generate.generated, generate.selected],
                                [classify.image, classify.domain, tabs], api_name="send_to_classify")
            model_lists = ([generate.domain, classify.domain, classify.kind, generate.model],
                           [generate.model, classify.kind])
            for trigger in (generate.domain.change, classify.domain.change):
                trigger(refresh_models, *model_lists, api_visibility="private")
            create_experiment_tab(ctx, demo)
            timer = create_train_tab(ctx)
            # when a job ends, its checkpoint becomes selectable in Generate and Classify
            timer.tick(refresh_models, *model_lists, api_visibility="private", queue=False)
            create_about_tab()
    demo.queue(max_size=64, default_concurrency_limit=1)
    return demo


if __name__ == "__main__":
    import signal
    import sys

    # SIGTERM (a Space restart, `docker stop`, systemd) exits like Ctrl-C, so the atexit clean-up runs:
    # the private upload folder and any running training job go with the app.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    build_app().launch()
