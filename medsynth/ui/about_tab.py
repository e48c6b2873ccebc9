"""The About tab: the study, the disclaimer, the data and its licences."""

from __future__ import annotations

import gradio as gr

from ..domains import DOMAINS
from .common import DISCLAIMER

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


def create_about_tab() -> None:
    with gr.Tab("About", id="about"):
        gr.Markdown(ABOUT)
