"""Input image → encoder tensor, per task, as the official inference transforms do.

RGB tasks: resize to 256 (PIL bilinear, as torchvision's Resize on PIL images),
[0, 1], normalise with mean 0.5 / std 0.5. Sketch: grayscale, resize, [0, 1], no
normalisation. Segmentation: a label map (class per pixel), resized as the official
code does (bilinear on the 8-bit map), one-hot over label_nc channels. Super-resolution
inputs are low-resolution faces and are upsampled to 256 by the same resize.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from ..config import ENCODER_INPUT_SIZE, PspConfig
from ..errors import InputError

SIZE = ENCODER_INPUT_SIZE
PIXEL_CHANNELS = {"rgb": 3, "sketch": 1}  # the input kinds that start from uint8 pixels (not label maps)


def _resized(array: NDArray[np.uint8]) -> NDArray[np.uint8]:
    if array.shape[:2] == (SIZE, SIZE):
        return array
    return np.asarray(Image.fromarray(array).resize((SIZE, SIZE), Image.Resampling.BILINEAR))


def to_gray(rgb: NDArray[Any]) -> NDArray[np.uint8]:
    """PIL's 'L' conversion (ITU-R 601-2 luma), which the official loader applies to sketches."""
    return np.asarray(Image.fromarray(rgb).convert("L"))


def check_pixel_kind(kind: str) -> None:
    if kind not in PIXEL_CHANNELS:
        raise InputError(
            f"only {' and '.join(PIXEL_CHANNELS)} inputs are uint8 pixels; {kind} inputs are prepared on the host"
        )


def face_pixels(image: NDArray[Any], kind: str) -> NDArray[np.uint8]:
    """A photo (kind rgb) or sketch as the encoder sees it before normalising: resized to uint8
    [256, 256, 3], or a sketch's PIL grayscale [256, 256, 1]."""
    check_pixel_kind(kind)
    image = np.asarray(image)
    if kind == "rgb":
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {list(image.shape)}")
        return _resized(image)
    gray = to_gray(image) if image.ndim == 3 else image
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise InputError(f"expected a uint8 sketch [H, W] or [H, W, 3], got {image.dtype} {list(image.shape)}")
    return _resized(gray)[..., None]


# float32 stays float32 through arithmetic with Python floats; numpy's stubs widen it to floating[Any], so the
# results are restated as float32 (astype with copy=False: no copy).
def preprocess_rgb(rgb: NDArray[Any]) -> NDArray[np.float32]:
    x = face_pixels(rgb, "rgb").astype(np.float32) / 255.0
    return ((x - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32, copy=False)


def preprocess_sketch(image: NDArray[Any]) -> NDArray[np.float32]:
    x = face_pixels(image, "sketch").astype(np.float32).transpose(2, 0, 1) / 255.0
    return x.astype(np.float32, copy=False)


def preprocess_labels(labels: NDArray[Any], label_nc: int) -> NDArray[np.float32]:
    if labels.ndim == 3:
        labels = to_gray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"expected an integer label map [H, W], got {labels.dtype} {list(labels.shape)}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= label_nc:
        raise InputError(f"label values must lie in [0, {label_nc - 1}], found {labels.min()}..{labels.max()}")
    resized = _resized(labels.astype(np.uint8))
    one_hot: NDArray[np.bool_] = resized[None] == np.arange(label_nc, dtype=np.uint8)[:, None, None]
    return one_hot.astype(np.float32)


def preprocess(image: NDArray[Any], config: PspConfig) -> NDArray[np.float32]:
    """One image → [C, 256, 256] float32 for the encoder of ``config``."""
    image = np.asarray(image)
    if config.input_kind == "rgb":
        return preprocess_rgb(image)
    if config.input_kind == "sketch":
        return preprocess_sketch(image)
    return preprocess_labels(image, config.label_nc)


def to_uint8(images: NDArray[np.float32]) -> NDArray[np.uint8]:
    """[N, 3, H, W] in [−1, 1] → [N, H, W, 3] uint8 (C-contiguous, as image libraries expect), truncating
    as the official tensor2im does."""
    scaled = np.clip((images + 1.0) / 2.0, 0.0, 1.0) * 255.0
    return scaled.transpose(0, 2, 3, 1).astype(np.uint8, order="C")
