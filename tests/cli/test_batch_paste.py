"""`psp-deploy run --paste` and `--face all`: faces put back into their photos, every face of a group photo."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from psp_deploy.cli import app
from psp_deploy.runtime import Pipeline
from psp_deploy.runtime.io import read_image
from psp_deploy.runtime.paste import paste_all, paste_mask

pytestmark = pytest.mark.xdist_group("cli")  # see tests/conftest.py


@pytest.fixture(scope="module")
def bundle(bundles):
    return bundles("rgb-scaled")[0].root


@pytest.fixture(scope="module")
def group_photo(tmp_path_factory):
    """Three faces side by side: the astronaut at two sizes and mirrored; the smallest is 0.45× the others."""
    face = data.astronaut()[:300, 100:400]
    small = cv2.resize(face, (135, 135), interpolation=cv2.INTER_AREA)
    photo = np.full((300, 800, 3), 90, np.uint8)
    photo[:, :300], photo[:, 300:600] = face, face[:, ::-1]
    photo[80:215, 640:775] = small
    path = tmp_path_factory.mktemp("group") / "group.png"
    Image.fromarray(photo).save(path)
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_paste_writes_the_photo_with_its_face_put_back(bundle, tmp_path):
    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    done = invoke(
        "run", bundle, tmp_path / "astronaut.png", "-o", tmp_path / "out", "--paste", "--backend", "onnxruntime"
    )
    assert done.exit_code == 0, done.output
    written = read_image(tmp_path / "out" / "astronaut.png")
    with Pipeline.from_bundle(bundle) as pipeline:  # the Python API, as an independent path to the same photo
        expected = pipeline.run(data.astronaut(), paste=True).pasted[0]
    assert written.shape == data.astronaut().shape
    assert np.abs(written.astype(int) - expected).max() <= 1
    settings = json.loads((tmp_path / "out" / "psp-deploy.json").read_text())
    assert settings["paste"] == "face"


def test_every_face_is_run_and_small_ones_are_left_out(bundle, group_photo, tmp_path):
    out = tmp_path / "faces"
    done = invoke(
        "run", bundle, group_photo, "-o", out, "--face", "all", "--min-face", "150", "--backend", "onnxruntime"
    )
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.glob("*.png")) == ["group.face1.png", "group.face2.png"]
    assert "1 face(s) under --min-face 150 px" in done.output, done.output
    with Pipeline.from_bundle(bundle) as pipeline:
        photo = read_image(group_photo)
        faces, skipped = pipeline.prepare_faces(photo, 150)
        alone = [pipeline.run(face.image, align=False).images[0] for _, face in faces]
    assert len(faces) == 2 and len(skipped) == 1
    for k, image in enumerate(alone, start=1):  # each face as if it were the only one: batching changes nothing
        assert np.abs(read_image(out / f"group.face{k}.png").astype(int) - image).max() <= 1

    pasted = tmp_path / "pasted"
    done = invoke("run", bundle, group_photo, "-o", pasted, "--face", "all", "--paste", "--backend", "onnxruntime")
    assert done.exit_code == 0, done.output
    result = read_image(pasted / "group.png")
    with Pipeline.from_bundle(bundle) as pipeline:
        faces, _ = pipeline.prepare_faces(photo)
        images = [pipeline.run(face.image, align=False).images[0] for _, face in faces]
    assert len(faces) == 3
    expected = paste_all(photo, [f for _, f in faces], images)
    assert np.abs(result.astype(int) - expected).max() <= 1
    untouched = paste_mask(photo.shape, [f for _, f in faces], images[0].shape[0]) == 0
    np.testing.assert_array_equal(result[untouched], photo[untouched])


def test_paste_and_every_face_refusals_come_before_any_work(bundle, bundles, group_photo, tmp_path):
    cases = [
        ((bundle, "--paste", "--no-align"), "--paste works on the faces alignment finds"),
        ((bundles("sketch-scaled")[0].root, "--paste"), "sketch inputs are not photos"),
        ((bundle, "--min-face", "40"), "--min-face chooses among every face"),
    ]
    for (root, *flags), message in cases:
        done = invoke("run", root, group_photo, "-o", tmp_path / "out", *flags)
        assert done.exit_code == 2 and message in done.output, done.output
    assert not (tmp_path / "out").exists()
