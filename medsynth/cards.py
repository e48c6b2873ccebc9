"""Model cards (Hugging Face format: YAML header + Markdown) written beside every checkpoint."""

from __future__ import annotations

import platform
from dataclasses import asdict
from typing import Any, Sequence

import numpy as np
import torch

from .domains import get_domain

DISCLAIMER = "Research use only. Not a medical device; not for diagnosis or treatment decisions."


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


def classifier_card(config: Any, recipe: Any, summary: dict, log_rows: Sequence[dict]) -> str:
    domain = get_domain(config.domain)
    val = summary.get("val_metrics")
    header = [
        "---",
        "license: other",
        "library_name: timm",
        "pipeline_tag: image-classification",
        "tags:", "- medsynth", "- medical-imaging", f"- {domain.key}", f"- {config.arch}",
        "datasets:", f"- {domain.key}",
        "metrics:", "- accuracy", "- f1",
    ]
    if val:
        header += [
            "model-index:",
            f"- name: medsynth-{domain.key}-{config.arch}",
            "  results:",
            "  - task: {type: image-classification}",
            f"    dataset: {{name: {domain.key} validation split, type: {domain.key}}}",
            "    metrics:",
            f"    - {{type: accuracy, value: {val['accuracy']:.4f}}}",
            f"    - {{type: f1, name: macro-F1, value: {val['macro_f1']:.4f}}}",
        ]
    header.append("---")
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
{config.input_size} px, normalised with mean {config.mean} and std {config.std}.

## Data

- Training folder: `{recipe.data}`: {summary['n_train']} images ({counts}).
- Validation: {summary['n_val']} images ({'the separate folder `' + str(recipe.val_data) + '`' if recipe.val_data else f'a stratified {recipe.val_fraction:.0%} split with seed {recipe.seed}'}).
- Reference dataset of this domain: {domain.dataset or 'n/a'}; licence: {domain.dataset_license}.
- Initial weights: {summary['pretrained'] or 'random initialisation (no pretrained weights available offline)'}.

## Training

Best epoch {summary['best_epoch']} of {summary['epochs_run']} run ({summary['stop_reason']});
wall time {minutes:.1f} min on {summary['hardware']}; torch {torch.__version__}, Python {platform.python_version()}.

| option | value |
| --- | --- |
{recipe_rows}

## Validation metrics (best epoch)

""" + (f"""Accuracy **{val['accuracy']:.4f}**, macro-F1 **{val['macro_f1']:.4f}** on {val['n']} images.

{_metrics_table(val)}

Confusion matrix (rows: true class):

{_confusion_table(val)}
""" if val else "No validation data was used; the weights are those of the last epoch.\n") + """
## Training log

| epoch | train loss | val accuracy | val macro-F1 | seconds |
| ---: | ---: | ---: | ---: | ---: |
""" + "\n".join(
        f"| {r['epoch']} | {r['train_loss']:.4f} | {r.get('val_accuracy', float('nan')):.4f} | "
        f"{r.get('val_macro_f1', float('nan')):.4f} | {r['seconds']:.0f} |" for r in log_rows
    ) + f"""

## Limitations

- Validation images come from the same public dataset as the training images; accuracy on scans
  from other hospitals, scanners or staining protocols will be lower.
- See the dataset's provenance notes for known caveats (duplicates, confounders, licence).
- {DISCLAIMER}
"""
    return "\n".join(header) + "\n" + body


def diffusion_card(domain: Any, recipe: Any, info: dict, loss_rows: Sequence[dict]) -> str:
    """Model card of a class-conditional diffusion checkpoint (diffusers format)."""
    losses = [r["loss"] for r in loss_rows]
    first = f"{np.mean(losses[:5]):.4f}" if losses else "n/a"
    last = f"{np.mean(losses[-5:]):.4f}" if losses else "n/a"
    recipe_rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in asdict(recipe).items() if k != "progress")
    counts = ", ".join(f"{k} {v}" for k, v in info["train_class_counts"].items())
    status = "final" if info["final"] else "intermediate (training continues)"
    return f"""---
license: other
library_name: diffusers
pipeline_tag: unconditional-image-generation
tags:
- medsynth
- medical-imaging
- class-conditional
- {domain.key}
datasets:
- {domain.key}
---

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

## Data

- Training folder: `{recipe.data}`: {info['n_train']} images ({counts}); {info['n_val']} images
  ({recipe.val_fraction:.0%} per class, seed {recipe.seed}) kept aside in `split.json` for image-quality metrics.
- Reference dataset of this domain: {domain.dataset or 'n/a'}; licence: {domain.dataset_license}.

## Training

{info['step']} steps (batch {recipe.batch_size}), wall time {info['seconds'] / 60:.1f} min on {info['hardware']}.
Loss (Min-SNR-weighted MSE, mean of 5 log points): {first} at the start, {last} at the end; every
point is in `loss.csv`. Sample grids (rows: classes in order; DPM-Solver++ 20 steps, fixed seeds) are
in `samples/`, the latest in `sample_grid.png`.

![samples](sample_grid.png)

| option | value |
| --- | --- |
{recipe_rows}

## Limitations

- Trained on one public dataset at low resolution; samples reproduce its biases and artefacts
  (see the dataset's provenance notes), and may be near-copies of training images.
- {DISCLAIMER}
"""
