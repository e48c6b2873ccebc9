"""The Classify & Explain tab: any scan file (or an example, or a generated image), what the CNN sees, the
class probabilities with the out-of-domain and small-scan checks, and LIME and Grad-CAM overlays."""

from __future__ import annotations

import json
import os
import tempfile
from types import SimpleNamespace

import gradio as gr

from .. import service
from ..domains import DOMAINS
from ..errors import ImageLoadError, MedsynthError
from .common import HEAVY, QUICK, AppContext, NumberField, example_class, gpu, user_error


def create_classify_tab(ctx: AppContext) -> SimpleNamespace:
    """The tab's layout, callbacks and api_names (/classify, /explain); returns the components other tabs
    wire to (the file, the domain and the classifier)."""
    store, downloads = ctx.store, ctx.downloads
    default_domain, default_kind = ctx.default_domain, ctx.default_kind
    examples_dir = ctx.root / "examples"

    def show_view(image, domain, classifier, frame=None):
        """A new frame (or domain, or classifier): what the CNN will see, and every older result cleared."""
        cleared = (None, None, None)
        if not image:
            return None, *cleared, ""
        try:
            view = service.preview(store, image, domain, classifier, frame_index(image, frame))
        except ImageLoadError as exc:  # said once, in the summary (no toast, no second copy)
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
    @user_error
    def do_classify(image, domain=default_domain, classifier=default_kind, frame=None):
        frame = frame_index(image, frame)
        probs, verdict = service.assess(store, image, domain, classifier, frame)
        return label_for(probs, verdict), service.summary_line(classifier, probs, verdict, image, frame)

    @gpu
    @user_error
    def do_explain(image, domain=default_domain, classifier=default_kind, lime_seed=0, frame=None,
                   progress=gr.Progress()):
        frame = frame_index(image, frame)
        probs, lime, cam, summary, verdict = service.explain_both(
            store, image, domain, classifier, lime_seed, progress=lambda f: progress(f, desc="LIME"), frame=frame)
        return label_for(probs, verdict), lime, cam, summary

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
                examples = sorted(examples_dir.glob("*/*.jpg"))
                if examples:
                    gr.Examples([[str(p), p.parent.name] for p in examples], inputs=[c_image, c_domain],
                                example_labels=[f"{p.parent.name}: {example_class(p)}" for p in examples],
                                label="real examples, by true class (provenance: examples/README.md)")
            with gr.Column(scale=2):
                c_label = gr.Label(label="class probabilities", elem_id="scan-label")
                c_summary = gr.Markdown(elem_id="scan-summary")
                with gr.Row():  # captions above the overlays: a label chip would cover the figure's own title
                    with gr.Column(min_width=200):
                        gr.Markdown("**LIME**: the superpixels that support the class most")
                        c_lime = gr.Image(label="LIME", show_label=False, format="png", interactive=False,
                                          elem_id="scan-lime")
                    with gr.Column(min_width=200):
                        gr.Markdown("**Grad-CAM**: where the last feature map drives the class")
                        c_cam = gr.Image(label="Grad-CAM", show_label=False, format="png", interactive=False,
                                         elem_id="scan-cam")
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

    return SimpleNamespace(image=c_image, domain=c_domain, kind=c_kind)
