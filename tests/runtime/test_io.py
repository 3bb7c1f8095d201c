"""The runtime's image reader: formats, orientation, modes, bombs and broken files."""

import io

import numpy as np
import pytest
from PIL import Image

from psp_deploy.errors import ImageDecodeError
from psp_deploy.files import atomic_file
from psp_deploy.runtime import io as rio
from psp_deploy.runtime.io import read_image, write_image_atomic, write_npy_atomic


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.kron(base, np.ones((8, 8, 1), np.uint8))  # 48×64 blocks: survives lossy codecs


@pytest.mark.parametrize(
    "fmt,suffix,lossless",
    [
        ("PNG", ".png", True),
        ("BMP", ".bmp", True),
        ("TIFF", ".tif", True),
        ("JPEG", ".jpg", False),
        ("WEBP", ".webp", False),
    ],
)
def test_reads_every_supported_format(rgb, tmp_path, fmt, suffix, lossless):
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(rgb).save(path, format=fmt, **({} if lossless else {"quality": 95}))
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    if lossless:
        np.testing.assert_array_equal(out, rgb)
    else:  # lossy codecs blur the block edges: most pixels must still be close
        assert np.median(np.abs(out.astype(int) - rgb)) <= 3


def test_exif_orientation_is_applied(rgb, tmp_path):
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif, quality=95)
    out = read_image(path).astype(int)
    assert out.shape == (64, 48, 3)
    clockwise, counter = np.rot90(rgb, k=-1).astype(int), np.rot90(rgb, k=1).astype(int)
    assert np.median(np.abs(out - clockwise)) <= 3 < np.median(np.abs(out - counter))


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (16, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red-ish, bottom fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[3, 3], [255, 255, 255])


def test_palette_image(tmp_path, rgb):
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == rgb.shape and out.dtype == np.uint8


def test_16_bit_is_scaled_not_clipped(tmp_path):
    data = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "deep.png")  # mode I;16
    out = read_image(tmp_path / "deep.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])


def test_gray_mode_for_sketches(rgb, tmp_path):
    Image.fromarray(rgb).save(tmp_path / "s.png")
    out = read_image(tmp_path / "s.png", mode="L")
    assert out.shape == rgb.shape[:2]
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(rgb).convert("L")))


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("RGB", (200, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(rio, "MAX_PIXELS", 10_000)
    with pytest.raises(ImageDecodeError, match=r"big\.png: 200x100 pixels is over the limit"):
        read_image(tmp_path / "big.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_names_file_and_cause(rgb, tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match=rf"cut\.{fmt.lower()}: cannot decode image: (?i:.*truncated)"):
        read_image(path)


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg: not an image"):
        read_image(tmp_path / "notes.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="no such file"):
        read_image(tmp_path / "gone.png")


def test_atomic_writers_leave_only_complete_files(rgb, tmp_path):
    write_image_atomic(tmp_path / "a" / "x.png", rgb)
    write_npy_atomic(tmp_path / "a" / "x.npy", np.ones(3, np.float32))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.npy", "x.png"]
    np.testing.assert_array_equal(read_image(tmp_path / "a" / "x.png"), rgb)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), atomic_file(tmp_path / "a" / "y.png") as f:
        f.write(b"partial")
        raise Boom
    assert not (tmp_path / "a" / "y.png").exists()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.npy", "x.png"]
