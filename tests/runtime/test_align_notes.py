"""Photos that need a word to the user (several faces, a small face, a crop partly outside the photo),
and the landmarks of small faces in a group photo against the official full-resolution procedure."""

import itertools

import cv2
import numpy as np
import pytest
from skimage import data

from psp_deploy.runtime.align import UPSCALE_WARNING, FaceAligner, ffhq_quad, outside_share, predictor_path

HEAD = np.ascontiguousarray(data.astronaut()[0:300, 60:380])  # one face: the whole photo also finds her badge
# (scale, left, top, mirrored) on a 2400×1800 canvas: inter-ocular distances 65-95 px, each face
# near the smallest the detector finds on its 640 px copy of the photo.
GROUP = [
    (1.5, 60, 100, False),
    (1.8, 840, 120, True),
    (2.1, 1600, 110, False),
    (1.6, 80, 950, True),
    (1.9, 900, 1000, False),
    (2.2, 1650, 950, True),
]


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner()


@pytest.fixture(scope="module")
def group():
    canvas = np.full((1800, 2400, 3), 110, np.uint8)
    for scale, left, top, mirrored in GROUP:
        face = cv2.resize(HEAD, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        canvas[top : top + face.shape[0], left : left + face.shape[1]] = face[:, ::-1] if mirrored else face
    return canvas


def test_one_face_photo_has_no_warnings(aligner):
    face = aligner.align(HEAD)
    assert face.faces_found == 1 and face.warnings == ()


@pytest.mark.parametrize(
    "policy,rule",
    [("largest", "the largest"), ("last", "the last detection, as the official script does")],
)
def test_group_photo_says_how_many_faces_and_which_was_taken(group, policy, rule):
    face = FaceAligner(face=policy).align(group)
    left, top, right, bottom = face.box
    assert face.warnings == (f"6 faces found; took {rule} (box {right - left}×{bottom - top} at {left},{top})",)


def test_small_face_warns_about_upscaling(aligner):
    small = cv2.resize(HEAD, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    assert aligner.align(small).warnings == ("face crop is 85 px across, upscaled 3.0× to 256²: expect a soft result",)


def framed(aligner, share: float, side: int) -> np.ndarray:
    """HEAD cut to a square ``share`` of its face crop's side, around the crop's centre, resized to
    ``side``: the rest of the crop lies outside the photo."""
    quad, qsize = ffhq_quad(aligner.align(HEAD).landmarks)
    (cx, cy), half = quad.mean(0), qsize * share / 2
    cut = HEAD[round(cy - half) : round(cy + half), round(cx - half) : round(cx + half)]
    return cv2.resize(cut, (side, side), interpolation=cv2.INTER_AREA)


def crop_numbers(face, photo) -> tuple[float, float]:
    """(upscale to 256², share of the crop outside the photo)"""
    return 256 / ffhq_quad(face.landmarks)[1], outside_share(face.quad, photo.shape)


def test_outside_share_is_the_crop_area_beyond_the_photo():
    square = np.array([[-10, -10], [-10, 10], [10, 10], [10, -10]], float)  # 20×20, centred on a corner
    assert outside_share(square, (100, 100, 3)) == pytest.approx(0.75)
    assert outside_share(square + 50, (100, 100, 3)) == 0.0
    assert outside_share(square + 1000, (100, 100, 3)) == 1.0


def test_small_upscale_with_much_padding_warns_of_a_soft_result(aligner):
    """The report's photo: 112×112, its crop enlarged about 1.75× (under the 2× of a face alone) with
    a large part of it outside the photo: few real pixels behind the 256² result."""
    photo = framed(aligner, 0.77, 112)
    face = aligner.align(photo)
    upscale, outside = crop_numbers(face, photo)
    assert 1.6 < upscale < UPSCALE_WARNING and 0.25 < outside < 0.5  # the upscale alone would say nothing
    assert len(face.warnings) == 1, face.warnings
    note = face.warnings[0]
    assert note.startswith(f"face crop is {256 / upscale:.0f} px across, upscaled {upscale:.1f}× to 256², ")
    assert note.endswith(f", {outside:.0%} of it padding outside the photo: expect a soft result")


def test_much_padding_without_upscaling_says_the_borders_are_made_up(aligner):
    photo = framed(aligner, 0.8, 180)
    face = aligner.align(photo)
    upscale, outside = crop_numbers(face, photo)
    assert upscale < 1.3 and outside > 0.3
    assert face.warnings == (
        f"{outside:.0%} of the face crop lies outside the photo, padded from its blurred edges: expect blurred, "
        "made-up borders",
    )


def test_a_sliver_of_padding_says_nothing(aligner):
    photo = framed(aligner, 0.95, 180)  # the crop's corners, tilted, stick out a little
    face = aligner.align(photo)
    upscale, outside = crop_numbers(face, photo)
    assert upscale < 1.5 and 0.02 < outside < 0.2
    assert face.warnings == ()


@pytest.fixture(scope="module")
def official_reference():
    """reference(photo, box): the official procedure's landmarks for the face in ``box`` (dlib on
    the full-resolution photo, upsampled once; the predictor in the detector's box), averaged over
    9 shifts of the photo: one run alone moves 1-3 % of the inter-ocular distance when the photo
    shifts by 1 px, as its boxes snap to the detector's HOG grid. A shift is a region cropped
    around the face with its origin moved, by offsets the aligner does not use."""
    import dlib

    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_path()))

    def official_run(photo: np.ndarray, box: tuple[int, int, int, int], x0: int, y0: int, margin: int) -> list:
        rects = detector(np.ascontiguousarray(photo[y0 : box[3] + margin, x0 : box[2] + margin]), 1)
        centre = np.array([box[0] + box[2], box[1] + box[3]]) / 2
        r = min(rects, key=lambda r: np.hypot(r.center().x + x0 - centre[0], r.center().y + y0 - centre[1]))
        shape = predictor(photo, dlib.rectangle(r.left() + x0, r.top() + y0, r.right() + x0, r.bottom() + y0))
        return [[p.x, p.y] for p in shape.parts()]

    def reference(photo: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        margin = (box[2] - box[0]) * 4 // 10
        origins = [(box[0] - margin - dx, box[1] - margin - dy) for dx, dy in itertools.product((1, 4, 7), repeat=2)]
        return np.mean([official_run(photo, box, x0, y0, margin) for x0, y0 in origins], axis=0)

    return reference


def crop_error(landmarks: np.ndarray, reference: np.ndarray) -> float:
    """The farthest crop corner from the reference's, in % of the reference's inter-ocular distance."""
    inter_ocular = np.hypot(*(reference[42:48].mean(0) - reference[36:42].mean(0)))
    corners = ffhq_quad(landmarks)[0] - ffhq_quad(reference)[0]
    return float(np.hypot(*corners.T).max() / inter_ocular * 100)


def test_small_faces_in_a_group_photo_land_as_officially(aligner, group, official_reference):
    faces = aligner.detect(group)
    assert len(faces) == len(GROUP)
    errors = [crop_error(aligner.landmarks(group, box), official_reference(group, box)) for box, _ in faces]
    # Measured here: refined mean 0.84 %, worst 1.44 %; the official procedure on the whole photo
    # 1.13 % and 2.0 %; the boxes from the 640 px copy alone (before refining) 1.19 % and 2.35 %.
    assert np.mean(errors) < 1.0 and max(errors) < 1.8, errors
