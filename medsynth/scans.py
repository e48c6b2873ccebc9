"""Scans as scanners and archives write them: DICOM (compressed or not, with or without its file
header, any photometric interpretation, one frame or many) and NIfTI volumes, each reduced to the one
2-D picture a radiologist's viewer would show, as uint8 gray (H, W) or RGB (H, W, 3).

``medsynth.io.load_image`` calls these for any file that is DICOM or NIfTI by content (not by name).
What is read, exactly (``docs/inputs.md`` says the same for users):

- **DICOM**: every transfer syntax pydicom decodes with the packages in ``requirements.txt``:
  uncompressed (implicit/explicit VR, little/big endian), deflated, RLE lossless (pylibjpeg-rle),
  JPEG baseline / extended (12-bit) / lossless (pylibjpeg-libjpeg), JPEG-LS lossless and near-lossless
  (pyjpegls), JPEG 2000 lossless and lossy and HTJ2K (pylibjpeg-openjpeg). A syntax none of them
  decodes (MPEG-2, H.264, H.265 video, JPIP) is refused with a message naming it. Datasets written
  without the 128-byte preamble and file meta are read by content. MONOCHROME1/2 through the modality
  LUT (rescale slope/intercept) and the file's own window (or VOI LUT; else its value range);
  MONOCHROME1 inverted; PALETTE COLOR through its colour LUT; YBR_* to RGB; RGB as stored.
  Multi-frame files: one frame, the middle one unless asked (``frame``, counted from 0).
- **NIfTI-1 / NIfTI-2** (``.nii``, ``.nii.gz``, single file): reoriented to RAS+ (nibabel's closest
  canonical), one axial slice (the middle one unless asked, counted from 0 from inferior to superior),
  shown in radiological convention (anterior up, the patient's right on the image's left), pixels made
  square, windowed by the header's cal_min/cal_max when set, else a lung window (L -600, W 1500 HU)
  for a CT volume (one holding air, values <= -900) as the chest CT domain's images are, else the
  volume's own 0.5-99.5 percentile range of non-zero voxels (as a viewer's auto-window). A 2-D file
  is its one slice; a 4-D file with one volume is that volume; other 4-D or empty volumes are refused.
"""

from __future__ import annotations

import gzip
import io
import os
import warnings
import zlib

import numpy as np

from .errors import ImageLoadError

#: Pixel-count cap against decompression bombs; override with MEDSYNTH_MAX_PIXELS.
DEFAULT_MAX_PIXELS = 64_000_000
#: Lung window (centre, width) in Hounsfield units: how the chest CT domain's images were exported.
LUNG_WINDOW = (-600.0, 1500.0)


def max_pixels() -> int:
    value = os.environ.get("MEDSYNTH_MAX_PIXELS")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return int(value)
    except ValueError:
        raise ImageLoadError(f"MEDSYNTH_MAX_PIXELS must be a whole number of pixels, got {value!r}") from None


def scale_to_uint8(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map [lo, hi] (default: the data's own range) linearly onto 0..255."""
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if lo is None and finite.size else (lo or 0.0)
    hi = float(finite.max()) if hi is None and finite.size else (hi if hi is not None else 1.0)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(values, nan=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _pick(count: int, frame: int | None, name: str, what: str) -> int:
    """The requested frame/slice (default: the middle one), or a message naming the valid range."""
    if frame is None:
        return count // 2
    if not 0 <= frame < count:
        raise ImageLoadError(f"{name}: {what} {frame} does not exist; the file has {count} {what}s, "
                             f"numbered 0 to {count - 1}")
    return frame


# --- DICOM -----------------------------------------------------------------------------------------

def is_dicom(head: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def dicom_without_header(data: bytes):
    """The dataset, when ``data`` is a DICOM dataset written without preamble and file meta (possibly after
    up to three stray bytes, as some exporters leave); else None."""
    for skip in range(4):
        ds = _headerless_at(data[skip:])
        if ds is not None:
            return ds
    return None


def _headerless_at(data: bytes):
    import pydicom

    if len(data) < 8:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            if len(ds) == 0:
                return None
            tags = [int(t) for t in ds.keys()]
    except Exception:  # noqa: BLE001 - not DICOM at all
        return None
    # Real datasets begin with group 0008 (or a group length 0000/0008) and carry identifying elements;
    # bytes of another format forced through the parser yield a few garbage tags instead.
    plausible = ("SOPClassUID" in ds or "Modality" in ds or "PixelData" in ds
                 or ("Rows" in ds and "Columns" in ds))
    return ds if plausible and tags[0] >> 16 <= 0x0008 else None


#: The package that decodes each compressed transfer syntax through pydicom (all from PyPI).
_DECODERS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg with pylibjpeg-libjpeg",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg with pylibjpeg-libjpeg",  # JPEG extended (12-bit)
    "1.2.840.10008.1.2.4.57": "pylibjpeg with pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg with pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg with pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg with pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg with pylibjpeg-openjpeg",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg with pylibjpeg-openjpeg",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg with pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg with pylibjpeg-rle",  # RLE lossless (pydicom also has its own)
}


def _element(ds, keyword: str, name: str, convert=int, default=None):
    """One element's value, converted; a malformed value is one message naming the file and the element."""
    if keyword not in ds:
        return default
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about an invalid value before we report it
            value = ds[keyword].value
        if value is None or value == "":
            return default
        return convert(value)
    except Exception as exc:  # noqa: BLE001 - any parse or conversion failure of this one element
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            element = ds[keyword] if keyword in ds else None
            raw = getattr(element, "value", "?")
        tag = f" {element.tag}" if element is not None else ""
        raise ImageLoadError(f"{name}: DICOM element {keyword}{tag} has a malformed value ({raw!r}: {exc}); "
                             "fix it with a DICOM editor, or export the image as PNG") from None


def _first_number(value) -> float:
    return float(np.ravel(np.asarray(value, dtype=object))[0])


def _syntax(ds):
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return UID(uid) if uid else None


def _ensure_syntax(ds) -> None:
    """A dataset without a Transfer Syntax UID (no file meta) is decoded as the syntax it was parsed with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if _syntax(ds) is not None:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def read_dicom(data: bytes, name: str, ds=None):
    """Parse DICOM bytes (or take an already parsed dataset); a file pydicom cannot parse is one message."""
    import pydicom

    if ds is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(io.BytesIO(data))
        except Exception as exc:  # pydicom raises a variety of errors for broken files
            raise ImageLoadError(f"{name}: DICOM file cannot be parsed ({exc})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageLoadError(f"{name}: DICOM file has no pixel data (is it a report, a plan or a structured "
                             "document?)")
    return ds


#: JPEG processes whose frames libjpeg-turbo (through imagecodecs) also decodes, when pydicom's plugins
#: refuse a stream that bends the standard (e.g. a sequential 12-bit scan with a spectral selection).
_JPEG_FAMILY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                "1.2.840.10008.1.2.4.70"}


def _jpeg_fallback(ds, syntax, frames: int, index: int):
    """One frame decoded by libjpeg-turbo (imagecodecs) for a JPEG-family syntax; None when that fails too."""
    if syntax is None or str(syntax) not in _JPEG_FAMILY:
        return None
    try:
        import imagecodecs
        from pydicom.encaps import generate_frames

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, fragment in enumerate(generate_frames(ds.PixelData, number_of_frames=frames)):
                if i == index:
                    return np.asarray(imagecodecs.jpeg8_decode(fragment))
    except Exception:  # noqa: BLE001 - the caller reports the original decoder's error
        return None
    return None


def _undecodable(name: str, syntax, exc: Exception) -> ImageLoadError:
    """The message for pixel data no decoder could read: what is missing, or that the data is bad."""
    if syntax is None or not syntax.is_compressed:
        return ImageLoadError(f"{name}: DICOM pixel data is truncated or corrupt ({exc})")
    package = _DECODERS.get(str(syntax))
    if package is None:
        remedy = "medsynth has no decoder for this syntax (video or streamed pixel data)"
    elif "available plugins" in str(exc) or "exceptions were raised" in str(exc):
        remedy = f"its decoder ({package.split(' with ')[-1]}) is installed but cannot read this file's data, " \
                 "which is corrupt or bends the standard"
    else:
        remedy = (f"it needs {package} (pip install {package.replace(' with ', ' ')}), which medsynth's "
                  "requirements install; is this environment incomplete?")
    detail = " ".join(str(exc).split())
    return ImageLoadError(f"{name}: compressed DICOM ({syntax.name}, {syntax}) cannot be decoded: {remedy}; "
                          f"export the image as uncompressed DICOM or PNG ({detail})")


def dicom_frames(ds, name: str) -> int:
    """How many frames the dataset holds (1 for a single image)."""
    frames = _element(ds, "NumberOfFrames", name, int, 1)
    if frames < 1:
        raise ImageLoadError(f"{name}: DICOM element NumberOfFrames is {frames}; the file holds no image")
    return frames


def decode_dicom(ds, name: str, frame: int | None = None) -> np.ndarray:
    """One frame of a parsed dataset as a viewer shows it: uint8 gray (H, W) or RGB (H, W, 3)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    rows, cols = _element(ds, "Rows", name, int, 0), _element(ds, "Columns", name, int, 0)
    if rows * cols > max_pixels():
        raise ImageLoadError(
            f"{name}: DICOM image is {cols}x{rows} pixels, above the {max_pixels():,}-pixel cap; "
            "raise MEDSYNTH_MAX_PIXELS if you trust it"
        )
    if rows < 1 or cols < 1:
        raise ImageLoadError(f"{name}: DICOM image is {cols}x{rows} pixels (Rows/Columns missing or zero)")
    frames = dicom_frames(ds, name)
    index = _pick(frames, frame, name, "frame")
    photometric = _element(ds, "PhotometricInterpretation", name, lambda v: str(v).strip().upper(), "MONOCHROME2")
    bits_stored = _element(ds, "BitsStored", name, int, None)
    _ensure_syntax(ds)
    syntax = _syntax(ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array_options(index=index if frames > 1 else None, as_rgb=True)
            pixels = ds.pixel_array
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoder failures come in many types
        pixels = _jpeg_fallback(ds, syntax, frames, index)
        if pixels is None:
            raise _undecodable(name, syntax, exc) from None
        if pixels.ndim == 3 and photometric.startswith("YBR"):
            photometric = "RGB"  # libjpeg-turbo converted the colour space
    if frames > 1 and pixels.ndim == (4 if pixels.shape[-1] == 3 and photometric not in (
            "MONOCHROME1", "MONOCHROME2") else 3):
        pixels = pixels[index]  # a decoder that ignored the frame index
    if photometric.startswith("MONOCHROME"):
        try:
            # Stored value -> modality value (Hounsfield units for CT): v * RescaleSlope + RescaleIntercept.
            values = apply_modality_lut(pixels, ds).astype(np.float64)
        except Exception as exc:  # noqa: BLE001 - a malformed rescale or modality LUT
            raise ImageLoadError(f"{name}: DICOM rescale (RescaleSlope/RescaleIntercept or Modality LUT) is "
                                 f"malformed ({exc}); export the image as PNG") from None
        center = _element(ds, "WindowCenter", name, _first_number, None)
        width = _element(ds, "WindowWidth", name, _first_number, None)
        if center is not None and width is not None:
            width = max(width, 1.0)
            gray = scale_to_uint8(values, center - width / 2, center + width / 2)
        elif "VOILUTSequence" in ds:
            try:
                gray = scale_to_uint8(apply_voi_lut(values, ds))
            except Exception as exc:  # noqa: BLE001
                raise ImageLoadError(f"{name}: DICOM VOILUTSequence is malformed ({exc})") from None
        else:
            gray = scale_to_uint8(values)
        if photometric == "MONOCHROME1":  # MONOCHROME1: low values are white
            gray = 255 - gray
        return gray
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(pixels, ds)
        except Exception as exc:  # noqa: BLE001 - a missing or malformed palette
            raise ImageLoadError(f"{name}: DICOM PALETTE COLOR lookup table is missing or malformed ({exc})") from None
        return rgb if rgb.dtype == np.uint8 else scale_to_uint8(rgb, 0, 65535 if rgb.max() > 255 else 255)
    # RGB and YBR_* (pydicom converts YBR to RGB): 8-bit as stored, deeper data by its bit depth.
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ImageLoadError(f"{name}: unsupported DICOM photometric interpretation {photometric}")
    if pixels.dtype == np.uint8:
        return pixels
    depth = bits_stored or 8 * pixels.dtype.itemsize
    return scale_to_uint8(pixels, 0, float(2 ** depth - 1))


# --- NIfTI -----------------------------------------------------------------------------------------

_NIFTI_MAGIC = {344: (b"n+1\x00", b"ni1\x00"), 4: (b"n+2\x00", b"ni2\x00")}


def _gunzip_head(data: bytes, size: int) -> bytes:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, size)
    except zlib.error:
        return b""


def is_nifti(data: bytes) -> bool:
    """NIfTI-1 or NIfTI-2 by its magic (plain or gzip-compressed)."""
    head = _gunzip_head(data, 352) if data[:2] == b"\x1f\x8b" else data[:352]
    return (len(head) >= 348 and head[344:348] in _NIFTI_MAGIC[344]) or head[4:8] in _NIFTI_MAGIC[4]


class NiftiVolume:
    """A parsed NIfTI file, reoriented to RAS+, whose axial slices ``load_image`` reads one at a time."""

    def __init__(self, data: bytes, name: str):
        import nibabel as nib

        self.name = name
        head = _gunzip_head(data, 352) if data[:2] == b"\x1f\x8b" else data[:352]
        if head[344:348] == b"ni1\x00" or head[4:8] == b"ni2\x00":
            raise ImageLoadError(f"{name}: a NIfTI header whose voxels are in a separate .img file (a .hdr/.img "
                                 "pair); convert it to a single .nii file (e.g. nibabel.save(img, 'x.nii'))")
        if data[:2] == b"\x1f\x8b":
            try:
                with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
                    data = fh.read(max_pixels() * 64 + 1_000_000)  # a cap against gzip bombs
            except (OSError, EOFError) as exc:
                raise ImageLoadError(f"{name}: the gzip-compressed NIfTI file is truncated or corrupt ({exc})") from None
        kind = nib.Nifti2Image if head[4:8] == b"n+2\x00" else nib.Nifti1Image
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = nib.as_closest_canonical(kind.from_bytes(data))
                shape = tuple(int(s) for s in img.shape)
        except Exception as exc:  # noqa: BLE001 - nibabel's errors for broken headers vary
            raise ImageLoadError(f"{name}: NIfTI file cannot be read ({exc})") from None
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) > 4 or (len(shape) == 4):
            raise ImageLoadError(f"{name}: NIfTI volume is {len(shape)}-D {shape} (a time series or several "
                                 "volumes); extract one 3-D volume first (e.g. fslroi, or nibabel's slicer)")
        if len(shape) < 2 or 0 in shape:
            raise ImageLoadError(f"{name}: NIfTI volume is empty (shape {shape})")
        if shape[0] * shape[1] > max_pixels():
            raise ImageLoadError(f"{name}: NIfTI slices are {shape[0]}x{shape[1]} pixels, above the "
                                 f"{max_pixels():,}-pixel cap; raise MEDSYNTH_MAX_PIXELS if you trust it")
        if img.get_data_dtype().fields is not None or np.issubdtype(img.get_data_dtype(), np.complexfloating):
            raise ImageLoadError(f"{name}: NIfTI voxels of type {img.get_data_dtype()} (RGB or complex) are not "
                                 "read; convert the volume to one real value per voxel")
        self.img, self.shape = img, shape
        self.slices = shape[2] if len(shape) == 3 else 1
        self._window_range: tuple[float, float] | None = None  # read on the first slice: frame_count needs none

    def _voxels(self, index=None) -> np.ndarray:
        proxy = self.img.dataobj
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if len(self.img.shape) == 2:
                block = proxy[:, :]
            elif index is None:
                block = proxy[..., 0] if len(self.img.shape) == 4 else proxy[:, :, :]
            else:
                block = proxy[:, :, index, 0] if len(self.img.shape) == 4 else proxy[:, :, index]
        return np.asarray(block, dtype=np.float64)

    def _window(self) -> tuple[float, float]:
        header = self.img.header
        lo, hi = float(header.get("cal_min", 0) or 0), float(header.get("cal_max", 0) or 0)
        if hi > lo:
            return lo, hi
        volume = self._voxels()
        finite = volume[np.isfinite(volume)]
        if finite.size and finite.min() <= -900:  # CT in Hounsfield units (air is -1000)
            center, width = LUNG_WINDOW
            return center - width / 2, center + width / 2
        sample = finite[finite != 0][:: max(1, finite.size // 2_000_000)]
        if not sample.size:
            return 0.0, 1.0
        lo, hi = np.percentile(sample, [0.5, 99.5])
        return float(lo), float(hi)

    def slice(self, index: int | None = None) -> np.ndarray:
        """One axial slice as uint8 (H, W): anterior up, the patient's right on the left, square pixels."""
        k = _pick(self.slices, index, self.name, "slice")
        plane = self._voxels(k if len(self.img.shape) > 2 else None)
        if self._window_range is None:
            self._window_range = self._window()
        gray = scale_to_uint8(plane, *self._window_range).T[::-1, ::-1]  # (x, y) RAS -> rows A..P, columns R..L
        zooms = self.img.header.get_zooms()[:2]
        dx, dy = (float(z) if z and np.isfinite(z) and z > 0 else 1.0 for z in zooms)
        if abs(dx / dy - 1) > 0.01:  # non-square pixels: stretch the shorter side, as a viewer does
            from PIL import Image

            h, w = gray.shape
            size = (round(w * dx / min(dx, dy)), round(h * dy / min(dx, dy)))
            gray = np.asarray(Image.fromarray(gray).resize(size, Image.BICUBIC))
        return np.ascontiguousarray(gray)
