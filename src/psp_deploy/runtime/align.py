"""FFHQ face alignment: the official pSp/FFHQ crop, computed with OpenCV.

Geometry and constants follow the official procedure (scripts/align_all_parallel.py):
the oriented square from the eye and mouth landmarks, shrink, crop, reflect padding
blended toward a blur and the median colour, then one warp to the output size. Speed
comes from detecting faces on a downscaled copy (a face small on it is found again at
full resolution), OpenCV resizes and blurs instead of PIL/scipy, and a single affine warp.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
from numpy.typing import NDArray

from ..errors import BackendUnavailableError, InputError, NoFaceError

Box = tuple[int, int, int, int]  # left, top, right, bottom, in photo pixels
Pixels = NDArray[np.uint8]  # an image, [H, W, 3] RGB (or a crop of one)
Points = NDArray[np.float64]  # [N, 2] (x, y) in photo pixels: landmarks, a crop square's corners
FACE_POLICIES = ("largest", "best", "last")
POLICY_WORDS = {  # how each face policy reads in "3 faces found; took …"
    "largest": "the largest",
    "best": "the best-scoring detection",
    "last": "the last detection, as the official script does",
}
# The notes on a crop (AlignedFace.warnings). Padding (the part of the crop outside the photo, filled
# with the photo's mirrored edges faded toward a blur) holds no detail, so softness counts only the
# photo pixels inside the crop: a crop q px across with a share p of its area outside the photo,
# warped to S px, spreads (1 - p)·q² photo pixels over S² output pixels, an effective upscale of
# S / q / sqrt(1 - p). Above UPSCALE_WARNING (less than one photo pixel per 2×2 output pixels) the
# result is soft: a face upscaled 2.1× with no padding, or 1.75× with a quarter of the crop outside the
# photo (2.02×). A crop that is not soft but has PADDING_WARNING or more of its area outside the photo
# gets a note of its own: the result's borders come out blurred and made up (from a fifth on,
# mirrored hair shows along the edges; see tests/runtime/test_align_notes.py).
UPSCALE_WARNING = 2.0
PADDING_WARNING = 0.2  # share of the crop's area outside the photo
PADDING_MENTION = 0.05  # a soft note names the padding from this share on
# dlib's boxes snap to a grid of HOG cells (about a tenth of the box at the pyramid level that
# finds the face) and its landmarks move with the box: a 1 px shift of a photo moves the official
# procedure's crop by 1-3 % of the inter-ocular distance. Faces near the smallest the detector finds
# on the shrunken copy land farther off on average (30 faces in group photos: 1.6 %, against 1.3 %
# for single official runs), so they are found again at full resolution, as officially, in regions
# whose origins differ by half a cell, and the median landmarks are kept (0.85 %).
REFINE_BELOW = 64  # px: box side on the detection copy under which a face is found again
REFINE_MARGIN = 0.3  # context around the box for the full-resolution detector, in box sides
REFINE_SHIFTS = ((0, 0), (1, 0), (0, 1), (1, 1))  # region origin shifts, in box sides / 20 (half a cell)
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
ALIGN_EXTRA_HINT = "install the align extra: pip install 'psp-deploy[align]' (dlib-bin, face_recognition_models)"


@dataclass(frozen=True)
class AlignedFace:
    image: Pixels  # [S, S, 3] RGB
    landmarks: Points  # [68, 2], in the input photo's pixel coordinates
    quad: Points  # [4, 2] corners (top-left, bottom-left, bottom-right, top-right) in the photo
    box: Box  # the detector's box (on the detection copy, scaled to the photo)
    faces_found: int
    warnings: tuple[str, ...] = ()  # what a user should know about this input (several faces, a soft or padded crop)

    @property
    def size(self) -> float:
        """The crop square's side in photo pixels (the official ``qsize``)."""
        return float(np.hypot(*(self.quad[3] - self.quad[0])))


@dataclass(frozen=True)
class LocatedFace:
    """A detected face before its crop is warped: what ``FaceAligner.locate`` finds per face."""

    box: Box  # the detector's box, in photo pixels
    score: float  # the detector's score
    landmarks: Points  # [68, 2], in photo pixels
    quad: Points  # [4, 2] the crop square (ffhq_quad of the landmarks), in photo pixels
    size: float  # the crop square's side in photo pixels


def predictor_path() -> Path:
    """The 68-point model inside the face_recognition_models package, found without importing it
    (its __init__ needs pkg_resources, which new setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError(f"face alignment needs the 68-point landmark model; {ALIGN_EXTRA_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise BackendUnavailableError(f"{path} is missing; reinstall face_recognition_models")
    return path


def ffhq_quad(landmarks: NDArray[Any]) -> tuple[Points, float]:
    """The official oriented crop square from 68 landmarks: (quad [4, 2], side length)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


def _shrink(img: Pixels, quad: Points, qsize: float, size: int) -> tuple[Pixels, Points, float]:
    shrink = int(np.floor(qsize / size * 0.5))
    if shrink <= 1:
        return img, quad, qsize
    h, w = img.shape[:2]
    rsize = (int(np.rint(w / shrink)), int(np.rint(h / shrink)))
    # casts: OpenCV's stubs do not say that it keeps uint8, nor numpy's that float64 / int stays float64
    small = cast(Pixels, cv2.resize(img, rsize, interpolation=cv2.INTER_AREA))
    return small, cast(Points, quad / shrink), qsize / shrink


def _crop(img: Pixels, quad: Points, border: int) -> tuple[Pixels, Points]:
    h, w = img.shape[:2]
    left, top = int(np.floor(quad[:, 0].min())) - border, int(np.floor(quad[:, 1].min())) - border
    right, bottom = int(np.ceil(quad[:, 0].max())) + border, int(np.ceil(quad[:, 1].max())) + border
    left, top, right, bottom = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
    if right - left < w or bottom - top < h:
        return img[top:bottom, left:right], quad - [left, top]
    return img, quad


def _pad_amounts(img: Pixels, quad: Points, border: int) -> NDArray[np.int_]:
    h, w = img.shape[:2]
    return np.array(
        [
            max(-int(np.floor(quad[:, 0].min())) + border, 0),
            max(-int(np.floor(quad[:, 1].min())) + border, 0),
            max(int(np.ceil(quad[:, 0].max())) - w + border, 0),
            max(int(np.ceil(quad[:, 1].max())) - h + border, 0),
        ]
    )


def _pad(img: Pixels, pad: NDArray[np.int_], qsize: float) -> Pixels:
    """Reflect-pad, then fade the padding toward a blur and the median colour (official blend)."""
    left, top, right, bottom = (int(p) for p in pad)
    out = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_REFLECT_101).astype(np.float32)
    h, w = out.shape[:2]
    xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)[:, None]
    mask = np.maximum(
        1.0 - np.minimum(xs / left, (w - 1 - xs) / right), 1.0 - np.minimum(ys / top, (h - 1 - ys) / bottom)
    )[..., None]
    sigma = qsize * 0.02
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage's default truncation at 4 sigma
    blurred = cv2.GaussianBlur(out, (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_REFLECT)
    out += (blurred - out) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    out += (np.median(out, axis=(0, 1)) - out) * np.clip(mask, 0.0, 1.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _quad_warp(img: Pixels, quad: Points, size: int) -> Pixels:
    """Sample the quad into size×size: output pixel centres (x+½)/size map bilinearly onto the
    quad, as PIL's QUAD transform does with the official +0.5 offset."""
    top_left, bottom_left, top_right = quad[0], quad[1], quad[3]
    ax, ay = (top_right - top_left) / size, (bottom_left - top_left) / size
    origin = top_left + 0.5 * (ax + ay)
    matrix = np.array([[ax[0], ay[0], origin[0]], [ax[1], ay[1], origin[1]]])
    warped = cv2.warpAffine(
        img, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT
    )
    return cast(Pixels, warped)  # uint8 in, uint8 out: OpenCV's stubs say only MatLike


def crop_matrix(quad: NDArray[Any], qsize: float, size: int, photo_shape: tuple[int, ...]) -> NDArray[np.float64]:
    """The affine map [2, 3] that ``warp_face`` samples with: crop pixel (u, v) → photo point (x, y),
    pixel centres at integers in both. It includes the shrink that ``warp_face`` applies to a face
    much larger than ``size`` (INTER_AREA to rint(W / shrink) × rint(H / shrink), which moves pixel
    centres by up to half a shrunken pixel); crop and padding are integer shifts that cancel."""
    quad = np.asarray(quad, np.float64)
    h, w = photo_shape[:2]
    shrink = int(np.floor(qsize / size * 0.5))
    scale, offset = np.ones(2), np.zeros(2)
    if shrink > 1:
        quad = quad / shrink
        scale = np.array([w / int(np.rint(w / shrink)), h / int(np.rint(h / shrink))])
        offset = 0.5 * scale - 0.5  # shrunken pixel centre i sits at (i + ½)·scale − ½ in the photo
    top_left, bottom_left, top_right = quad[0], quad[1], quad[3]
    ax, ay = (top_right - top_left) / size, (bottom_left - top_left) / size
    origin = top_left + 0.5 * (ax + ay)
    matrix: NDArray[np.float64] = (
        np.array([[ax[0], ay[0], origin[0]], [ax[1], ay[1], origin[1]]]) * scale[:, None]
        + np.c_[np.zeros((2, 2)), offset]
    )
    return matrix


def warp_face(rgb: Pixels, quad: NDArray[Any], qsize: float, size: int = 256) -> Pixels:
    """The official shrink → crop → pad → quad transform, from a photo and its quad."""
    img, quad, qsize = _shrink(rgb, np.asarray(quad, np.float64), qsize, size)
    border = max(int(np.rint(qsize * 0.1)), 3)
    img, quad = _crop(img, quad, border)
    pad = _pad_amounts(img, quad, border)
    if pad.max() > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = _pad(img, pad, qsize)
        quad = quad + pad[:2]
    return _quad_warp(img, quad, size)


class FaceAligner:
    """dlib detection + 68 landmarks, then the FFHQ crop. Safe to share between threads.

    ``face`` picks among several detections: "largest" box (ties: higher score), "best"
    detector score, or "last" as the official script does. ``detect_size`` caps the
    longer side of the copy the detector sees (then upsampled once, as officially); a face
    small on that copy is found again at full resolution. ``align`` says in
    ``AlignedFace.warnings`` when it chose among several faces, when the crop comes out soft (a small face
    upscaled, counting padding as no pixels), or when much of it lies outside the photo (see UPSCALE_WARNING).
    """

    def __init__(self, output_size: int = 256, face: str = "largest", detect_size: int = 640) -> None:
        if face not in FACE_POLICIES:
            raise InputError(f"face policy must be one of {', '.join(FACE_POLICIES)}, got {face!r}")
        try:
            import dlib
        except ImportError as err:
            raise BackendUnavailableError(f"face alignment needs dlib; {ALIGN_EXTRA_HINT}") from err
        self.output_size, self.face, self.detect_size = output_size, face, detect_size
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path()))
        self._rectangle = dlib.rectangle
        self._lock = threading.Lock()  # dlib's detector keeps scratch state

    def _detect_scale(self, rgb: Pixels) -> float:
        return min(1.0, self.detect_size / max(rgb.shape[:2]))

    def detect(self, rgb: Pixels) -> list[tuple[Box, float]]:
        """Face boxes (left, top, right, bottom) in photo coordinates with detector scores."""
        scale = self._detect_scale(rgb)
        small = rgb if scale == 1.0 else cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        with self._lock:
            rects, scores, _ = self._detector.run(small, 1, 0.0)
        return [
            ((round(r.left() / scale), round(r.top() / scale), round(r.right() / scale), round(r.bottom() / scale)), s)
            for r, s in zip(rects, scores, strict=True)
        ]

    def _pick(self, faces: list[tuple[Box, float]]) -> Box:
        if self.face == "last":
            return faces[-1][0]
        if self.face == "best":
            return max(faces, key=lambda f: f[1])[0]
        return max(faces, key=lambda f: ((f[0][2] - f[0][0]) * (f[0][3] - f[0][1]), f[1]))[0]

    def landmarks(self, rgb: Pixels, box: Box) -> Points:
        """68 points [68, 2] of a face ``detect`` found in ``rgb``; one found small on the detection
        copy is found again at full resolution first (see REFINE_BELOW)."""
        boxes = self._full_resolution_boxes(rgb, box) if self._coarse(rgb, box) else []
        points: Points = np.median([self._predict(rgb, b) for b in boxes or [box]], axis=0)
        return points

    def _predict(self, rgb: Pixels, box: Box) -> Points:
        with self._lock:
            shape = self._predictor(rgb, self._rectangle(*box))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def _coarse(self, rgb: Pixels, box: Box) -> bool:
        scale = self._detect_scale(rgb)
        return scale < 1.0 and (box[2] - box[0]) * scale < REFINE_BELOW

    def _full_resolution_boxes(self, rgb: Pixels, box: Box) -> list[Box]:
        """The face's box as the detector finds it at full resolution (upsampled once, as
        officially), once per region origin in REFINE_SHIFTS; fewer if it is missed."""
        left, top, right, bottom = box
        margin, step = round((right - left) * REFINE_MARGIN), (right - left) / 20
        boxes = []
        for dx, dy in REFINE_SHIFTS:
            x0, y0 = max(left - margin - round(dx * step), 0), max(top - margin - round(dy * step), 0)
            region = np.ascontiguousarray(rgb[y0 : bottom + margin, x0 : right + margin])
            with self._lock:
                rects, _, _ = self._detector.run(region, 1, 0.0)
            found = [(r.left() + x0, r.top() + y0, r.right() + x0, r.bottom() + y0) for r in rects]
            same = [b for b in found if _inside(_centre(b), box)]  # not a neighbour caught in the margin
            if same:
                boxes.append(min(same, key=lambda b: np.hypot(*np.subtract(_centre(b), _centre(box)))))
        return boxes

    def align(self, rgb: NDArray[Any]) -> AlignedFace:
        """Photo (uint8 RGB [H, W, 3]) → the aligned face; NoFaceError when there is none."""
        rgb = check_rgb(rgb)
        faces = self.detect(rgb)
        if not faces:
            raise NoFaceError("no face found in the photo")
        box = self._pick(faces)
        landmarks = self.landmarks(rgb, box)
        quad, qsize = ffhq_quad(landmarks)
        image = warp_face(rgb, quad, qsize, self.output_size)
        notes = self._warnings(len(faces), box, quad, qsize, rgb.shape)
        return AlignedFace(image, landmarks, quad, box, len(faces), notes)

    def locate(
        self, rgb: NDArray[Any], min_face: float = 0.0, every: bool = True
    ) -> tuple[list[LocatedFace], list[LocatedFace]]:
        """Landmarks and crop squares of the faces in a photo, no crop warped yet: (kept, skipped).

        ``every`` keeps every detection, left to right; False keeps the one ``face`` policy picks,
        as ``align`` does. Faces whose crop square is under ``min_face`` photo pixels across are
        skipped (a box and a size to name in a summary). No face is an empty list, not an error."""
        rgb = check_rgb(rgb)
        faces = self.detect(rgb)
        if faces and not every:
            picked = self._pick(faces)
            faces = [next(f for f in faces if f[0] == picked)]
        kept: list[LocatedFace] = []
        skipped: list[LocatedFace] = []
        for box, score in sorted(faces, key=lambda f: (_centre(f[0]), f[1])):
            landmarks = self.landmarks(rgb, box)
            quad, qsize = ffhq_quad(landmarks)
            (kept if qsize >= min_face else skipped).append(LocatedFace(box, float(score), landmarks, quad, qsize))
        return kept, skipped

    def crop(
        self,
        rgb: NDArray[Any],
        landmarks: NDArray[Any],
        quad: NDArray[Any] | None = None,
        box: Box | None = None,
        faces_found: int = 1,
    ) -> AlignedFace:
        """The aligned face of given landmarks (e.g. smoothed over a video's frames), cropped along
        ``quad`` (default: ``ffhq_quad(landmarks)``; a smoothed quad must stay a square). ``box``
        defaults to the landmarks' bounds. Warnings as ``align``'s, the choice among faces left out."""
        rgb = check_rgb(rgb)
        landmarks = np.asarray(landmarks, np.float64)
        quad = ffhq_quad(landmarks)[0] if quad is None else np.asarray(quad, np.float64)
        qsize = float(np.hypot(*(quad[3] - quad[0])))
        if box is None:
            (left, top), (right, bottom) = np.floor(landmarks.min(0)), np.ceil(landmarks.max(0))
            box = (int(left), int(top), int(right), int(bottom))
        image = warp_face(rgb, quad, qsize, self.output_size)
        return AlignedFace(image, landmarks, quad, box, faces_found, self._warnings(1, box, quad, qsize, rgb.shape))

    def align_all(self, rgb: NDArray[Any], min_face: float = 0.0) -> tuple[list[AlignedFace], list[LocatedFace]]:
        """Every face of a photo, left to right, aligned: (faces, skipped), where skipped faces have
        a crop square under ``min_face`` photo pixels across. No face: two empty lists."""
        rgb = check_rgb(rgb)
        kept, skipped = self.locate(rgb, min_face)
        found = len(kept) + len(skipped)
        return [self.crop(rgb, f.landmarks, f.quad, f.box, found) for f in kept], skipped

    def _warnings(
        self, faces_found: int, box: Box, quad: Points, qsize: float, shape: tuple[int, ...]
    ) -> tuple[str, ...]:
        """What a user should hear about this input: a choice among faces; a crop that comes out soft
        (upscaled, counting padding as no pixels) or with much of it outside the photo."""
        notes = []
        if faces_found > 1:
            left, top, right, bottom = box
            where = f"box {right - left}×{bottom - top} at {left},{top}"
            notes.append(f"{faces_found} faces found; took {POLICY_WORDS[self.face]} ({where})")
        outside = outside_share(quad, shape)
        upscale = self.output_size / qsize
        effective = upscale / np.sqrt(max(1.0 - outside, 1e-6))
        if effective > UPSCALE_WARNING:
            enlarged = f"upscaled {upscale:.1f}× to {self.output_size}²"
            if outside >= PADDING_MENTION:
                enlarged += f", {outside:.0%} of it padding outside the photo"
            notes.append(f"face crop is {qsize:.0f} px across, {enlarged}: expect a soft result")
        elif outside >= PADDING_WARNING:
            notes.append(
                f"{outside:.0%} of the face crop lies outside the photo, padded from its blurred edges: expect "
                "blurred, made-up borders"
            )
        return tuple(notes)


def outside_share(quad: NDArray[Any], shape: tuple[int, ...]) -> float:
    """The share (0-1) of the crop quad's area that lies outside a photo of ``shape`` [H, W, ...]: the
    part the official procedure fills with padding."""
    corners = np.asarray(quad, np.float32)
    area = abs(cv2.contourArea(corners))
    if area == 0:
        return 0.0
    h, w = shape[:2]
    photo = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    inside, _ = cv2.intersectConvexConvex(corners, photo)
    return float(min(max(1.0 - inside / area, 0.0), 1.0))


def _centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _inside(point: tuple[float, float], box: Box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def check_rgb(rgb: NDArray[Any]) -> Pixels:
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InputError(f"expected a uint8 RGB image [H, W, 3], got {array.dtype} {list(array.shape)}")
    return np.ascontiguousarray(array)
