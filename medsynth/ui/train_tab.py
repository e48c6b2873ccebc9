"""The Train tab: fine-tune or train a diffusion model or a classifier on local data as a separate process
(one job at a time), with its live log and loss curve, cancel and resume."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from .. import jobs, service
from ..domains import DOMAINS, get_domain
from ..errors import MedsynthError
from .common import NO_BASE, TRAIN_SERIES, AppContext, NumberField, curve, in_public_space, model_choices, user_error


def create_train_tab(ctx: AppContext) -> gr.Timer:
    """The tab's layout, callbacks and api_names (/train_start, /train_cancel, /train_status); returns its
    timer, on which the app also refreshes the model lists of Generate and Classify."""
    store, manager, data_root, models_dir = ctx.store, ctx.manager, ctx.data_root, ctx.models_dir
    training_enabled = ctx.training_enabled
    check_training_allowed = ctx.check_training_allowed

    def base_choices(kind, domain):
        models = store.models(domain, "diffusion" if kind == "diffusion" else "classifier") if domain else []
        return gr.Dropdown(choices=[NO_BASE, *model_choices(models)], value=NO_BASE)

    def default_job_name(kind, domain):
        return f"{kind}_{domain}_{time.strftime('%Y%m%d-%H%M')}"

    @user_error
    def start_training(kind, domain, data, steps, epochs, batch_size, gpus, base=NO_BASE, name=""):
        from ..data import scan_dataset

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

    @user_error
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

    with gr.Tab("Train", id="train"):
        if not training_enabled:  # one sentence: why Start is off, and what turns it on
            gr.Markdown("**Start is off** because " + (
                "training is disabled in the public Space (it would occupy the shared CPU): install medsynth "
                "locally and start it with `MEDSYNTH_DATA_ROOT=/path/to/data python app.py` to train." if in_public_space()
                else "no data root is set: start the app with `MEDSYNTH_DATA_ROOT=/path/to/data python app.py`, "
                "the folder that holds your labelled images."), elem_id="train-off")
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
            t_base = gr.Dropdown([NO_BASE, *model_choices(store.models(next(iter(DOMAINS)), "classifier"))], value=NO_BASE,
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
        t_plot = gr.LinePlot(curve([], TRAIN_SERIES), x="x", y="y", color="series", title="training curve: diffusion loss (orange), classifier loss (purple), validation macro-F1 (blue)",
                             color_map={"loss": "#e8590c", "train_loss": "#9c36b5", "val_macro_f1": "#1971c2"},
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


    return timer
