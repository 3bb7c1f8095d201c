"""Paste-back: the generated square back into the photo (geometry, mask, anti-aliasing), and every
face of a photo aligned (align.py's locate / crop / align_all)."""

import cv2
import numpy as np
import pytest
from skimage import data

from psp_deploy.errors import InputError
from psp_deploy.runtime.align import AlignedFace, FaceAligner, crop_matrix, ffhq_quad, warp_face
from psp_deploy.runtime.paste import generated_to_photo, paste, paste_all, paste_mask, square_mask

HEAD = np.ascontiguousarray(data.astronaut()[0:300, 60:380])  # one face (the whole photo also finds her badge)
# The astronaut, rotated 12° and enlarged 1.6× about her face, moved onto a 1000×800 photo of coffee.
SIMILARITY = cv2.getRotationMatrix2D((230.0, 150.0), 12.0, 1.6) + [[0, 0, 500 - 230], [0, 0, 380 - 150]]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def photo():
    background = cv2.resize(data.coffee(), (1000, 800), interpolation=cv2.INTER_AREA)
    warped = cv2.warpAffine(data.astronaut(), SIMILARITY, (1000, 800), flags=cv2.INTER_CUBIC)
    inside = cv2.warpAffine(np.ones((512, 512), np.uint8), SIMILARITY, (1000, 800), flags=cv2.INTER_NEAREST)
    return np.where(inside[..., None] > 0, warped, background)


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner(output_size=1024)


@pytest.fixture(scope="module")
def face(aligner, photo):
    return aligner.align(photo)


def smooth_photo(height: int, width: int, sigma: float, seed: int = 0) -> np.ndarray:
    """Band-limited noise: resampling barely blurs it, a misplaced sample shows."""
    noise = cv2.GaussianBlur(
        np.random.default_rng(seed).standard_normal((height, width, 3)).astype(np.float32), (0, 0), sigma
    )
    return np.clip(128 + 50 * noise / noise.std(), 0, 255).astype(np.uint8)


def square_quad(centre, side: float, degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    x = np.array([np.cos(angle), np.sin(angle)]) * side / 2
    y = np.array([-x[1], x[0]])
    c = np.asarray(centre, np.float64)
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def synthetic_face(photo: np.ndarray, quad: np.ndarray, size: int) -> AlignedFace:
    side = float(np.hypot(*(quad[3] - quad[0])))
    return AlignedFace(warp_face(photo, quad, side, size), np.zeros((68, 2)), quad, (0, 0, 1, 1), 1)


# --- the acceptance check: photo → align → paste the crop back unchanged → the photo ----------------------------


def test_the_known_transform_moved_the_face_where_alignment_finds_it(aligner, face):
    """The face's crop square in the photo is the original's square moved by the known similarity."""
    original = aligner.align(data.astronaut())
    expected = original.quad @ SIMILARITY[:, :2].T + SIMILARITY[:, 2]
    assert face.faces_found == 1
    assert np.abs(face.quad - expected).max() < 0.03 * face.size


@pytest.mark.parametrize("mask", ["face", "square"])
def test_pasting_the_aligned_crop_back_gives_the_photo(photo, face, mask):
    out = paste(photo, face, face.image, mask=mask)
    support = paste_mask(photo.shape, [face], face.image.shape[0], mask=mask) > 0
    assert support.sum() > 0.5 * face.size**2 * (0.5 if mask == "face" else 1.0)
    assert psnr(out[support], photo[support]) >= 40.0  # measured: 44.2 dB (face), 43.1 dB (square)
    assert np.array_equal(out[~support], photo[~support])  # outside the mask: bit for bit
    assert out is not photo and not np.shares_memory(out, photo)


def test_pasting_a_smaller_generated_image_lands_in_the_same_place(photo, face):
    """A 256² output of the same crop (the generator's smaller size) goes to the same square."""
    small = cv2.resize(face.image, (256, 256), interpolation=cv2.INTER_AREA)
    out = paste(photo, face, small)
    support = paste_mask(photo.shape, [face], 256) > 0
    assert psnr(out[support], photo[support]) >= 40.0  # measured: 44.0 dB (256 px for a 275 px face)
    assert np.array_equal(out[~support], photo[~support])


# --- geometry: exact to a fraction of a pixel, the shrink of large faces included --------------------------------


@pytest.mark.parametrize(
    "shape,side,size,sigma",
    [
        ((600, 800), 300.0, 256, 3.0),  # face larger than the crop
        ((600, 800), 200.0, 1024, 3.0),  # face smaller than the crop
        ((2400, 3000), 1500.0, 256, 8.0),  # warp_face shrinks the photo 2× first (pixel centres move ½ px)
        ((2401, 3001), 1333.0, 256, 8.0),  # ... to a size that is not an exact half
    ],
)
def test_paste_geometry_is_exact(shape, side, size, sigma):
    photo = smooth_photo(*shape, sigma)
    quad = square_quad((shape[1] * 0.45, shape[0] * 0.5), side, 10.0)
    face = synthetic_face(photo, quad, size)
    inside = paste_mask(photo.shape, [face], size, mask="square", feather=0.1) >= 1.0
    exact = psnr(paste(photo, face, face.image, mask="square", feather=0.1)[inside], photo[inside])
    moved = synthetic_face(photo, quad + 0.5, size)  # the same crop put back half a pixel off
    off = psnr(paste(photo, moved, face.image, mask="square", feather=0.1)[inside], photo[inside])
    assert exact >= 45.0 and exact > off + 7.0  # measured: 46-49 dB exact, 30-38 dB half a pixel off


def test_crop_matrix_is_the_map_warp_face_samples_with():
    photo = smooth_photo(600, 800, 2.0)
    quad = square_quad((390, 290), 230.0, -17.0)
    direct = cv2.warpAffine(
        photo, crop_matrix(quad, 230.0, 256, photo.shape), (256, 256), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    )
    assert np.array_equal(direct, warp_face(photo, quad, 230.0, 256))


def test_generated_to_photo_maps_corners_to_the_quad():
    photo = np.zeros((500, 600, 3), np.uint8)
    quad = square_quad((300, 250), 180.0, 25.0)
    face = synthetic_face(photo, quad, 256)
    for size in (64, 256, 1024):
        matrix = generated_to_photo(face, photo.shape, size)
        edge = size - 0.5  # pixel edges of the generated image: the quad's corners
        corners = np.array([[-0.5, -0.5], [-0.5, edge], [edge, edge], [edge, -0.5]]) @ matrix[:, :2].T + matrix[:, 2]
        np.testing.assert_allclose(corners, quad, atol=1e-9)


# --- mask, anti-aliasing, several faces -------------------------------------------------------------------------


def test_face_mask_covers_the_face_and_not_the_background(photo, face):
    mask = paste_mask(photo.shape, [face], 1024)
    lm = face.landmarks
    for point in (lm[30], lm[36:48].mean(0), lm[48:68].mean(0)):  # nose tip, eyes, mouth
        assert mask[int(point[1]), int(point[0])] == 1.0
    corners = np.rint(face.quad).astype(int)
    inside_photo = [(x, y) for x, y in corners if 0 <= x < photo.shape[1] and 0 <= y < photo.shape[0]]
    assert inside_photo and all(mask[y, x] == 0.0 for x, y in inside_photo)  # the square's corners: background
    soft = (mask > 0) & (mask < 1)
    assert soft.sum() > 0.05 * (mask > 0).sum()  # a feathered edge, not a cut-out


def test_hard_square_has_no_soft_edge_beyond_a_pixel():
    grid = square_mask(128, None, "square")
    assert np.array_equal(grid, np.ones((128, 128), np.float32))
    feathered = square_mask(128, None, "square", feather=0.1)
    assert feathered[0, 64] < 0.05 and feathered[64, 64] == 1.0 and feathered[13, 64] == 1.0


def test_a_face_smaller_than_the_generated_image_is_anti_aliased():
    """A 1 px checkerboard shrunk 4× must come out grey, not as a moiré of sampled squares."""
    photo = np.full((400, 400, 3), 127, np.uint8)
    face = synthetic_face(photo, square_quad((200, 200), 256.0, 7.0), 256)
    checker = ((np.indices((1024, 1024)).sum(0) % 2) * 255).astype(np.uint8)
    out = paste(photo, face, np.repeat(checker[..., None], 3, axis=2), mask="square")
    inner = paste_mask(photo.shape, [face], 1024, mask="square") >= 1.0
    assert abs(out[inner].mean() - 127.5) < 2 and out[inner].std() < 3  # measured: std 0; sampled bilinear: 42


def test_a_square_leaving_the_photo_is_clipped():
    photo = smooth_photo(300, 300, 3.0)
    face = synthetic_face(photo, square_quad((40, 150), 200.0, 0.0), 256)  # the left part lies off the photo
    out = paste(photo, face, np.zeros((256, 256, 3), np.uint8), mask="square")
    assert out.shape == photo.shape and (out[150, :100] == 0).all() and np.array_equal(out[:, 141:], photo[:, 141:])


@pytest.fixture(scope="module")
def two_faces():
    canvas = np.full((700, 1300, 3), 100, np.uint8)
    big = cv2.resize(HEAD, None, fx=1.3, fy=1.3, interpolation=cv2.INTER_CUBIC)
    canvas[50 : 50 + big.shape[0], 40 : 40 + big.shape[1]] = big
    small = cv2.resize(HEAD[:, ::-1], None, fx=0.9, fy=0.9, interpolation=cv2.INTER_AREA)
    canvas[200 : 200 + small.shape[0], 800 : 800 + small.shape[1]] = small
    return canvas


def test_every_face_is_aligned_left_to_right(two_faces):
    aligner = FaceAligner()
    faces, skipped = aligner.align_all(two_faces)
    assert len(faces) == 2 and skipped == []
    assert faces[0].box[0] < 400 < faces[1].box[0] and faces[0].size > faces[1].size
    assert all(f.faces_found == 2 and f.image.shape == (256, 256, 3) for f in faces)
    # the largest one is the face align() takes, cropped the same way
    single = aligner.align(two_faces)
    assert single.box == faces[0].box and np.array_equal(single.image, faces[0].image)


def test_faces_under_the_minimum_size_are_skipped(two_faces):
    aligner = FaceAligner()
    (big, small), _ = aligner.locate(two_faces)
    threshold = (big.size + small.size) / 2
    faces, skipped = aligner.align_all(two_faces, min_face=threshold)
    assert [f.box for f in faces] == [big.box] and [s.box for s in skipped] == [small.box]
    assert skipped[0].size < threshold <= faces[0].size


def test_locate_with_a_policy_keeps_one_face(two_faces):
    kept, skipped = FaceAligner(face="largest").locate(two_faces, every=False)
    assert len(kept) == 1 and skipped == [] and kept[0].box[0] < 400
    assert FaceAligner().locate(np.full((200, 200, 3), 90, np.uint8)) == ([], [])


def test_crop_from_landmarks_matches_align(aligner, photo, face):
    again = aligner.crop(photo, face.landmarks, box=face.box)
    assert np.array_equal(again.image, face.image) and np.array_equal(again.quad, face.quad)
    quad, _ = ffhq_quad(face.landmarks)
    moved = aligner.crop(photo, face.landmarks, quad + [3.0, -2.0])  # a smoothed quad: warped where it says
    assert np.array_equal(moved.quad, quad + [3.0, -2.0]) and not np.array_equal(moved.image, face.image)


def test_every_face_pasted_into_one_photo(two_faces):
    faces, _ = FaceAligner().align_all(two_faces)
    out = paste_all(two_faces, faces, [255 - f.image for f in faces])
    support = paste_mask(two_faces.shape, faces, 256) > 0
    for f in faces:
        nose = f.landmarks[30].astype(int)
        assert np.abs(out[nose[1], nose[0]].astype(int) - two_faces[nose[1], nose[0]]).max() > 60  # inverted
    assert np.array_equal(out[~support], two_faces[~support])
    assert np.array_equal(paste_all(two_faces, [], []), two_faces)


@pytest.mark.parametrize(
    "generated,kwargs,message",
    [
        (np.zeros((256, 200, 3), np.uint8), {}, "square uint8 RGB"),
        (np.zeros((256, 256, 3), np.float32), {}, "square uint8 RGB"),
        (np.zeros((256, 256), np.uint8), {}, "square uint8 RGB"),
        (np.zeros((256, 256, 3), np.uint8), {"mask": "oval"}, "face, square"),
        (np.zeros((256, 256, 3), np.uint8), {"feather": 0.7}, r"\[0, 0.5\]"),
    ],
)
def test_bad_paste_arguments_are_refused(generated, kwargs, message):
    photo = np.zeros((300, 300, 3), np.uint8)
    face = synthetic_face(photo, square_quad((150, 150), 100.0, 0.0), 256)
    with pytest.raises(InputError, match=message):
        paste(photo, face, generated, **kwargs)


def test_count_mismatch_is_refused():
    photo = np.zeros((300, 300, 3), np.uint8)
    face = synthetic_face(photo, square_quad((150, 150), 100.0, 0.0), 256)
    with pytest.raises(InputError, match="2 faces but 1 generated"):
        paste_all(photo, [face, face], [face.image])
