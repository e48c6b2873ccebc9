"""Scans as scanners and archives write them (medsynth.scans through io.load_image): pydicom's own test
corpus, compressed DICOM of real images against the same pixels uncompressed, files without a DICOM
header, palette colour, malformed elements, multi-frame files and NIfTI volumes."""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsynth.errors import ImageLoadError
from medsynth.io import frame_count, load_image

ROOT = Path(__file__).resolve().parents[1]
GRAY = ROOT / "examples" / "brain_mri" / "glioma_00010.jpg"  # real scans shipped with the app (examples/README.md)
RGB = ROOT / "examples" / "all_blood" / "early_00003.jpg"


def _corpus() -> list[Path]:
    import pydicom

    return sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm"))


CORPUS = {p.name: p for p in _corpus()}
#: Compressed files of pydicom's corpus that must decode: JPEG-LS, 12-bit JPEG extended, JPEG baseline via
#: GDCM's writer, JPEG 2000, RLE.
MUST_DECODE = ["JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm", "MR_small_jpeg_ls_lossless.dcm",
               "SC_rgb_jls_lossy_line.dcm", "SC_rgb_jls_lossy_sample.dcm", "JPGExtended.dcm", "JPEG-lossy.dcm",
               "SC_rgb_jpeg_gdcm.dcm", "GDCMJ2K_TextGBR.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm",
               "SC_rgb_rle_16bit.dcm", "examples_jpeg2k.dcm", "SC_rgb_small_odd_jpeg.dcm"]


def _decode(path: Path, frame=None) -> np.ndarray:
    from medsynth.scans import decode_dicom, read_dicom

    return decode_dicom(read_dicom(path.read_bytes(), path.name), path.name, frame)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_file_of_pydicoms_corpus_reads_or_gets_one_clear_line(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom's raw warnings must not reach the user either
        try:
            image = load_image(CORPUS[name], 3)
        except ImageLoadError as exc:
            message = str(exc)
            assert message.startswith(f"{CORPUS[name]}: ") and "\n" not in message.split(" (")[0]
            return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@pytest.mark.parametrize("name", MUST_DECODE)
def test_compressed_files_of_the_corpus_decode(name):
    image = _decode(CORPUS[name])
    assert image.dtype == np.uint8 and min(image.shape[:2]) >= 3 and image.max() > image.min()


def test_the_corpus_counts():
    """Of the 78 files, those with pixels read; the rest are reports, plans, tiny, broken or truncated."""
    read = refused = 0
    for path in CORPUS.values():
        try:
            load_image(path)
            read += 1
        except ImageLoadError:
            refused += 1
    assert read >= 49 and read + refused == len(CORPUS)


def test_malformed_element_is_named_not_a_traceback():
    with pytest.raises(ImageLoadError, match=r"badVR\.dcm: DICOM element NumberOfFrames \(0028,0008\) has a malformed "
                                             r"value \('1A'"):
        load_image(CORPUS["badVR.dcm"])


def test_headerless_datasets_and_a_missing_transfer_syntax_are_read_by_content(tmp_path):
    from pydicom import dcmread

    # a real dataset written without preamble and file meta: read as DICOM although it has no 'DICM'
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    raw = DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, True
    write_dataset(raw, dcmread(CORPUS["CT_small.dcm"]))  # the bare dataset: no preamble, no file meta
    data = raw.getvalue()
    assert data[128:132] != b"DICM"
    (tmp_path / "IM0002").write_bytes(data)
    assert np.array_equal(load_image(tmp_path / "IM0002", 1), load_image(CORPUS["CT_small.dcm"], 1))
    # pydicom's own headerless file (one stray byte before the dataset)
    assert load_image(CORPUS["no_meta.dcm"], 1).shape[:2] == (128, 128)
    # datasets without pixels say so
    with pytest.raises(ImageLoadError, match="has no pixel data"):
        load_image(CORPUS["ExplVR_LitEndNoMeta.dcm"])


def test_palette_color_goes_through_its_lookup_table():
    from pydicom import dcmread
    from pydicom.pixels import apply_color_lut

    ds = dcmread(CORPUS["examples_palette.dcm"])
    expected = apply_color_lut(ds.pixel_array, ds)
    expected = (expected >> 8).astype(np.uint8) if expected.dtype != np.uint8 else expected
    image = load_image(CORPUS["examples_palette.dcm"], 3)
    assert image.shape == expected.shape and np.abs(image.astype(int) - expected).max() <= 1
    assert len({tuple(c) for c in image.reshape(-1, 3)[::97]}) > 10  # colours, not gray


def test_multi_frame_corpus_files_take_the_middle_frame_or_the_one_asked_for():
    path = CORPUS["SC_rgb_rle_2frame.dcm"]
    assert frame_count(path) == 2
    assert np.array_equal(load_image(path), load_image(path, frame=1))
    assert not np.array_equal(load_image(path, frame=0), load_image(path, frame=1))
    with pytest.raises(ImageLoadError, match="frame 2 does not exist; the file has 2 frames"):
        load_image(path, frame=2)


def _dataset(pixels: np.ndarray):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else 3
    ds.PhotometricInterpretation = "MONOCHROME2" if pixels.ndim == 2 else "RGB"
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    bits = 8 * pixels.dtype.itemsize
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def _save(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _jpeg_lossless(ds, pixels: np.ndarray):
    """JPEG lossless (process 14, SV1), encoded by libjpeg-turbo through imagecodecs: pydicom has no encoder."""
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    colour = {"colorspace": "RGB", "outcolorspace": "RGB"} if pixels.ndim == 3 else {}  # RGB kept, no YCbCr
    frame = imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=int(ds.BitsStored), **colour)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    return ds


def _compressed(pixels: np.ndarray, syntax: str):
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    ds = _dataset(pixels)
    if syntax == "jpeg-lossless":
        return _jpeg_lossless(ds, pixels)
    uid = {"rle": RLELossless, "jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless}[syntax]
    ds.compress(uid, pixels)
    return ds


def _real_pixels(kind: str) -> np.ndarray:
    if kind == "gray8":
        return np.asarray(Image.open(GRAY).convert("L").resize((96, 96)))
    if kind == "gray12":  # a 12-bit scan, as CT and MR store them
        return (np.asarray(Image.open(GRAY).convert("L").resize((96, 96))).astype(np.uint16) * 16 + 7)
    return np.asarray(Image.open(RGB).convert("RGB").resize((96, 96)))


@pytest.mark.parametrize("syntax", ["rle", "jpeg-ls", "jpeg2000", "jpeg-lossless"])
@pytest.mark.parametrize("kind", ["gray8", "gray12", "rgb"])
def test_lossless_compressed_dicom_gives_exactly_the_uncompressed_pixels(tmp_path, syntax, kind):
    pixels = _real_pixels(kind)
    plain = _save(_dataset(pixels), tmp_path / "plain.dcm")
    packed = _save(_compressed(pixels, syntax), tmp_path / f"{syntax}.dcm")
    from pydicom import dcmread

    assert dcmread(packed).file_meta.TransferSyntaxUID.is_compressed
    channels = 1 if pixels.ndim == 2 else 3
    assert np.array_equal(load_image(packed, channels), load_image(plain, channels))


def test_classify_gives_the_same_probabilities_for_compressed_and_uncompressed_dicom(tmp_path):
    from medsynth.classify import load_classifier
    from medsynth.evaluate import classify_files

    pixels = _real_pixels("gray12")
    files = [_save(_dataset(pixels), tmp_path / "plain.dcm")]
    files += [_save(_compressed(pixels, s), tmp_path / f"{s}.dcm") for s in ("rle", "jpeg-ls", "jpeg2000",
                                                                            "jpeg-lossless")]
    clf = load_classifier(ROOT / "checkpoints" / "brain_mri" / "classifier")
    results = classify_files(clf, files)
    assert all("error" not in r for r in results)
    assert all(r["probabilities"] == results[0]["probabilities"] for r in results[1:])


def test_a_missing_decoder_is_named(tmp_path, monkeypatch):
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder

    path = _save(_compressed(_real_pixels("gray8"), "jpeg-ls"), tmp_path / "ls.dcm")
    # as pydicom sees an environment without pyjpegls and pylibjpeg
    monkeypatch.setattr(JPEGLSLosslessDecoder, "_available", {})
    monkeypatch.setattr(JPEGLSLosslessDecoder, "_unavailable", {"pyjpegls": ("numpy", "pyjpegls")})
    with pytest.raises(ImageLoadError, match=r"ls\.dcm: compressed DICOM \(JPEG-LS Lossless Image Compression, "
                                             r"1\.2\.840\.10008\.1\.2\.4\.80\) cannot be decoded: it needs pyjpegls "
                                             r"\(pip install pyjpegls\)"):
        load_image(path, 1)


def test_broken_compressed_data_is_not_blamed_on_the_environment(tmp_path):
    from pydicom import dcmread
    from pydicom.encaps import encapsulate

    ds = dcmread(_save(_compressed(_real_pixels("gray8"), "jpeg2000"), tmp_path / "j2k.dcm"))
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])  # a J2K start, then nothing valid
    path = _save(ds, tmp_path / "bad_j2k.dcm")
    with pytest.raises(ImageLoadError, match=r"bad_j2k\.dcm: compressed DICOM \(JPEG 2000 Image Compression \(Lossless "
                                             r"Only\).* is installed but cannot read this file's data"):
        load_image(path, 1)


# --- NIfTI -----------------------------------------------------------------------------------------

def _volume(tmp_path, data: np.ndarray, name="head.nii", affine=None, compress=False, header=None) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    if header:
        for k, v in header.items():
            img.header[k] = v
    raw = img.to_bytes()
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def _mri_volume() -> np.ndarray:
    """A 3-D 'head' built from a real slice: 7 axial slices, the middle one the real image, one bright marker
    voxel block at the patient's right-anterior corner of every slice."""
    real = np.asarray(Image.open(GRAY).convert("L").resize((64, 48))).astype(np.int16) * 10  # rows: y, columns: x
    volume = np.zeros((64, 48, 7), np.int16)  # (x, y, z) in RAS
    for z in range(7):
        volume[:, :, z] = (real[::-1, :].T * (1 - abs(z - 3) / 6)).astype(np.int16)  # image rows top=anterior
    volume[60:, 44:, :] = 4000  # x high = patient's right, y high = anterior
    return volume


@pytest.mark.parametrize("compress", [False, True])
def test_nifti_middle_slice_radiological_view(tmp_path, compress):
    volume = _mri_volume()
    path = _volume(tmp_path, volume, "head.nii.gz" if compress else "head.nii", compress=compress)
    assert frame_count(path) == 7
    image = load_image(path, 1)[..., 0]
    assert image.shape == (48, 64)  # rows = anterior..posterior, columns = right..left
    assert image[:4, :4].min() == 255  # the patient's right-anterior marker: top left, as a viewer shows it
    assert image[-4:, -4:].max() < 255
    assert not np.array_equal(image, load_image(path, 1, frame=0)[..., 0])
    with pytest.raises(ImageLoadError, match="slice 7 does not exist; the file has 7 slices, numbered 0 to 6"):
        load_image(path, 1, frame=7)


def test_nifti_orientation_follows_the_affine(tmp_path):
    volume = _mri_volume()
    flipped = volume[::-1]  # stored left-to-right: the affine says x runs towards the patient's left (LAS)
    affine = np.diag([-1.0, 1, 1, 1])
    a = load_image(_volume(tmp_path, volume, "ras.nii"), 1)
    b = load_image(_volume(tmp_path, flipped, "las.nii", affine=affine), 1)
    assert np.array_equal(a, b)


def test_nifti_ct_gets_the_lung_window_and_cal_range_wins(tmp_path):
    ct = np.full((40, 40, 3), -1000, np.int16)
    ct[10:30, 10:30] = 40  # soft tissue
    image = load_image(_volume(tmp_path, ct, "chest.nii"), 1)[..., 0]
    lo, hi = -600 - 750, -600 + 750
    assert image[0, 0] == round((-1000 - lo) * 255 / (hi - lo)) and image[20, 20] == round((40 - lo) * 255 / (hi - lo))
    windowed = load_image(_volume(tmp_path, ct, "cal.nii", header={"cal_min": -1000, "cal_max": 40}), 1)[..., 0]
    assert windowed[0, 0] == 0 and windowed[20, 20] == 255


def test_nifti_refusals(tmp_path):
    with pytest.raises(ImageLoadError, match=r"4-D .* extract one 3-D volume"):
        load_image(_volume(tmp_path, np.zeros((20, 20, 4, 3), np.float32), "fmri.nii"))
    assert load_image(_volume(tmp_path, np.ones((20, 20, 4, 1), np.float32), "one.nii")).shape[:2] == (20, 20)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(_volume(tmp_path, np.zeros((20, 0, 4), np.float32), "empty.nii"))
    broken = _volume(tmp_path, _mri_volume(), "cut.nii.gz", compress=True)
    broken.write_bytes(broken.read_bytes()[:400])
    with pytest.raises(ImageLoadError, match=r"cut\.nii\.gz: "):
        load_image(broken)


def test_nifti_and_frames_through_the_cli(tmp_path, capsys):
    import json

    from medsynth.cli import main

    path = _volume(tmp_path, _mri_volume(), "head.nii.gz", compress=True)
    checkpoint = str(ROOT / "checkpoints" / "brain_mri" / "classifier")
    assert main(["classify", "--checkpoint", checkpoint, str(path), "--slice", "2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert lines[0]["file"] == str(path) and set(lines[0]["probabilities"]) == {"glioma", "meningioma", "notumor",
                                                                                   "pituitary"}
    assert main(["classify", "--checkpoint", checkpoint, str(path), "--frame", "9"]) == 2
    assert "slice 9 does not exist" in capsys.readouterr().err


def test_folders_list_nifti_files(tmp_path):
    from medsynth.data import list_images

    _volume(tmp_path, _mri_volume(), "a.nii.gz", compress=True)
    _volume(tmp_path, _mri_volume(), "b.nii")
    (tmp_path / "notes.gz").write_bytes(gzip.compress(b"hello"))
    assert [p.name for p in list_images(tmp_path)] == ["a.nii.gz", "b.nii"]
