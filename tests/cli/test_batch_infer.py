"""`psp-deploy infer` keeps `run`'s promises: --n-outputs, the aligner's notes, --save-aligned, the summary,
and refusals before any request. A stand-in client checks the command; one test runs a real server."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from psp_deploy.cli import app
from psp_deploy.runtime.io import read_image
from psp_deploy.serving import client as client_module

NOTE = "2 faces found; took the largest (box 90×90 at 175,76)"


class FakePool:
    """ClientPool's face: answers as the psp model would, recording each request."""

    requests: list = []

    def __init__(self, url, timeout, retry):
        self.url = url

    def get(self):
        return self

    def ready(self):
        return True

    def run(self, path, **parameters):
        FakePool.requests.append((path.name, parameters))
        if path.name.startswith("broken"):
            return client_module.RemoteError("ImageDecodeError: request photo: not an image")
        n = parameters["n_outputs"]
        images = np.stack([np.full((8, 8, 3), 10 * k + 1, np.uint8) for k in range(n)])
        aligned = np.full((256, 256, 3), 7, np.uint8) if parameters["align"] is not False else np.zeros((256, 256, 3))
        notes = (NOTE,) if path.name.startswith("group") else ()
        codes = np.ones((10, 512), np.float32)
        return {"aligned": aligned, "codes": codes, "image": images[0], "images": images, "warnings": notes}


@pytest.fixture()
def fake(monkeypatch):
    FakePool.requests = []
    monkeypatch.setattr(client_module, "ClientPool", FakePool)
    return FakePool


@pytest.fixture()
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for name in ("group.png", "solo.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff" + bytes(64))
    return root


def test_n_outputs_notes_aligned_faces_and_summary_as_run(fake, photos, tmp_path):
    out = tmp_path / "out"
    args = ["infer", str(photos), "-o", str(out), "--latent-mask", "8-9", "--n-outputs", "3", "--seed", "5"]
    result = CliRunner().invoke(app, [*args, "--save-aligned", "--save-latents"])
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in out.glob("*.png")) == [
        "group.aligned.png", "group_0.png", "group_1.png", "group_2.png",
        "solo.aligned.png", "solo_0.png", "solo_1.png", "solo_2.png",
    ]  # fmt: skip
    assert [read_image(out / f"solo_{k}.png")[0, 0, 0] for k in range(3)] == [1, 11, 21]
    assert read_image(out / "solo.aligned.png")[0, 0, 0] == 7 and (out / "solo.npy").exists()
    assert {p["n_outputs"] for _, p in fake.requests} == {3} and {p["seed"] for _, p in fake.requests} == {5}
    notes = [line for line in result.output.splitlines() if line.startswith("  ! ")]
    assert notes == [f"  ! {photos / 'group.png'}: {NOTE}"]
    assert re.search(r"2 done, 0 skipped \(already there\), 1 failed — \d+\.\d s, [\d.]+ images/s", result.output)
    assert [f["input"].rsplit("/", 1)[-1] for f in json.loads((out / "failures.json").read_text())] == ["broken.jpg"]
    settings = json.loads((out / "psp-deploy.json").read_text())
    assert settings["n_outputs"] == 3 and settings["seed"] == 5


@pytest.mark.parametrize(
    "args,message",
    [
        (["--latent-mask", "8-9", "--seed", "-1"], "Invalid value for '--seed'"),
        (["--seed", str(2**32)], "Invalid value for '--seed'"),
        (["--latent-mask", "8-9", "--mix-alpha", "2"], "Invalid value for '--mix-alpha'"),
        (["--n-outputs", "2"], "--n-outputs above 1 needs --latent-mask"),
        (["--latent-mask", "8-9", "--n-outputs", "17"], "the server makes at most 16 outputs per photo"),
        (["--concurrency", "0"], "Invalid value for '--concurrency'"),
        (["--timeout", "0"], "Invalid value for '--timeout'"),
        (["--timeout", "nan"], "Invalid value for '--timeout'"),
        (["--no-align", "--save-aligned"], "--save-aligned writes the aligned face, so it needs alignment"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(fake, photos, tmp_path, args, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["infer", str(photos), "-o", str(out), *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert fake.requests == [] and not out.exists()


def test_unusable_output_folders_are_refused_before_any_request(fake, photos, unwritable_dir):
    locked = CliRunner().invoke(app, ["infer", str(photos), "-o", str(unwritable_dir)])
    assert locked.exit_code == 2 and f"error: cannot write to {unwritable_dir}" in locked.output, locked.output
    clash = CliRunner().invoke(app, ["infer", str(photos), "-o", str(photos)])
    assert clash.exit_code == 2 and f"{photos} is also the output folder" in clash.output, clash.output
    assert fake.requests == [] and isinstance(locked.exception, SystemExit)


@pytest.mark.xdist_group("serving")
def test_a_real_server_answers_every_output_and_the_notes(bundles, tmp_path):
    """The psp model's n_outputs parameter: output k mixes the style of seed + k, as `run` does; its warnings
    output carries the aligner's notes."""
    pytest.importorskip("pytriton", reason="PyTriton is not installed (pip install 'psp-deploy[serve]')")
    from psp_deploy.runtime import Pipeline
    from psp_deploy.serving.client import PspClient
    from tests.serving.test_server import Server

    root = bundles("rgb-scaled")[0].root
    photo = data.astronaut()
    server = Server(root)
    try:
        with Pipeline.from_bundle(root) as local:
            expected = [local.run(photo, latent_mask=[7, 8], seed=4 + k) for k in range(3)]
        with PspClient(server.url) as client:
            got = client.run(photo, latent_mask="7-8", seed=4, n_outputs=3)
            plain = client.run(photo)
        assert got["images"].shape == (3, 64, 64, 3)
        for k in range(3):
            np.testing.assert_array_equal(got["images"][k], expected[k].images[0])
        assert got["warnings"] == expected[0].aligned[0].warnings == (NOTE,)
        assert plain["images"].shape == (1, 64, 64, 3) and plain["warnings"] == (NOTE,)

        photos = tmp_path / "photos"
        photos.mkdir()
        Image.fromarray(photo).save(photos / "astronaut.png")
        out = tmp_path / "out"
        args = ["infer", str(photos), "-o", str(out), "--url", server.url, "--latent-mask", "7-8", "--n-outputs", "2"]
        result = CliRunner().invoke(app, [*args, "--seed", "4", "--save-aligned"])
        assert result.exit_code == 0, result.output
        written = sorted(p.name for p in out.glob("*.png"))
        assert written == ["astronaut.aligned.png", "astronaut_0.png", "astronaut_1.png"]
        for k in range(2):
            np.testing.assert_array_equal(read_image(out / f"astronaut_{k}.png"), expected[k].images[0])
        np.testing.assert_array_equal(read_image(out / "astronaut.aligned.png"), expected[0].aligned[0].image)
        assert f"  ! {photos / 'astronaut.png'}: {NOTE}" in result.output.splitlines()
    finally:
        server.stop()
