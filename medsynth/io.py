"""Reading images: one loader for PNG, JPEG, BMP, TIFF, WebP and DICOM.

``load_image`` returns a ``uint8`` array of shape (H, W, C) with C = 1 (grayscale) or 3 (RGB), the
channel count of the domain it is meant for. Whatever the file holds (16-bit or float pixels,
alpha, CMYK, a palette, 1-bit, several frames, a DICOM with rescale and window), the result is
what a radiologist's viewer would show, reduced to 8 bits. A file that cannot be read raises
``ImageLoadError`` naming the file and the problem.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from .errors import ImageLoadError

ImageSource = Union[str, os.PathLike, bytes, BinaryIO]

#: File name suffixes treated as images when scanning folders (DICOM also without suffix).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom", ".gif"})
MIN_SIDE = 16
#: Pixel-count cap against decompression bombs; override with MEDSYNTH_MAX_PIXELS.
DEFAULT_MAX_PIXELS = 64_000_000


def max_pixels() -> int:
    value = os.environ.get("MEDSYNTH_MAX_PIXELS")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return int(value)
    except ValueError:
        raise ImageLoadError(f"MEDSYNTH_MAX_PIXELS must be a whole number of pixels, got {value!r}") from None


def is_dicom(head: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def _read_bytes(source: ImageSource, name: str | None = None) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), name or "<bytes>"
    if hasattr(source, "read"):
        return source.read(), name or str(getattr(source, "name", "<stream>"))
    path = Path(source)
    name = name or str(path)
    if not path.exists():
        raise ImageLoadError(f"{name}: no such file" + (" (a link to a missing file)" if path.is_symlink() else ""))
    if path.is_dir():
        raise ImageLoadError(f"{name}: is a folder, not an image file")
    try:
        return path.read_bytes(), name
    except OSError as exc:
        raise ImageLoadError(f"{name}: cannot be read ({exc.strerror or exc})") from None


def load_image(source: ImageSource, channels: int = 3, name: str | None = None) -> np.ndarray:
    """Read an image file (path, bytes or binary stream) as uint8 (H, W, channels).

    Args:
        source: a path, the file's bytes or a binary stream.
        channels: 1 (grayscale) or 3 (RGB).
        name: how error messages name the file (default: the path as given). The app passes the
            uploaded file's own name, so a visitor never sees the server's temporary path.

    Raises ``ImageLoadError`` for an empty, truncated, oversized, tiny or non-image file.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    data, name = _read_bytes(source, name)
    if not data:
        raise ImageLoadError(f"{name}: file is empty (0 bytes)")
    gray_or_rgb = _decode_dicom(data, name) if is_dicom(data) else _decode_pil(data, name)
    h, w = gray_or_rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageLoadError(f"{name}: image is only {w}x{h} px; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    return to_channels(gray_or_rgb, channels)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert uint8 (H, W), (H, W, 1) or (H, W, 3) to (H, W, channels).

    RGB to gray uses ITU-R 601 luma, as Pillow's ``convert("L")`` does; gray to RGB repeats it.
    """
    if image.ndim == 2:
        image = image[:, :, None]
    have = image.shape[2]
    if have == channels:
        return np.ascontiguousarray(image)
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    # L = R * 299/1000 + G * 587/1000 + B * 114/1000
    luma = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]


def _scale_to_uint8(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map [lo, hi] (default: the data's own range) linearly onto 0..255."""
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if lo is None and finite.size else (lo or 0.0)
    hi = float(finite.max()) if hi is None and finite.size else (hi if hi is not None else 1.0)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(values, nan=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _decode_pil(data: bytes, name: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Our cap (checked below, after Image.open has read only the header) replaces Pillow's, whose
            # fixed limit would override MEDSYNTH_MAX_PIXELS and give a vaguer message.
            Image.MAX_IMAGE_PIXELS = None
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels():
                raise ImageLoadError(
                    f"{name}: image is {w}x{h} = {w * h:,} pixels, above the {max_pixels():,}-pixel cap "
                    "(a possible decompression bomb); downscale it, or raise MEDSYNTH_MAX_PIXELS if you trust it"
                )
            # Animated GIF/WebP/APNG and multi-page TIFF: the first frame.
            frame = next(ImageSequence.Iterator(img))
            frame.load()
            frame = ImageOps.exif_transpose(frame)  # camera JPEGs: upright, as a viewer shows them
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"{name}: not a recognised image (expected PNG, JPEG, BMP, TIFF, WebP or DICOM)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(
            f"{name}: image is too large (a possible decompression bomb); downscale it first"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc)
        kind = "truncated" if "truncat" in msg.lower() else "corrupt"
        raise ImageLoadError(f"{name}: image data is {kind} and cannot be decoded ({msg})") from None
    return pil_to_array(frame)


def pil_to_array(img: Image.Image) -> np.ndarray:
    """Pillow image of any mode -> uint8 (H, W) gray or (H, W, 3) RGB."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit, 32-bit int or float pixels: stretch the image's own range to 8 bits.
        return _scale_to_uint8(np.asarray(img))
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode == "PA":
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("LA", "La"):
        arr = np.asarray(img.convert("LA")).astype(np.float32)
        # Composite over black, the background of a scan.
        return np.rint(arr[..., 0] * arr[..., 1] / 255.0).astype(np.uint8)
    if mode in ("RGBA", "RGBa"):
        arr = np.asarray(img.convert("RGBA")).astype(np.float32)
        return np.rint(arr[..., :3] * arr[..., 3:4] / 255.0).astype(np.uint8)
    if mode == "L":
        return np.asarray(img)
    if mode in ("RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return np.asarray(img.convert("RGB"))
    try:
        return np.asarray(img.convert("RGB"))
    except (ValueError, OSError) as exc:  # pragma: no cover - exotic modes
        raise ImageLoadError(f"image mode {mode!r} is not supported ({exc})") from None


def _decode_dicom(data: bytes, name: str) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises a variety of errors for broken files
        raise ImageLoadError(f"{name}: DICOM file cannot be parsed ({exc})") from None
    if "PixelData" not in ds:
        raise ImageLoadError(f"{name}: DICOM file has no pixel data (is it a report or a structured document?)")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels():
        raise ImageLoadError(
            f"{name}: DICOM image is {cols}x{rows} pixels, above the {max_pixels():,}-pixel cap; "
            "raise MEDSYNTH_MAX_PIXELS if you trust it"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        if frames > 1:
            ds.pixel_array_options(index=0)  # multi-frame: decode only the first frame, as for animations
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_compressed:
            raise ImageLoadError(
                f"{name}: compressed DICOM ({syntax.name}) cannot be decoded here ({exc}); install pylibjpeg and "
                "pylibjpeg-libjpeg, or convert the file to uncompressed DICOM or PNG"
            ) from None
        raise ImageLoadError(f"{name}: DICOM pixel data is truncated or corrupt ({exc})") from None
    if frames > 1 and pixels.ndim == (4 if str(ds.get("PhotometricInterpretation", "")).upper().startswith(("RGB", "YBR")) else 3):
        pixels = pixels[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith("MONOCHROME"):
        # Stored value -> modality value (Hounsfield units for CT): v * RescaleSlope + RescaleIntercept.
        values = apply_modality_lut(pixels, ds).astype(np.float64)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            center = float(np.ravel(ds.WindowCenter)[0])
            width = max(float(np.ravel(ds.WindowWidth)[0]), 1.0)
            gray = _scale_to_uint8(values, center - width / 2, center + width / 2)
        elif "VOILUTSequence" in ds:
            gray = _scale_to_uint8(apply_voi_lut(values, ds))
        else:
            gray = _scale_to_uint8(values)
        if photometric == "MONOCHROME1":  # MONOCHROME1: low values are white
            gray = 255 - gray
        return gray
    # Colour DICOM: pydicom converts YBR to RGB; scale non-8-bit data to 8 bits.
    rgb = pixels if pixels.dtype == np.uint8 else _scale_to_uint8(pixels)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ImageLoadError(f"{name}: unsupported DICOM photometric interpretation {photometric}")
    return rgb
