"""Synthetic images say that they are synthetic: machine-readable provenance inside every PNG medsynth writes.

Two marks, both read by common tools:

- PNG text chunks ``medsynth:*``: ``synthetic`` ("true"), ``generator`` (the diffusion checkpoint), ``domain``,
  ``class``, ``seed``, ``sampler``, ``steps``, ``guidance``, ``start``, ``resolution``, ``upsampler`` (the
  second stage's checkpoint, when one ran), ``upsample_steps``, ``upsample_noise`` and ``version`` (medsynth's).
- An XMP packet (the ``XML:com.adobe.xmp`` iTXt chunk) with the IPTC digital source type
  ``http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia``, the marking that
  content-credential tools look for and that the EU AI Act's Article 50 transparency duty asks of generated
  images, plus ``dc:description`` and the generator as ``xmp:CreatorTool``.

Only the fields given are written, always in the same order, with no time stamp: the same seed still gives
the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from .. import atomic

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
PREFIX = "medsynth:"
FIELDS = ("synthetic", "generator", "domain", "class", "seed", "sampler", "steps", "guidance", "start",
          "resolution", "upsampler", "upsample_steps", "upsample_noise", "version")


def _version() -> str:
    from .. import __version__

    return __version__


def xmp_packet(fields: dict[str, Any]) -> str:
    """The XMP packet: IPTC digital source type, a description and the creator tool."""
    what = f"Synthetic {fields.get('domain', 'medical')} image ({fields.get('class', 'unlabelled')})"
    tool = f"medsynth {fields.get('version', _version())}: {fields.get('generator', 'diffusion model')}"
    return ('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
            f"<Iptc4xmpExt:DigitalSourceType>{DIGITAL_SOURCE_TYPE}</Iptc4xmpExt:DigitalSourceType>"
            f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(what)}. Not a real patient\'s scan; '
            "research use only.</rdf:li></rdf:Alt></dc:description>"
            f"<xmp:CreatorTool>{escape(tool)}</xmp:CreatorTool>"
            '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="r"?>')


def png_info(**fields: Any):
    """A ``PngInfo`` with the ``medsynth:*`` text chunks of ``fields`` (None values left out) and the XMP packet."""
    from PIL.PngImagePlugin import PngInfo

    values = {"synthetic": "true", **{k: v for k, v in fields.items() if v is not None}, "version": _version()}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown marking fields {unknown}; expected some of {FIELDS}")
    info = PngInfo()
    for key in FIELDS:
        if key in values:
            info.add_text(PREFIX + key, str(values[key]))
    info.add_itxt("XML:com.adobe.xmp", xmp_packet(values))
    return info


def save_marked_png(array: np.ndarray, path: str | os.PathLike, **fields: Any) -> None:
    """Write uint8 (H, W[, C]) as a PNG carrying the synthetic marks, atomically."""
    from PIL import Image

    img = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
    info = png_info(**fields)
    atomic.write_with(Path(path), lambda tmp: img.save(tmp, format="PNG", pnginfo=info))


def read_marking(path: str | os.PathLike) -> dict | None:
    """What a file says about being synthetic: {"synthetic": True, "digital_source_type", "by": "medsynth",
    fields...}, {"synthetic": True, "digital_source_type", "by": "XMP"} for another tool's IPTC mark, or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}) or {})
            xmp = text.get("XML:com.adobe.xmp") or img.info.get("xmp") or img.info.get("XML:com.adobe.xmp") or ""
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8", "replace")
    ours = {k[len(PREFIX):]: v for k, v in text.items() if k.startswith(PREFIX)}
    source = DIGITAL_SOURCE_TYPE if DIGITAL_SOURCE_TYPE in xmp else None
    if ours.get("synthetic") == "true":
        fields = {k: ours[k] for k in FIELDS if k in ours and k != "synthetic"}
        return {"synthetic": True, "by": "medsynth", "digital_source_type": source, **fields}
    if source:
        return {"synthetic": True, "by": "XMP", "digital_source_type": source}
    return None


def describe(marking: dict | None) -> str:
    """One line for people: what made the image, or that it carries no synthetic mark."""
    if not marking:
        return "no synthetic-image mark (no medsynth provenance, no IPTC trainedAlgorithmicMedia)"
    if marking.get("by") != "medsynth":
        return "marked as AI-generated (IPTC digital source type trainedAlgorithmicMedia in its XMP)"
    parts = [f"synthetic {marking.get('domain', '')} image".replace("  ", " ")]
    if marking.get("class"):
        parts.append(f"class {marking['class']}")
    if marking.get("generator"):
        parts.append(f"generator {marking['generator']}")
    if marking.get("seed"):
        parts.append(f"seed {marking['seed']}")
    if marking.get("upsampler"):
        parts.append(f"enlarged to {marking.get('resolution', '?')} px by {marking['upsampler']}")
    return "; ".join(parts) + f" (medsynth {marking.get('version', '?')})"
