"""The Generate tab: class-conditional samples from a diffusion model (and its upsampler), streamed step by
step, with a zip download and a button that sends the selected image to Classify."""

from __future__ import annotations

import queue
import random
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from .. import service
from ..domains import DOMAINS
from ..recipes import DEFAULT_SAMPLING, SAMPLERS
from .common import HEAVY, AppContext, NumberField, SliderField, class_choices, gpu, model_choices, prune, user_error


def create_generate_tab(ctx: AppContext) -> SimpleNamespace:
    """The tab's layout, callbacks and api_names (/generate, /generate_classes, /random_seed,
    /select_generated); returns the components other tabs wire to."""
    store, downloads = ctx.store, ctx.downloads
    gen_domains = store.domains_with("diffusion")

    @gpu
    @user_error
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

        def skipped_note(total):
            """Why the base stage runs fewer steps than were set (the sampler's own rule, diffusion.py)."""
            extra = int(steps) - total
            return (f" ({int(steps)} set: the last {extra} would fall where the image is already noise-free, "
                    "so they are skipped)") if extra > 0 else ""

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
                             else f"step {step + 1}/{total}" + skipped_note(total))
                    yield (service.upscale_for_display(preview), gr.skip(), gr.skip(), label, gr.skip())
        finally:
            stop.set()
        if "error" in result:
            raise result["error"]
        items = result["items"]
        seconds = time.perf_counter() - started
        prune(downloads)
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

    def sampling_for(domain, model):
        """The chosen model's own recipe (the settings its audited set was drawn with) as the defaults."""
        rec = service.sampling_defaults(store, domain, model or "diffusion") if domain else dict(DEFAULT_SAMPLING)
        return (gr.Dropdown(value=rec["sampler"]), gr.Slider(value=rec["steps"]), gr.Slider(value=rec["guidance"]),
                gr.Radio(value=rec["start_from"]))

    with gr.Tab("Generate", id="generate"):
        generated = gr.State({})
        selected = gr.State(0)
        with gr.Row():
            with gr.Column(scale=1):
                g_domain = gr.Dropdown(list(DOMAINS), value=gen_domains[0] if gen_domains else next(iter(DOMAINS)),
                                       label="domain")
                g_models = store.models(gen_domains[0], "diffusion") if gen_domains else []
                g_model = gr.Dropdown(model_choices(g_models), value=g_models[0] if g_models else None,
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

    return SimpleNamespace(domain=g_domain, model=g_model, generated=generated, selected=selected, send=g_send)
