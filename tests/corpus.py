"""A generated corpus of good, odd and bad image files that drives every entry point's tests.

``build_corpus(folder)`` writes each case and returns ``Case(name, path, error)``: ``error`` is None for
a file every entry point must read (odd modes included), else a regex of the one message it must give,
which always starts with the file's own name.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Case:
    name: str
    path: Path
    error: str | None  # None: must load; else a regex of the message (after the file's name)


def dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", slope=None, intercept=None, window=None,
          signed=False):
    """A minimal valid DICOM Part 10 file with 16-bit grayscale pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_without_pixels(path):
    """A DICOM file with no pixel data (a structured report)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName = "Anonymous"
    ds.save_as(path, enforce_file_format=True)


def _encoded(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kw)
    return buf.getvalue()


def build_corpus(folder: Path, with_links: bool = True) -> list[Case]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    ramp = np.tile(np.linspace(0, 255, 40), (48, 1))
    cases: list[Case] = []

    def add(name: str, content: bytes | None = None, error: str | None = None, writer=None) -> None:
        path = folder / name
        if writer is not None:
            writer(path)
        elif content is not None:
            path.write_bytes(content)
        cases.append(Case(name, path, error))

    # good files in every mode medsynth promises to read
    add("plain.png", _encoded(rgb, "PNG"))
    add("photo.jpg", _encoded(rgb, "JPEG"))
    add("lossy.webp", _encoded(rgb, "WEBP"))
    add("gray16.png", writer=lambda p: Image.fromarray((ramp * 257).astype(np.uint16)).save(p))
    add("float.tif", writer=lambda p: Image.fromarray((ramp / 255).astype(np.float32)).save(p))
    add("cmyk.jpg", writer=lambda p: Image.fromarray(rgb).convert("CMYK").save(p, "JPEG"))
    add("palette.png", writer=lambda p: Image.fromarray(rgb).convert("P").save(p))
    add("onebit.png", writer=lambda p: Image.fromarray(ramp > 128).save(p))
    add("alpha.png", writer=lambda p: Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])).save(p))
    add("animated.gif", writer=lambda p: Image.fromarray(rgb).save(
        p, save_all=True, append_images=[Image.fromarray(255 - rgb)], duration=100))
    add("thin.png", _encoded(rng.integers(0, 256, (16, 900), dtype=np.uint8), "PNG"))
    add("ct.dcm", writer=lambda p: dicom(p, (ramp * 8).astype(np.uint16), slope=1, intercept=-1024,
                                         window=(40, 400)))
    add("mono1.dcm", writer=lambda p: dicom(p, (ramp * 4).astype(np.uint16), photometric="MONOCHROME1"))
    # hostile but harmless names: spaces, unicode, shell metacharacters
    for name in ("my scan (1).png", "bild ü 東京.png", "$(touch pwned); rm -rf ~.png", "a'b\"c`d.png"):
        add(name, _encoded(rgb, "PNG"))
    # bad files: one clear message each
    add("empty.png", b"", r"file is empty")
    add("notes.png", b"these are my notes, not an image\n" * 4, r"not a recognised image")
    add("page.html", b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
        r"not a recognised image")
    add("cut.png", _encoded(rgb, "PNG")[:300], r"image data is (truncated|corrupt)")
    big = _encoded(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), "JPEG")
    add("cut.jpg", big[: len(big) // 2], r"image data is truncated")
    add("bomb.png", writer=lambda p: Image.new("1", (9000, 9000)).save(p),
        error=r"image is 9000x9000 = 81,000,000 pixels, above the")
    add("tiny.png", _encoded(rgb[:8, :8], "PNG"), r"image is only 8x8 px; at least 16x16")
    add("fake.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00\x10", r"DICOM")
    add("report.dcm", writer=dicom_without_pixels, error=r"DICOM file has no pixel data")
    add("folder.png", writer=lambda p: p.mkdir(), error=r"is a folder, not an image file")
    if with_links and hasattr(os, "symlink"):
        add("dangling.png", writer=lambda p: os.symlink(folder / "no_such_target.png", p), error=r"no such file")
    return cases


def message_pattern(case: Case) -> str:
    """The whole message a case must produce: its own name, then what is wrong."""
    return re.escape(case.name) + ": " + case.error
