"""`psp-deploy synthesize`: saved (or edited) W+ codes → images, with the batch commands' conventions."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from psp_deploy.cli import app
from psp_deploy.runtime.io import read_image
from tests.images import assert_same_image

pytestmark = pytest.mark.xdist_group("cli")  # see tests/conftest.py


@pytest.fixture(scope="module")
def bundle(bundles):
    return bundles("rgb-scaled")[0].root


@pytest.fixture(scope="module")
def ran(bundle, tmp_path_factory):
    """`run --save-latents` on two photos: their images and codes."""
    root = tmp_path_factory.mktemp("ran")
    photos = root / "photos"
    (photos / "trip").mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(photos / "astronaut.png")
    Image.fromarray(data.astronaut()[:, ::-1]).save(photos / "trip" / "mirror.png")
    out = root / "out"
    result = CliRunner().invoke(app, ["run", str(bundle), str(photos), "-o", str(out), "--save-latents"])
    assert result.exit_code == 0, result.output
    return out


def test_codes_saved_by_run_synthesize_the_same_images(bundle, ran, tmp_path):
    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["synthesize", str(bundle), str(ran), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["astronaut.png", "trip/mirror.png"]
    for name in ("astronaut.png", "trip/mirror.png"):
        assert_same_image(read_image(out / name), read_image(ran / name))
    assert re.search(r"2 done, 0 skipped \(already there\), 0 failed — \d+\.\d s, [\d.]+ codes/s", result.output)
    again = CliRunner().invoke(app, ["synthesize", str(bundle), str(ran), "-o", str(out)])
    assert again.exit_code == 0 and "0 done, 2 skipped" in again.output
    other = CliRunner().invoke(app, ["synthesize", str(bundle), str(ran), "-o", str(out), "--resize"])
    assert other.exit_code == 2 and "resize False → True" in other.output
    one = [str(ran / "astronaut.npy"), "-o", str(tmp_path / "r"), "--resize"]
    resized = CliRunner().invoke(app, ["synthesize", str(bundle), *one])
    assert resized.exit_code == 0 and read_image(tmp_path / "r" / "astronaut.png").shape == (256, 256, 3)


def test_bad_codes_fail_alone_and_are_named(bundle, ran, tmp_path):
    codes = tmp_path / "codes"
    codes.mkdir()
    good = np.load(ran / "astronaut.npy")
    np.save(codes / "good.npy", good)
    np.save(codes / "batched.npy", good[None])  # [1, n_styles, 512]: one face's codes as Result.codes holds them
    np.save(codes / "short.npy", good[:4])
    nan = good.copy()
    nan[2, 5] = np.nan
    np.save(codes / "nan.npy", nan)
    np.save(codes / "huge.npy", np.full(good.shape, 1e300))  # finite in float64, not in float32
    np.save(codes / "ints.npy", good.astype(np.int32))
    (codes / "text.npy").write_text("not an array")
    np.savez(codes / "archive.npy", good)
    (codes / "archive.npy.npz").rename(codes / "archive.npy")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["synthesize", str(bundle), str(codes), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["batched.png", "good.png"]
    failures = {f["input"].rsplit("/", 1)[-1]: f["message"] for f in json.loads((out / "failures.json").read_text())}
    n = good.shape[0]
    assert failures["short.npy"].endswith(f"W+ codes for this bundle are floats [{n}, 512], got float32 [4, 512]")
    assert failures["ints.npy"].endswith(f"W+ codes for this bundle are floats [{n}, 512], got int32 [{n}, 512]")
    assert "codes hold 1 NaN or infinite values" in failures["nan.npy"]
    assert f"codes hold {n * 512} NaN or infinite values (in float32)" in failures["huge.npy"]
    assert "not a .npy array file" in failures["text.npy"] and "an .npz archive" in failures["archive.npy"]


def test_refusals_before_loading(bundle, ran, tmp_path, unwritable_dir):
    clash = CliRunner().invoke(app, ["synthesize", str(bundle), str(ran), "-o", str(ran)])
    assert clash.exit_code == 2 and f"{ran} is also the output folder" in clash.output
    locked = CliRunner().invoke(app, ["synthesize", str(bundle), str(ran), "-o", str(unwritable_dir)])
    assert locked.exit_code == 2 and f"cannot write to {unwritable_dir}" in locked.output
    (tmp_path / "empty").mkdir()
    none = CliRunner().invoke(app, ["synthesize", str(bundle), str(tmp_path / "empty"), "-o", str(tmp_path / "o")])
    assert none.exit_code == 2 and "no input codes found (looked for .npy)" in none.output
    assert all("backend:" not in r.output for r in (clash, locked, none)) and not (tmp_path / "o").exists()
