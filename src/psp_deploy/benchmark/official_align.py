"""The official FFHQ alignment steps, written plainly with PIL and scipy (spec §8).

This is the reference the fast aligner is measured against (tests, benchmarks): it
follows the official procedure step by step (full-size detection upsampled once, the
last face, PIL Lanczos shrink, scipy Gaussian blur, PIL QUAD transform).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
from PIL import Image

from ..runtime.align import ffhq_quad


def official_landmarks(rgb: np.ndarray, predictor_file: str) -> np.ndarray | None:
    """dlib on the full photo, upsampled once; the last detection wins; None without a face."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(predictor_file)
    faces = detector(rgb, 1)
    if len(faces) == 0:
        return None
    shape = predictor(rgb, faces[len(faces) - 1])
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def official_align(rgb: np.ndarray, landmarks: np.ndarray, output_size: int = 256) -> np.ndarray:
    quad, qsize = ffhq_quad(landmarks)  # the official oriented square (one formula, shared with the runtime)

    img = Image.fromarray(rgb)
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    crop = (
        max(crop[0] - border, 0),
        max(crop[1] - border, 0),
        min(crop[2] + border, img.size[0]),
        min(crop[3] + border, img.size[1]),
    )
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    pad = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    pad = (
        max(-pad[0] + border, 0),
        max(-pad[1] + border, 0),
        max(pad[2] - img.size[0] + border, 0),
        max(pad[3] - img.size[1] + border, 0),
    )
    if max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(
            1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
            1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]),
        )
        blur = qsize * 0.02
        arr += (scipy.ndimage.gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad += pad[:2]

    img = img.transform(
        (output_size, output_size), Image.Transform.QUAD, (quad + 0.5).flatten(), Image.Resampling.BILINEAR
    )
    return np.array(img)
