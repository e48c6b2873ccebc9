"""Reading images: one loader for PNG, JPEG, BMP, TIFF, WebP, GIF, DICOM and NIfTI.

``load_image`` returns a ``uint8`` array of shape (H, W, C) with C = 1 (grayscale) or 3 (RGB), the
channel count of the domain it is meant for. Whatever the file holds (16-bit or float pixels,
alpha, CMYK, a palette, 1-bit, several frames, a DICOM with rescale and window, a NIfTI volume), the
result is what a radiologist's viewer would show, reduced to 8 bits. A file with several pictures
(multi-frame DICOM, NIfTI slices, animated GIF/WebP, multi-page TIFF) gives one of them: ``frame``,
counted from 0; by default the middle frame of a DICOM and the middle axial slice of a volume, the first
frame of an animation or page of a TIFF. ``frame_count`` says how many there are. The format is
recognised by content, not by the file's name. A file that cannot be read raises ``ImageLoadError``
naming the file and the problem. DICOM and NIfTI specifics: ``medsynth.scans``.
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
from .scans import (DEFAULT_MAX_PIXELS, NiftiVolume, decode_dicom, dicom_frames, dicom_without_header, is_dicom,
                    is_nifti, max_pixels, read_dicom, scale_to_uint8)

__all__ = ["IMAGE_SUFFIXES", "DEFAULT_MAX_PIXELS", "MIN_SIDE", "ImageSource", "frame_count", "is_dicom",
           "is_image_name", "load_image", "max_pixels", "pil_to_array", "to_channels"]

ImageSource = Union[str, os.PathLike, bytes, BinaryIO]

#: File name suffixes treated as images when scanning folders (DICOM also without suffix).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom", ".gif",
                            ".nii", ".nii.gz"})
MIN_SIDE = 16
NOT_AN_IMAGE = "not a recognised image (expected PNG, JPEG, BMP, TIFF, WebP, GIF, DICOM or NIfTI)"


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether a file name has one of IMAGE_SUFFIXES (``scan.nii.gz`` included)."""
    name = Path(path).name.lower()
    return Path(name).suffix in IMAGE_SUFFIXES or name.endswith(".nii.gz")


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


def load_image(source: ImageSource, channels: int = 3, name: str | None = None,
               frame: int | None = None) -> np.ndarray:
    """Read an image file (path, bytes or binary stream) as uint8 (H, W, channels).

    Args:
        source: a path, the file's bytes or a binary stream.
        channels: 1 (grayscale) or 3 (RGB).
        name: how error messages name the file (default: the path as given). The app passes the
            uploaded file's own name, so a visitor never sees the server's temporary path.
        frame: which frame (multi-frame DICOM, animation, TIFF page) or axial slice (NIfTI) to read,
            counted from 0; None: the middle frame/slice of a scan, the first frame of an animation.

    Raises ``ImageLoadError`` for an empty, truncated, oversized, tiny or non-image file, and for a
    frame the file does not have.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    data, name = _read_bytes(source, name)
    if not data:
        raise ImageLoadError(f"{name}: file is empty (0 bytes)")
    kind, parsed = _open(data, name)
    if kind == "dicom":
        gray_or_rgb = decode_dicom(parsed, name, frame)
    elif kind == "nifti":
        gray_or_rgb = parsed.slice(frame)
    else:
        gray_or_rgb = _decode_pil(data, name, frame)
    h, w = gray_or_rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageLoadError(f"{name}: image is only {w}x{h} px; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    return to_channels(gray_or_rgb, channels)


def frame_count(source: ImageSource, name: str | None = None) -> int:
    """How many frames (DICOM, animation, TIFF pages) or axial slices (NIfTI) ``load_image`` can read."""
    data, name = _read_bytes(source, name)
    if not data:
        raise ImageLoadError(f"{name}: file is empty (0 bytes)")
    kind, parsed = _open(data, name)
    if kind == "dicom":
        return dicom_frames(parsed, name)
    if kind == "nifti":
        return parsed.slices
    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(getattr(img, "n_frames", 1) or 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return 1  # load_image gives the message


def _open(data: bytes, name: str):
    """("dicom", dataset), ("nifti", NiftiVolume) or ("pil", None), by the file's content."""
    if is_dicom(data):
        return "dicom", read_dicom(data, name)
    if is_nifti(data):
        return "nifti", NiftiVolume(data, name)
    if _pil_can_open(data):
        return "pil", None
    headerless = dicom_without_header(data)
    if headerless is not None:
        return "dicom", read_dicom(data, name, headerless)
    return "pil", None  # _decode_pil names what is wrong


def _pil_can_open(data: bytes) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.MAX_IMAGE_PIXELS = None
            Image.open(io.BytesIO(data)).close()
        return True
    except Exception:  # noqa: BLE001 - _decode_pil reports it
        return False


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


def _decode_pil(data: bytes, name: str, frame: int | None = None) -> np.ndarray:
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
            # Animated GIF/WebP/APNG and multi-page TIFF: the first frame unless asked.
            count = int(getattr(img, "n_frames", 1) or 1)
            if frame is not None and not 0 <= frame < count:
                raise ImageLoadError(f"{name}: frame {frame} does not exist; the file has {count} frame"
                                     f"{'s' if count != 1 else ''}, numbered 0 to {count - 1}")
            if frame:
                img.seek(frame)
            picture = img if frame else next(ImageSequence.Iterator(img))
            picture.load()
            picture = ImageOps.exif_transpose(picture)  # camera JPEGs: upright, as a viewer shows them
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: {NOT_AN_IMAGE}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(
            f"{name}: image is too large (a possible decompression bomb); downscale it first"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc)
        kind = "truncated" if "truncat" in msg.lower() else "corrupt"
        raise ImageLoadError(f"{name}: image data is {kind} and cannot be decoded ({msg})") from None
    return pil_to_array(picture)


def pil_to_array(img: Image.Image) -> np.ndarray:
    """Pillow image of any mode -> uint8 (H, W) gray or (H, W, 3) RGB."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit, 32-bit int or float pixels: stretch the image's own range to 8 bits.
        return scale_to_uint8(np.asarray(img))
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
