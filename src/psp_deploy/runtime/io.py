"""The one image reader (and writer) of the runtime.

Reads JPEG, PNG, WebP, BMP and TIFF through Pillow; applies EXIF orientation; turns
grayscale, palette, RGBA (composited on white) and 16-bit images into 8-bit RGB (or
8-bit gray); refuses decompression bombs; and reports any failure as ImageDecodeError
naming the file and the cause.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError, ImageTooLargeError
from ..files import atomic_file

MAX_PIXELS = 100_000_000  # ~ a 10000×10000 photo; far beyond any camera's single frame
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float modes → 8-bit L, scaling rather than clipping."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        data = np.asarray(img, dtype=np.uint32)
        bits = 16 if img.mode.startswith("I;16") or data.max(initial=0) < 65536 else 32
        return Image.fromarray((data >> (bits - 8)).astype(np.uint8), "L")
    if img.mode == "F":
        data = np.nan_to_num(np.asarray(img, dtype=np.float32))
        scale = 255.0 if data.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(data * scale, 0, 255).astype(np.uint8), "L")
    return img


def _composite(img: Image.Image) -> Image.Image:
    """Transparent pixels become white: a face on a transparent background reads naturally."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img


def read_image(path: str | Path, mode: str = "RGB") -> NDArray[np.uint8]:
    """Read an image file as uint8 [H, W, 3] (mode "RGB") or [H, W] (mode "L")."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _decode(f, str(path), mode)
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{path}: is a directory, not an image") from None


def decode_image(
    data: bytes, name: str = "image", mode: str = "RGB", max_pixels: int | None = None
) -> NDArray[np.uint8]:
    """Decode an encoded image (the bytes of a JPEG, PNG, ... file) with the same checks as files;
    ``max_pixels`` (default MAX_PIXELS) is checked against the header, before any pixel is decoded."""
    return _decode(io.BytesIO(data), name, mode, max_pixels)


def _decode(stream: BinaryIO, name: str, mode: str, max_pixels: int | None = None) -> NDArray[np.uint8]:
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as img:
                if img.format not in FORMATS:
                    raise ImageDecodeError(f"{name}: unsupported image format {img.format}")
                if img.width * img.height > max_pixels:
                    raise ImageTooLargeError(
                        f"{name}: {img.width}x{img.height} pixels is over the limit of {max_pixels:,} "
                        "(a decompression bomb or a panorama; downscale it first)"
                    )
                img.load()
                img = _to_8bit(ImageOps.exif_transpose(img))
                return np.array(_composite(img).convert(mode))
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not an image (or a format Pillow cannot identify)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # Pillow's own check, at open
        raise ImageTooLargeError(f"{name}: {err} (a decompression bomb or a panorama; downscale it first)") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageDecodeError(f"{name}: cannot decode image: {err}") from None


def write_image_atomic(path: str | Path, rgb: NDArray[np.uint8]) -> None:
    """Write an image in the format its suffix names (PNG by default), atomically."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    with atomic_file(path) as f:
        Image.fromarray(rgb).save(f, format=fmt)


def write_npy_atomic(path: str | Path, array: NDArray[Any]) -> None:
    with atomic_file(path) as f:
        np.save(f, array, allow_pickle=False)
