"""Small uploads: how a classifier's accuracy depends on the input's own resolution, and the warning a
prediction carries when its input is below the size where that accuracy drops clearly.

An upload's **size** is its longer side in pixels (a classifier pads the image square, so the longer
side is the resolution it effectively gets). ``measure`` scores a classifier on labelled images reduced
to each size (Pillow's antialiased bicubic, as a viewer or screenshot tool exports a small copy), with
and without JPEG re-compression; the record (``accuracy_by_input_size``) is stored in the checkpoint's
``evaluation.json`` inside the held-out folder's entry, and written on its card by
``benchmarks/resolution.py --write``. ``warning_for`` reads it back for every prediction.

A size drops **clearly** when its accuracy is below the full-size accuracy by more than two standard
errors of the difference (binomial, the two accuracies treated as independent, which overstates the
error of a paired comparison and so warns only for real drops) and by at least 2 points. Inputs smaller
than the smallest size from which every larger measured size is clear get the warning, quoting the
accuracy at the largest measured size not above the input's (the conservative figure).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

#: The sizes (longer side, px) measured by default; "full" is the file as it is.
SIZES = (32, 48, 64, 96, 128)
JPEG_QUALITY = 75
#: A drop smaller than this is never called clear, however many images were measured.
MIN_DROP = 0.02


def reduce(image: np.ndarray, size: int | None, jpeg_quality: int | None = None) -> np.ndarray:
    """A uint8 (H, W, C) image as an upload of longer side ``size`` (None: unchanged), optionally JPEG
    re-compressed at ``jpeg_quality``."""
    arr = np.asarray(image)
    channels = arr.shape[2] if arr.ndim == 3 else 1
    pil = Image.fromarray(arr[..., 0] if channels == 1 else arr)
    if size is not None:
        h, w = arr.shape[:2]
        scale = size / max(h, w)
        if scale < 1:
            pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC, reducing_gap=None)
    if jpeg_quality is not None:
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=int(jpeg_quality))
        pil = Image.open(io.BytesIO(buf.getvalue()))
        pil.load()
    out = np.asarray(pil)
    return out[:, :, None] if out.ndim == 2 else out


def measure(clf, images: Sequence[np.ndarray], labels: Sequence[int], sizes=SIZES,
            jpeg_quality: int = JPEG_QUALITY, batch_size: int = 32) -> dict:
    """Accuracy of ``clf`` on ``images`` reduced to each size, plain and JPEG re-compressed.

    Returns:
        {"n", "sizes": [...], "jpeg_quality", "plain": {size: acc}, "jpeg": {size: acc}} with size keys
        as strings and "full" for the unreduced images; see ``threshold`` for the warning size.
    """
    labels = np.asarray(labels)
    record = {"n": int(len(labels)), "sizes": [int(s) for s in sizes], "jpeg_quality": int(jpeg_quality),
              "plain": {}, "jpeg": {}}
    for mode, quality in (("plain", None), ("jpeg", jpeg_quality)):
        for size in [*sizes, None]:
            batch = [reduce(im, size, quality) for im in images]
            probs = clf.predict_proba(batch, batch_size=batch_size)
            record[mode]["full" if size is None else str(size)] = round(float((probs.argmax(1) == labels).mean()), 4)
    record["warn_below"] = threshold(record)
    return record


def _clear_drop(acc: float, full: float, n: int) -> bool:
    se = math.sqrt(max(acc * (1 - acc), 1e-12) / n + max(full * (1 - full), 1e-12) / n)
    return full - acc > max(2 * se, MIN_DROP)


def threshold(record: dict) -> int | None:
    """The size (px) below which inputs get the warning: the smallest measured size from which no larger
    measured size (plain, no JPEG) drops clearly below full size. None: no measured size drops clearly."""
    plain, n = record["plain"], int(record["n"])
    full = plain["full"]
    sizes = sorted(int(s) for s in plain if s != "full")
    dropping = [s for s in sizes if _clear_drop(plain[str(s)], full, n)]
    if not dropping:
        return None
    above = [s for s in sizes if s > max(dropping)]
    return above[0] if above else max(dropping) + 1


def profile(checkpoint: str | Path) -> dict | None:
    """The checkpoint's ``accuracy_by_input_size`` record (from its ``evaluation.json``), or None."""
    try:
        records = json.loads((Path(checkpoint) / "evaluation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(records, dict):
        return None
    for folder, entry in records.items():
        if isinstance(entry, dict) and isinstance(entry.get("accuracy_by_input_size"), dict):
            return {**entry["accuracy_by_input_size"], "data": folder}
    return None


def warning_for(record: dict | None, shape: Sequence[int]) -> dict:
    """What a prediction says about its input's resolution: ``{"width", "height", "size", "low", "note"}``;
    ``low`` is true (and ``note`` a plain sentence with the measured figures) below the record's
    ``warn_below``; without a record, ``low`` is None (not measured) and the note says so."""
    height, width = int(shape[0]), int(shape[1])
    size = max(height, width)
    out = {"width": width, "height": height, "size": size, "low": None, "note": None}
    if not record:
        return out
    below = record.get("warn_below")
    plain = record.get("plain", {})
    if below is None or size >= int(below):
        out["low"] = False
        return out
    measured = sorted(int(s) for s in plain if s != "full")
    at = max([s for s in measured if s <= size], default=measured[0] if measured else None)
    if at is None:
        return out
    acc, full = plain[str(at)], plain["full"]
    shown = f"{width}x{height} px" if width != height else f"{size} px"
    near = "" if at == size else f" (measured at {at} px, the nearest size not above it)"
    out.update(low=True, accuracy=acc, accuracy_full=full, measured_at=at,
               note=(f"This scan is {shown}; at this size the classifier is right {acc:.0%} of the time{near}, "
                     f"against {full:.0%} on full-size scans (held-out images, "
                     f"{record.get('n', '?')} of them). Upload a larger export of the scan if you have one."))
    return out
