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

With a signing certificate configured (``MEDSYNTH_C2PA_CERT``: a PEM chain, the signer's certificate first;
``MEDSYNTH_C2PA_KEY``: its PEM private key; ``MEDSYNTH_C2PA_ALG``: es256 (default), es384, ps256, ed25519;
``MEDSYNTH_C2PA_TSA``: an optional time-stamp authority URL), every PNG also carries a signed C2PA manifest
(``c2pa-python``): a ``c2pa.created`` action with the same IPTC digital source type and the generation fields
as a ``medsynth.generation`` assertion. A signed manifest holds a time and a signature, so signed files differ
from run to run; without the certificate nothing changes. Any of these marks can be stripped by re-encoding
the image: they say what a file is, they cannot stop anyone from removing them.
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


def c2pa_settings() -> dict | None:
    """The configured C2PA signer ({cert, key, alg, tsa}) from the environment, or None when none is set."""
    from ..errors import MedsynthError

    cert, key = os.environ.get("MEDSYNTH_C2PA_CERT"), os.environ.get("MEDSYNTH_C2PA_KEY")
    if not cert and not key:
        return None
    if not (cert and key):
        raise MedsynthError("C2PA signing needs both MEDSYNTH_C2PA_CERT (PEM certificate chain) and "
                            "MEDSYNTH_C2PA_KEY (PEM private key); one of them is not set")
    try:
        return {"cert": Path(cert).read_bytes(), "key": Path(key).read_bytes(),
                "alg": os.environ.get("MEDSYNTH_C2PA_ALG", "es256").lower(), "tsa": os.environ.get("MEDSYNTH_C2PA_TSA")}
    except OSError as exc:
        raise MedsynthError(f"C2PA signing: cannot read {exc.filename} ({exc.strerror})") from None


def c2pa_sign(png: bytes, fields: dict[str, Any], settings: dict, title: str = "synthetic.png") -> bytes:
    """The PNG with a signed C2PA manifest: ``c2pa.created`` by trainedAlgorithmicMedia, and the fields."""
    import io
    import json

    import c2pa

    from ..errors import MedsynthError

    values = {"synthetic": "true", **{k: str(v) for k, v in fields.items() if v is not None}, "version": _version()}
    manifest = {
        "claim_generator_info": [{"name": "medsynth", "version": _version()}],
        "title": title, "format": "image/png",
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.created",
                                                            "digitalSourceType": DIGITAL_SOURCE_TYPE}]}},
            {"label": "medsynth.generation", "data": {k: values[k] for k in FIELDS if k in values}},
        ],
    }
    try:
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg=settings["alg"].encode(), sign_cert=settings["cert"],
                                                           private_key=settings["key"],
                                                           ta_url=(settings.get("tsa") or "").encode() or None))
        out = io.BytesIO()
        c2pa.Builder(json.dumps(manifest)).sign(signer, "image/png", io.BytesIO(png), out)
    except Exception as exc:  # noqa: BLE001 - c2pa raises its own error types for bad keys and certificates
        raise MedsynthError(f"C2PA signing failed ({exc}); check MEDSYNTH_C2PA_CERT / MEDSYNTH_C2PA_KEY / "
                            "MEDSYNTH_C2PA_ALG") from None
    return out.getvalue()


def save_marked_png(array: np.ndarray, path: str | os.PathLike, **fields: Any) -> None:
    """Write uint8 (H, W[, C]) as a PNG carrying the synthetic marks (and, when a certificate is configured,
    a signed C2PA manifest), atomically."""
    import io

    from PIL import Image

    img = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
    info = png_info(**fields)
    settings = c2pa_settings()
    if settings is None:
        atomic.write_with(Path(path), lambda tmp: img.save(tmp, format="PNG", pnginfo=info))
        return
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    signed = c2pa_sign(buf.getvalue(), fields, settings, Path(path).name)
    atomic.write_with(Path(path), lambda tmp: Path(tmp).write_bytes(signed))


def read_c2pa(path: str | os.PathLike) -> dict | None:
    """The file's C2PA manifest in brief ({"claim_generator", "digital_source_type", "signed_by",
    "validation_state"}), or None when it has none."""
    import json

    try:
        import c2pa

        record = json.loads(c2pa.Reader(str(path)).json())  # the format from the file (PNG, JPEG, WebP, ...)
    except Exception:  # noqa: BLE001 - no manifest, not a PNG, or c2pa not installed
        return None
    manifest = (record.get("manifests") or {}).get(record.get("active_manifest") or "", {})
    source = None
    for assertion in manifest.get("assertions", []):
        if assertion.get("label", "").startswith("c2pa.actions"):
            for action in assertion.get("data", {}).get("actions", []):
                source = source or action.get("digitalSourceType")
    generator = (manifest.get("claim_generator_info") or [{}])[0]
    return {"claim_generator": f"{generator.get('name', '?')} {generator.get('version', '')}".strip(),
            "digital_source_type": source, "signed_by": (manifest.get("signature_info") or {}).get("issuer"),
            "validation_state": record.get("validation_state")}


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
    credentials = read_c2pa(path)
    extra = {"c2pa": credentials} if credentials else {}
    if ours.get("synthetic") == "true":
        fields = {k: ours[k] for k in FIELDS if k in ours and k != "synthetic"}
        return {"synthetic": True, "by": "medsynth", "digital_source_type": source, **fields, **extra}
    if source:
        return {"synthetic": True, "by": "XMP", "digital_source_type": source, **extra}
    if credentials and credentials.get("digital_source_type") == DIGITAL_SOURCE_TYPE:
        return {"synthetic": True, "by": "C2PA", "digital_source_type": DIGITAL_SOURCE_TYPE, **extra}
    return None


def describe(marking: dict | None) -> str:
    """One line for people: what made the image, or that it carries no synthetic mark."""
    if not marking:
        return "no synthetic-image mark (no medsynth provenance, no IPTC trainedAlgorithmicMedia)"
    signed = marking.get("c2pa")
    credential = (f"; signed C2PA manifest by {signed.get('signed_by') or 'an unnamed signer'} "
                  f"({signed.get('validation_state') or 'not validated'})") if signed else ""
    if marking.get("by") == "C2PA":
        return "marked as AI-generated (trainedAlgorithmicMedia in its C2PA manifest)" + credential
    if marking.get("by") != "medsynth":
        return "marked as AI-generated (IPTC digital source type trainedAlgorithmicMedia in its XMP)" + credential
    parts = [f"synthetic {marking.get('domain', '')} image".replace("  ", " ")]
    if marking.get("class"):
        parts.append(f"class {marking['class']}")
    if marking.get("generator"):
        parts.append(f"generator {marking['generator']}")
    if marking.get("seed"):
        parts.append(f"seed {marking['seed']}")
    if marking.get("upsampler"):
        parts.append(f"enlarged to {marking.get('resolution', '?')} px by {marking['upsampler']}")
    return "; ".join(parts) + f" (medsynth {marking.get('version', '?')})" + credential
