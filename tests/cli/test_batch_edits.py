"""`psp-deploy run --edit / --sweep (--strip, --gif)`: through the real CLI, against the Python pipeline."""

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from psp_deploy.cli import app
from psp_deploy.directions import GanspaceEdit, add_direction
from psp_deploy.runtime import Pipeline, RunOptions, Sweep
from psp_deploy.runtime.io import read_image
from tests.directions.test_importing import ganspace_file, interfacegan_file
from tests.images import assert_same_image
from tests.runtime.test_edits import faces

pytestmark = pytest.mark.xdist_group("rgb")  # bundle_copy


@pytest.fixture()
def edited_bundle(bundle_copy, tmp_path):
    add_direction(bundle_copy, "age", interfacegan_file(tmp_path / "age.pt"))
    pca, _ = ganspace_file(tmp_path / "ffhq_pca.pt")
    add_direction(bundle_copy, "smile", pca, ganspace=GanspaceEdit(46, 4, 6, -20))
    return bundle_copy


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_run_edit_gives_what_the_pipeline_gives(edited_bundle, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()).save(photos / "astronaut.png")
    out = tmp_path / "out"
    done = invoke("run", edited_bundle, photos, "-o", out, "--edit", "age:-3", "--edit", "smile:+1.5", "--save-latents")
    assert done.exit_code == 0, done.output
    with Pipeline.from_bundle(edited_bundle) as pipeline:
        expected = pipeline.run(data.astronaut(), edits=[("age", -3.0), ("smile", 1.5)])
        encoded = pipeline.run(data.astronaut()).codes
    assert_same_image(read_image(out / "astronaut.png"), expected.images[0])
    assert np.abs(np.load(out / "astronaut.npy") - encoded[0]).max() <= 1e-4  # --save-latents: the codes as encoded
    settings = json.loads((out / "psp-deploy.json").read_text())
    assert [edit[:2] for edit in settings["edits"]] == [["age", -3.0], ["smile", 1.5]]
    again = invoke("run", edited_bundle, photos, "-o", out, "--edit", "age:-2", "--save-latents")
    assert again.exit_code == 2 and "other settings" in again.output and "edits" in again.output


def test_run_sweep_on_four_photos_writes_steps_strips_and_gifs(edited_bundle, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    x = faces(4)
    for k, face in enumerate(x):
        Image.fromarray(face).save(photos / f"face{k}.png")
    out = tmp_path / "out"
    done = invoke(
        "run", edited_bundle, photos, "-o", out, "--no-align", "--sweep", "age:-3:3:7", "--strip", "--gif", "--resize"
    )
    assert done.exit_code == 0, done.output
    with Pipeline.from_bundle(edited_bundle) as pipeline:
        row = RunOptions(align=False, resize=True, sweep=Sweep("age", -3, 3, 7))
        expected = pipeline.generate(x, [row] * 4).outputs
    for k in range(4):
        steps = [read_image(out / f"face{k}_{s}.png") for s in range(7)]
        assert_same_image(np.stack(steps), expected[k].images)
        assert np.array_equal(read_image(out / f"face{k}.strip.png"), np.concatenate(steps, axis=1))
        with Image.open(out / f"face{k}.gif") as gif:
            assert (gif.n_frames, gif.size, gif.info["loop"]) == (12, (256, 256), 0)
            shown = []
            for index in range(gif.n_frames):
                gif.seek(index)
                shown.append(np.asarray(gif.convert("RGB")).astype(int))
        for frame, step in zip(shown, [*range(7), *range(5, 0, -1)], strict=True):  # there and back
            distances = [np.abs(frame - s).mean() for s in steps]  # 256 colours, dithered: nearest, not equal
            assert min(distances) == distances[step], distances


def test_sweep_composes_with_paste(edited_bundle, tmp_path):
    photo = data.astronaut()
    Image.fromarray(photo).save(tmp_path / "astronaut.png")
    out = tmp_path / "out"
    photo_file = tmp_path / "astronaut.png"
    done = invoke("run", edited_bundle, photo_file, "-o", out, "--paste", "--sweep", "smile:0:1:3", "--gif")
    assert done.exit_code == 0, done.output
    pasted = [read_image(out / f"astronaut_{s}.png") for s in range(3)]
    assert all(p.shape == photo.shape for p in pasted) and not np.array_equal(pasted[0], pasted[2])
    with Image.open(out / "astronaut.gif") as gif:
        assert (gif.n_frames, gif.size) == (4, (512, 512))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--edit", "gender:1"], "no direction 'gender' (this bundle has: age, smile)"),
        (["--edit", "age"], "edit 'age': write NAME:STRENGTH"),
        (["--edit", "age:lots"], "'age:lots': the strength 'lots' is not a finite number"),
        (["--strip"], "--strip and --gif show a sweep's steps: they go with --sweep"),
        (["--sweep", "age:0:1:3", "--latent-mask", "8", "--n-outputs", "2"], "does not combine with --n-outputs"),
        (["--sweep", "age:0:1:2.5"], "the number of steps must be a whole number"),
    ],
)
def test_refusals_come_before_any_work(edited_bundle, tmp_path, args, message):
    Image.fromarray(faces(1)[0]).save(tmp_path / "face.png")
    out = tmp_path / "out"
    done = invoke("run", edited_bundle, tmp_path / "face.png", "-o", out, "--no-align", *args)
    assert done.exit_code == 2 and message in done.output, done.output
    assert not out.exists()


def test_a_changed_direction_is_refused_before_any_work(edited_bundle, tmp_path):
    np.save(edited_bundle / "directions" / "age.npy", np.zeros(512, np.float32))
    Image.fromarray(faces(1)[0]).save(tmp_path / "face.png")
    done = invoke("run", edited_bundle, tmp_path / "face.png", "-o", tmp_path / "out", "--edit", "age:1")
    assert done.exit_code == 2 and "age.npy: contents do not match the manifest's sha256" in done.output
    assert not (tmp_path / "out").exists()
