"""The Experiment tab: the shipped CNNs side by side, every report (the study's experiment, the audits) with
its figures, the experiment run as a job, and the model cards of the installed checkpoints."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import gradio as gr
from PIL import Image

from .. import jobs, reports, service
from ..domains import DOMAINS, get_domain
from ..errors import MedsynthError
from .common import EXPERIMENT_SERIES, AppContext, NumberField, curve, in_public_space, model_choices, user_error


def create_experiment_tab(ctx: AppContext, demo: gr.Blocks) -> gr.Dropdown:
    """The tab's layout, callbacks and api_names (/experiment_report, /experiment_start, /experiment_cancel,
    /experiment_status, /model_cards); returns the report list."""
    store, manager, work_dir, data_root = ctx.store, ctx.manager, ctx.work_dir, ctx.data_root
    training_enabled, results_roots = ctx.training_enabled, ctx.results_roots
    shipped_results = ctx.root / "benchmarks" / "results"
    check_training_allowed = ctx.check_training_allowed

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
        body, figures = reports.read_report(found.path, found.shipped)
        return body, [(Image.open(path).convert("RGB"), caption) for path, caption in figures]

    # -- the experiment as a job (the Train tab's rules: a data root, not in a public Space) -------------
    def experiment_status():
        """The latest job if it is a tstr run: status line with cells done, log tail, per-cell accuracy."""
        from ..tstr import progress_points

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

    @user_error
    def start_experiment(domain, real_train, real_test, diffusion_model, preset, train_sets, fractions, seeds,
                         epochs, per_class, gpus, name):
        from .. import tstr
        from ..data import scan_dataset

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

    @user_error
    def cancel_experiment():
        check_training_allowed()
        st = manager.status()
        if st["state"] == "running" and st["kind"] != "tstr":
            raise MedsynthError("the running job was started in the Train tab; cancel it there")
        manager.cancel(kind="tstr")  # never a Train-tab job, even one started since the line above
        return experiment_status()

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
                e_confusions = gr.Gallery(columns=3, height="auto", object_fit="contain", elem_id="confusions",
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
        e_report.change(user_error(show_report), e_report, [e_body, e_figures], api_name="experiment_report")
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
                x_model = gr.Dropdown(model_choices(store.models(x_domains[0], "diffusion")),
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
            x_domain.change(lambda d: gr.Dropdown(choices=model_choices(store.models(d, "diffusion")),
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


    return e_report
