"""Scoring a classifier checkpoint on a labelled folder, and classifying single files."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .classify import Classifier, load_classifier
from .data import scan_dataset
from .io import load_image
from .metrics import classification_metrics


def evaluate_folder(
    checkpoint: str | Path | Classifier,
    data: str | Path,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """The evaluation record of docs/cli.md: domain, n, accuracy, macro_f1, classes, per_class, confusion_matrix, seconds.

    Class folders and their order come from the checkpoint's config; a folder that is not one of
    its classes, or an unreadable image, raises an error naming it.
    """
    started = time.time()
    clf = checkpoint if isinstance(checkpoint, Classifier) else load_classifier(checkpoint, device)
    classes = clf.classes
    samples = scan_dataset(data, classes, require_all=False)
    missing = [c for i, c in enumerate(classes) if not any(s.label == i for s in samples)]
    if missing and progress:
        print(f"note: {data} has no images for class(es) {', '.join(missing)}; they count with support 0",
              file=sys.stderr)
    preds = []
    bar = tqdm(total=len(samples), desc="evaluating", unit="img", disable=not progress, leave=False)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images = [load_image(s.path, clf.config.channels) for s in chunk]
        preds.append(clf.predict_proba(images, batch_size=batch_size).argmax(axis=1))
        bar.update(len(chunk))
    bar.close()
    metrics = classification_metrics([s.label for s in samples], np.concatenate(preds), classes)
    return {
        "domain": clf.config.domain,
        "n": metrics["n"],
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "classes": metrics["classes"],
        "per_class": metrics["per_class"],
        "confusion_matrix": metrics["confusion_matrix"],
        "seconds": round(time.time() - started, 3),
    }


def classify_files(clf: Classifier, files: Sequence[str | Path], batch_size: int = 16,
                   checkpoint: str | Path | None = None, frame: int | None = None) -> list[dict]:
    """Per file: the headline (the top class, or "blank image" / "out of domain", for which the
    probabilities are not meaningful: ``ood.headline``), the top class, its probability, every class probability and the out-of-domain guard's
    verdict (``in_domain``: true, false, or null where no reference is found beside ``checkpoint`` or in
    the folder above it; ``out_of_domain``: the verdict with its score, threshold and note; ``synthetic``:
    what the file's synthetic-image mark says (``synthetic.marking.read_marking``), or null; ``resolution``:
    the input's own width, height and size (longer side) and, below the size where the checkpoint's
    measured accuracy drops clearly, ``low: true`` and a ``note`` quoting it (``resolution.warning_for``;
    ``low`` is null for a checkpoint without the measurement). A file that
    cannot be read gives ``{"file", "error"}`` (the reason, one line) and the others are still classified.
    ``frame``: which frame of multi-frame files / slice of volumes (``io.load_image``; default the middle)."""
    from . import ood
    from .errors import ImageLoadError
    from .resolution import profile, warning_for
    from .synthetic.marking import read_marking

    loaded, refused = [], {}
    for index, path in enumerate(files):
        try:
            loaded.append((index, path, load_image(path, clf.config.channels, frame=frame)))
        except ImageLoadError as exc:
            refused[index] = {"file": str(path), "error": str(exc)}
    images = [image for _, _, image in loaded]
    probs = clf.predict_proba(images, batch_size=batch_size) if images else []
    reference = ood.find_reference(checkpoint, clf.config.domain) if checkpoint is not None else None
    verdicts = ood.check(reference, images) if images else []
    sizes = profile(checkpoint) if checkpoint is not None else None
    results = dict(refused)
    for (index, path, image), p, verdict in zip(loaded, probs, verdicts):
        top = int(p.argmax())
        results[index] = {
            "file": str(path),
            "headline": ood.headline(clf.classes[top], verdict),
            "class": clf.classes[top],
            "probability": float(p[top]),
            "probabilities": {c: float(v) for c, v in zip(clf.classes, p)},
            "in_domain": verdict["in_domain"],
            "out_of_domain": verdict,
            "synthetic": read_marking(path),
            "resolution": warning_for(sizes, image.shape),
        }
    return [results[i] for i in range(len(files))]
