"""Paste-back: a generated face square put back into the photo its aligned crop came from.

The aligned crop is the photo sampled along the alignment's quad (align.crop_matrix: crop pixel →
photo point, the shrink of a large face included). A generated image of any square size covers the
same square, so its pixel (u, v) lands at crop_matrix · ((u + ½)·S/G − ½, …): the inverse warp puts
it back at the photo's own resolution, sub-pixel exact. A face smaller in the photo than the image
that replaces it is first shrunk with INTER_AREA to about its size in the photo (no aliasing from a
bilinear sample that skips pixels); a larger one is enlarged with a bicubic warp.

The blend mask is drawn on the generated image's grid and warped with it: "face", the hull of the
jaw line and of the brows raised to the hairline, its edge feathered across the hull's border; or
"square", the whole crop square, hard by default. Photo pixels where the warped mask is 0 (outside
its support) are the input's, bit for bit; the blend rounds once, from floats. No torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import cv2
import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from .align import AlignedFace, check_rgb, crop_matrix

MASKS = ("face", "square")
DEFAULT_FEATHER = {"face": 0.08, "square": 0.0}  # width of the soft edge, as a fraction of the square's side
FOREHEAD = 0.45  # brows raised toward the hairline by this fraction of the brow-to-chin distance
JAW, BROWS, CHIN = slice(0, 17), slice(17, 27), 8  # 68-point landmark indices


@dataclass(frozen=True)
class Placement:
    """Where one generated image goes in a photo: the photo region it touches, the map from the
    (possibly pre-shrunk) generated image to that region, and the blend mask on that region."""

    region: tuple[int, int, int, int]  # left, top, right, bottom in photo pixels (right/bottom exclusive)
    matrix: NDArray[np.float64]  # [2, 3] region pixel → generated pixel (the map warpAffine samples with)
    size: int  # side of the generated image as warped (after any INTER_AREA shrink)
    mask: NDArray[np.float32]  # [bottom − top, right − left] in [0, 1]; 0 outside the mask's support


def generated_to_photo(face: AlignedFace, photo_shape: tuple[int, ...], size: int) -> NDArray[np.float64]:
    """The affine map [2, 3]: pixel (u, v) of a size×size image covering ``face``'s crop square →
    photo point (x, y), pixel centres at integers in both."""
    crop = face.image.shape[0]
    to_photo = crop_matrix(face.quad, face.size, crop, photo_shape)
    k = crop / size  # generated pixel u covers crop pixels around (u + ½)·k − ½
    linear = to_photo[:, :2] * k
    matrix: NDArray[np.float64] = np.c_[linear, to_photo[:, 2] + to_photo[:, :2] @ np.full(2, 0.5 * k - 0.5)]
    return matrix


def _checked_generated(generated: NDArray[Any]) -> NDArray[np.uint8]:
    image = np.asarray(generated)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise InputError(
            f"a generated face must be a square uint8 RGB image [R, R, 3], got {image.dtype} {image.shape}"
        )
    return image


def _mask_kind(mask: str, feather: float | None) -> float:
    if mask not in MASKS:
        raise InputError(f"paste mask must be one of {', '.join(MASKS)}, got {mask!r}")
    feather = DEFAULT_FEATHER[mask] if feather is None else float(feather)
    if not 0.0 <= feather <= 0.5:
        raise InputError(f"feather is a fraction of the face square's side in [0, 0.5], got {feather}")
    return feather


def _smoothstep(t: NDArray[np.floating[Any]]) -> NDArray[np.floating[Any]]:
    t = np.clip(t, 0.0, 1.0)
    eased: NDArray[np.floating[Any]] = t * t * (3.0 - 2.0 * t)
    return eased


def square_mask(
    size: int, landmarks: NDArray[Any] | None, mask: str = "face", feather: float | None = None
) -> NDArray[np.float32]:
    """The blend mask on a size×size generated image, float32 in [0, 1]. ``landmarks`` are the face's
    68 points in that image's pixels (needed by "face"). The soft edge is ``feather`` × size wide:
    "face" spreads it across the hull's border, "square" keeps it inside the square."""
    feather = _mask_kind(mask, feather)
    ramp = feather * size
    if mask == "square":
        square = np.zeros((size + 2, size + 2), np.uint8)
        square[1:-1, 1:-1] = 1  # a ring of zeros: the distance to the square's edge
        if ramp < 1.0:
            return square[1:-1, 1:-1].astype(np.float32)
        depth = cv2.distanceTransform(square, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        return _smoothstep((depth - 0.5) / ramp).astype(np.float32)
    if landmarks is None:
        raise InputError("the face mask needs the face's landmarks")
    lm = np.asarray(landmarks, np.float64)
    raise_by = (lm[BROWS].mean(0) - lm[CHIN]) * FOREHEAD
    hull = cv2.convexHull(np.concatenate([lm[JAW], lm[BROWS] + raise_by]).astype(np.float32))
    shift = 4  # sub-pixel vertices: 1/16 px
    region = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(region, np.rint(hull * (1 << shift)).astype(np.int32), (1,), cv2.LINE_8, shift)
    if ramp < 1.0:
        return region.astype(np.float32)
    inside = cv2.distanceTransform(region, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform(1 - region, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    signed = np.where(region > 0, inside - 0.5, 0.5 - outside)  # + inside, − outside, 0 on the border
    return _smoothstep(signed / ramp + 0.5).astype(np.float32)


def place(
    face: AlignedFace,
    photo_shape: tuple[int, ...],
    generated_size: int,
    mask: str = "face",
    feather: float | None = None,
) -> Placement | None:
    """Where a generated_size² image of ``face`` lands in a photo of ``photo_shape``, and its mask;
    None when the face square lies wholly outside the photo."""
    feather = _mask_kind(mask, feather)
    h, w = photo_shape[:2]
    to_photo = generated_to_photo(face, photo_shape, generated_size)
    scale = float(np.sqrt(abs(np.linalg.det(to_photo[:, :2]))))  # photo pixels per generated pixel
    size = generated_size
    if scale < 1.0:  # the face is smaller in the photo: shrink first (INTER_AREA), then warp at ~1:1
        size = max(int(np.ceil(generated_size * scale)), 1)
        to_photo = generated_to_photo(face, photo_shape, size)
    edge = size - 0.5
    corners = np.array([[-0.5, -0.5], [-0.5, edge], [edge, edge], [edge, -0.5]]) @ to_photo[:, :2].T + to_photo[:, 2]
    left, top = np.floor(corners.min(0)).astype(int) - 1
    right, bottom = np.ceil(corners.max(0)).astype(int) + 2
    left, top, right, bottom = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
    if right <= left or bottom <= top:
        return None
    shifted = to_photo.copy()
    shifted[:, 2] -= (left, top)
    # region pixel → generated pixel (float64, as given: OpenCV's stubs do not say so)
    matrix = cast(NDArray[np.float64], cv2.invertAffineTransform(shifted))
    landmarks = None
    if mask == "face":
        inverse = cv2.invertAffineTransform(to_photo)
        landmarks = face.landmarks @ inverse[:, :2].T + inverse[:, 2]
    grid = square_mask(size, landmarks, mask, feather)
    region = (right - left, bottom - top)
    warped = cv2.warpAffine(
        grid, matrix, region, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT
    )
    return Placement((int(left), int(top), int(right), int(bottom)), matrix, size, np.clip(warped, 0.0, 1.0))


def _paste_into(
    out: NDArray[np.uint8], face: AlignedFace, generated: NDArray[Any], mask: str, feather: float | None
) -> None:
    generated = _checked_generated(generated)
    placement = place(face, out.shape, generated.shape[0], mask, feather)
    if placement is None:
        return
    left, top, right, bottom = placement.region
    if placement.size != generated.shape[0]:
        generated = cv2.resize(generated, (placement.size, placement.size), interpolation=cv2.INTER_AREA)
    warped = cv2.warpAffine(
        generated.astype(np.float32),
        placement.matrix,
        (right - left, bottom - top),
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,  # sharper than bilinear: about +3 dB on a round trip
        borderMode=cv2.BORDER_REPLICATE,  # the square's edge pixels blend with colours, not black
    )
    alpha = placement.mask[..., None]
    support = placement.mask > 0
    before = out[top:bottom, left:right]
    blended = before + (warped - before) * alpha
    before[support] = np.clip(np.rint(blended[support]), 0, 255).astype(np.uint8)


def paste(
    photo: NDArray[Any],
    face: AlignedFace,
    generated: NDArray[Any],
    *,
    mask: str = "face",
    feather: float | None = None,
) -> NDArray[np.uint8]:
    """The photo with ``generated`` (uint8 [R, R, 3], any R: the image drawn for ``face``'s crop)
    put back where the face was. ``mask`` "face" (soft, from the landmarks) or "square" (hard
    unless ``feather`` > 0); ``feather`` is the soft edge's width as a fraction of the square's side.
    Returns a new array; pixels outside the mask's support are the photo's, bit for bit."""
    return paste_all(photo, [face], [generated], mask=mask, feather=feather)


def paste_all(
    photo: NDArray[Any],
    faces: Sequence[AlignedFace],
    generated: Sequence[NDArray[Any]] | NDArray[Any],
    *,
    mask: str = "face",
    feather: float | None = None,
) -> NDArray[np.uint8]:
    """Every face of a photo put back into one copy of it, in order (a later face over an earlier
    one where they overlap). ``generated[i]`` is the image drawn for ``faces[i]``."""
    out = check_rgb(photo).copy()
    if len(faces) != len(generated):
        raise InputError(f"{len(faces)} faces but {len(generated)} generated images to paste")
    _mask_kind(mask, feather)
    for face, image in zip(faces, generated, strict=True):
        _paste_into(out, face, image, mask, feather)
    return out


def paste_mask(
    photo_shape: tuple[int, ...],
    faces: Sequence[AlignedFace],
    generated_size: int,
    *,
    mask: str = "face",
    feather: float | None = None,
) -> NDArray[np.float32]:
    """The blend masks of ``faces`` on the whole photo, float32 [H, W] (the largest per pixel): where
    it is 0 ``paste_all`` leaves the photo as it was. For previews, tests and debugging."""
    out = np.zeros(photo_shape[:2], np.float32)
    for face in faces:
        placement = place(face, photo_shape, generated_size, mask, feather)
        if placement is not None:
            left, top, right, bottom = placement.region
            np.maximum(out[top:bottom, left:right], placement.mask, out=out[top:bottom, left:right])
    return out
