"""The image loader over a generated corpus of good and malformed files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from medsynth.errors import ImageLoadError
from medsynth.io import load_image, to_channels

from corpus import dicom as _dicom
from corpus import dicom_without_pixels


def _gradient(h=32, w=48):
    return np.tile(np.linspace(0, 255, w, dtype=np.float64), (h, 1))


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("TIFF", "tif"), ("WEBP", "webp")])
@pytest.mark.parametrize("channels", [1, 3])
def test_formats_rgb_source(tmp_path, fmt, suffix, channels):
    rgb = np.zeros((32, 48, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    rgb[8:24, 8:40, 1] = 100
    path = tmp_path / f"x.{suffix}"
    Image.fromarray(rgb).save(path, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    out = load_image(path, channels)
    assert out.shape == (32, 48, channels) and out.dtype == np.uint8
    expected = to_channels(rgb, channels).astype(int)
    tolerance = 0 if fmt in ("PNG", "BMP", "TIFF") else 12
    assert np.abs(out.astype(int) - expected).mean() <= max(tolerance, 0.5)


def test_gray_to_rgb_repeats_channel(tmp_path):
    gray = _gradient().astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png", 3)
    assert out.shape == (32, 48, 3)
    assert (out[..., 0] == gray).all() and (out[..., 1] == gray).all() and (out[..., 2] == gray).all()


def test_16bit_png_uses_full_range(tmp_path):
    # A 12-bit scan stored in 16 bits: values 0..4095 must still span 0..255, not come out black.
    values = (_gradient() / 255 * 4095).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "d16.png")
    out = load_image(tmp_path / "d16.png", 1)[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)  # monotone: no wrap-around


def test_float_tiff(tmp_path):
    Image.fromarray((_gradient() / 255.0 * 3.0 - 1.0).astype(np.float32), mode="F").save(tmp_path / "f.tif")
    out = load_image(tmp_path / "f.tif", 1)
    assert out.min() == 0 and out.max() == 255


def test_rgba_composited_over_black(tmp_path):
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:, :10, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png", 3)
    assert (out[:, :10] == 200).all() and (out[:, 10:] == 0).all()


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    out = load_image(tmp_path / "c.jpg", 3).astype(int)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60 and out[..., 2].mean() < 60


def test_palette_and_one_bit(tmp_path):
    pal = Image.fromarray(_gradient().astype(np.uint8)).convert("P")
    pal.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png", 1).shape == (32, 48, 1)
    bits = np.zeros((20, 20), dtype=bool)
    bits[:, 10:] = True
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    out = load_image(tmp_path / "b.png", 1)[..., 0]
    assert set(np.unique(out)) == {0, 255} and (out[:, 10:] == 255).all()


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("L", (20, 20), v) for v in (10, 240, 120)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert abs(int(load_image(tmp_path / "anim.gif", 1).mean()) - 10) <= 2


def test_bytes_and_stream_sources():
    buf = io.BytesIO()
    Image.new("L", (20, 20), 77).save(buf, format="PNG")
    assert load_image(buf.getvalue(), 1).mean() == 77
    buf.seek(0)
    assert load_image(buf, 3).shape == (20, 20, 3)


# -- DICOM --------------------------------------------------------------------------------------

def test_dicom_rescale_and_window(tmp_path):
    # Stored 0..2000 with slope 1, intercept -1024 -> HU -1024..976; lung-ish window 40 +/- 200.
    stored = np.tile(np.linspace(0, 2000, 64), (32, 1)).astype(np.uint16)
    path = _dicom(tmp_path / "ct.dcm", stored, slope=1, intercept=-1024, window=(40, 400))
    out = load_image(path, 1)[..., 0].astype(int)
    hu = stored.astype(float) - 1024
    expected = np.clip((hu - (40 - 200)) / 400 * 255, 0, 255)
    assert np.abs(out - expected).max() <= 1
    assert out[:, 0].max() == 0 and out[:, -1].min() == 255


def test_dicom_without_window_and_extensionless(tmp_path):
    stored = np.tile(np.linspace(100, 900, 40), (20, 1)).astype(np.uint16)
    path = _dicom(tmp_path / "IM0001", stored)
    out = load_image(path, 3)
    assert out.shape == (20, 40, 3) and out.min() == 0 and out.max() == 255


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = np.tile(np.linspace(0, 1000, 40), (20, 1)).astype(np.uint16)
    mono2 = load_image(_dicom(tmp_path / "m2.dcm", stored), 1)
    mono1 = load_image(_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1"), 1)
    assert (mono1.astype(int) == 255 - mono2.astype(int)).all()


def test_dicom_without_pixels(tmp_path):
    dicom_without_pixels(tmp_path / "report.dcm")
    with pytest.raises(ImageLoadError, match=r"report\.dcm: DICOM file has no pixel data"):
        load_image(tmp_path / "report.dcm")


# -- malformed files: each kind has its own clear message naming the file -------------------------

def _png_bytes(size=(40, 40)):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.png", b"", r"empty\.png: file is empty"),
        ("notes.png", b"these are my notes, not an image\n" * 4, r"notes\.png: not a recognised image"),
        ("cut.png", _png_bytes()[:300], r"cut\.png: image data is (truncated|corrupt)"),
        ("tiny.png", _png_bytes((30, 8)), r"tiny\.png: image is only 30x8 px; at least 16x16"),
        ("cut.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00\x10", r"cut\.dcm: DICOM"),
    ],
)
def test_malformed_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=message):
        load_image(path)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.jpg: image data is truncated"):
        load_image(tmp_path / "cut.jpg")


def test_decompression_bomb(tmp_path):
    # 9000 x 9000 1-bit zeros: a ~10 kB file that would decode to 81 M pixels, above the default cap.
    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    with pytest.raises(ImageLoadError, match=r"bomb\.png: image is 9000x9000 = 81,000,000 pixels, above the"):
        load_image(tmp_path / "bomb.png")


def test_pixel_cap_is_configurable(tmp_path, monkeypatch):
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setenv("MEDSYNTH_MAX_PIXELS", "5000")
    with pytest.raises(ImageLoadError, match="MEDSYNTH_MAX_PIXELS"):
        load_image(tmp_path / "big.png")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("L", (40, 20), 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "cam.jpg", exif=exif)
    assert load_image(tmp_path / "cam.jpg", 1).shape == (40, 20, 1)


def test_multiframe_dicom_middle_frame_by_default_any_frame_on_request(tmp_path):
    from pydicom import dcmread

    from medsynth.io import frame_count

    frames = np.stack([np.full((20, 24), v, np.uint16) for v in (100, 900, 500)])
    frames[1, :, :12] = 0  # middle frame: left half dark, so min-max gives 0 and 255
    frames[0, :10] = 0  # first frame: top half dark
    path = _dicom(tmp_path / "multi.dcm", frames[0])
    ds = dcmread(path)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    assert frame_count(path) == 3
    out = load_image(path, 1)[..., 0]
    assert out.shape == (20, 24) and (out[:, :12] == 0).all() and (out[:, 12:] == 255).all()
    first = load_image(path, 1, frame=0)[..., 0]
    assert (first[:10] == 0).all() and (first[10:] == 255).all()
    with pytest.raises(ImageLoadError, match=r"multi\.dcm: frame 3 does not exist; the file has 3 frames, numbered 0 to 2"):
        load_image(path, 1, frame=3)


def test_truncated_uncompressed_dicom_is_called_corrupt(tmp_path):
    stored = np.tile(np.linspace(0, 1000, 40), (20, 1)).astype(np.uint16)
    path = _dicom(tmp_path / "cut.dcm", stored)
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(ImageLoadError, match=r"cut\.dcm: DICOM") as exc:
        load_image(path)
    assert "pylibjpeg" not in str(exc.value)


def test_bad_pixel_cap_setting(tmp_path, monkeypatch):
    Image.new("L", (20, 20)).save(tmp_path / "a.png")
    monkeypatch.setenv("MEDSYNTH_MAX_PIXELS", "lots")
    with pytest.raises(ImageLoadError, match="MEDSYNTH_MAX_PIXELS must be a whole number"):
        load_image(tmp_path / "a.png")


def test_atomic_writes_are_readable_by_others(tmp_path):
    import os
    import stat

    from medsynth import atomic

    atomic.write_text(tmp_path / "card.md", "hello")
    mode = stat.S_IMODE(os.stat(tmp_path / "card.md").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask and (tmp_path / "card.md").read_text() == "hello"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_dir_replaces_whole_or_leaves_the_old_folder(tmp_path, monkeypatch):
    import os

    from medsynth import atomic

    target = tmp_path / "set"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):  # a failure while writing leaves the old folder and no temporary one
        with atomic.atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"] and (target / "old.txt").read_text() == "old"

    real_rename, calls = os.rename, []

    def flaky_rename(src, dst):  # moving the old folder aside works; renaming the new one in fails
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk gone")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", flaky_rename)
    with pytest.raises(OSError, match="disk gone"):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"] and sorted(p.name for p in target.iterdir()) == ["old.txt"]

    with atomic.atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["set"]
