"""`psp-deploy run`: a folder with good and bad inputs, mixing outputs, kill and resume, Ctrl-C."""

import json
import re
import signal
import subprocess
import sys
import time

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


@pytest.fixture()
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(data.astronaut()).save(root / "astronaut.png")
    Image.fromarray(data.astronaut()[:, ::-1]).save(root / "mirror.jpg", quality=95)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    Image.fromarray(np.full((240, 320, 3), 200, np.uint8)).save(root / "empty_wall.png")
    (root / "readme.png").write_text("a text file with an image suffix")
    return root


def test_run_processes_good_inputs_and_reports_the_rest(bundle, photos, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(bundle), str(photos), "-o", str(out), "--save-latents"])
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "astronaut.npy",
        "astronaut.png",
        "failures.json",
        "mirror.npy",
        "mirror.png",
        "psp-deploy.json",
    ]
    assert read_image(out / "astronaut.png").shape == (64, 64, 3)
    assert np.load(out / "astronaut.npy").shape == (10, 512)
    failures = {f["input"].rsplit("/", 1)[-1]: f["error"] for f in json.loads((out / "failures.json").read_text())}
    assert failures == {
        "corrupt.jpg": "ImageDecodeError",
        "empty_wall.png": "NoFaceError",
        "readme.png": "ImageDecodeError",
    }


def test_run_style_mixing_outputs(bundle, photos, tmp_path):
    out = tmp_path / "mix"
    args = [
        "run",
        str(bundle),
        str(photos / "astronaut.png"),
        "-o",
        str(out),
        "--latent-mask",
        "6-9",
        "--n-outputs",
        "2",
        "--mix-alpha",
        "0.8",
        "--resize",
    ]
    assert CliRunner().invoke(app, args).exit_code == 0
    first, second = read_image(out / "astronaut_0.png"), read_image(out / "astronaut_1.png")
    assert first.shape == (256, 256, 3) and not np.array_equal(first, second)
    bad = CliRunner().invoke(
        app, ["run", str(bundle), str(photos / "astronaut.png"), "-o", str(out), "--n-outputs", "2"]
    )
    assert bad.exit_code == 2 and "--n-outputs above 1 needs --latent-mask" in bad.output
    bad = CliRunner().invoke(
        app, ["run", str(bundle), str(photos / "astronaut.png"), "-o", str(out), "--latent-mask", "4-40"]
    )
    assert bad.exit_code == 2 and "latent mask must name style indices in 0..9" in bad.output


def _start(bundle, photos, out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "psp_deploy.cli",
        "run",
        str(bundle),
        str(photos),
        "-o",
        str(out),
        "--batch-size",
        "1",
        "--no-align",
        *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_outputs(out, count, proc, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(list(out.glob("*.png"))) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the run produced no output in time")


N_FACES = 5


@pytest.fixture()
def many_faces(tmp_path):
    root = tmp_path / "faces"
    root.mkdir()
    face = np.asarray(Image.fromarray(data.astronaut()[20:240, 130:330]).resize((256, 256)))
    for i in range(N_FACES):
        Image.fromarray(np.roll(face, 3 * i, axis=1)).save(root / f"face{i:02d}.png")
    return root


def test_killed_run_resumes_with_every_output_complete(bundle, many_faces, tmp_path):
    out = tmp_path / "out"
    proc = _start(bundle, many_faces, out)
    try:
        _wait_for_outputs(out, 2, proc)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    partial = sorted(p.name for p in out.glob("*.png"))
    assert 2 <= len(partial) < N_FACES

    resumed = _start(bundle, many_faces, out)
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    assert f"{N_FACES - len(partial)} done, {len(partial)} skipped" in log
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"face{i:02d}.png" for i in range(N_FACES)]  # no duplicates
    assert sorted(p.name for p in out.iterdir()) == [*names, "psp-deploy.json"]  # no leftover temp files

    fresh = tmp_path / "fresh"
    assert CliRunner().invoke(app, ["run", str(bundle), str(many_faces), "-o", str(fresh), "--no-align"]).exit_code == 0
    for name in names:  # every output complete and the same as an uninterrupted run's (batched differently)
        assert_same_image(read_image(out / name), read_image(fresh / name))


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_drains_the_batch_and_reports(bundle, many_faces, tmp_path, stop):
    """Ctrl-C, and SIGTERM as containers and schedulers send: the batch in flight finishes, the summary
    and failures.json survive, the exit code says which signal."""
    (many_faces / "a_corrupt.png").write_bytes(b"\x89PNG not really")  # sorted first: fails before the faces
    out = tmp_path / "out"
    proc = _start(bundle, many_faces, out)
    _wait_for_outputs(out, 1, proc)
    proc.send_signal(stop)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + stop, log
    summary = re.search(rf"(\d+) done, 0 skipped \(already there\), 1 failed — stopped early \({stop.name}\)", log)
    assert summary, log
    done = int(summary[1])
    assert 1 <= done < N_FACES and len(list(out.glob("*.png"))) == done  # each finished output is complete
    assert [f["input"].rsplit("/", 1)[-1] for f in json.loads((out / "failures.json").read_text())] == ["a_corrupt.png"]
    assert not list(out.glob(".*"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--latent-mask", "8-9", "--seed", "-1"], "Invalid value for '--seed'"),  # was a numpy traceback mid-run
        (["--seed", "-1"], "Invalid value for '--seed'"),  # was accepted silently
        (["--latent-mask", "8-9", "--seed", str(2**32)], "Invalid value for '--seed'"),
        (["--latent-mask", "8-9", "--mix-alpha", "1.5"], "Invalid value for '--mix-alpha'"),
        (["--latent-mask", "8-9", "--mix-alpha", "nan"], "Invalid value for '--mix-alpha'"),
        (["--latent-mask", "8-9", "--n-outputs", "0"], "Invalid value for '--n-outputs'"),
        (["--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["--threads", "0"], "Invalid value for '--threads'"),
        (["--latent-mask", "8-9", "--n-outputs", "2", "--seed", str(2**32 - 1)], "seed must be an integer from 0 to"),
        (["--mix-alpha", "0.5"], "--mix-alpha needs --latent-mask"),
        (["--no-align", "--save-aligned"], "--save-aligned writes the aligned face, so it needs alignment"),
    ],
)
def test_bad_numbers_are_refused_before_anything_is_written(bundle, photos, tmp_path, args, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(bundle), str(photos / "astronaut.png"), "-o", str(out), *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not out.exists()  # no settings record left behind
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unwritable_output_folder_is_refused_before_loading(bundle, photos, unwritable_dir):
    for out in (unwritable_dir, unwritable_dir / "sub"):
        result = CliRunner().invoke(app, ["run", str(bundle), str(photos / "astronaut.png"), "-o", str(out)])
        assert result.exit_code == 2 and f"error: cannot write to {out}" in result.output, result.output
        assert "backend:" not in result.output  # refused before the pipeline loaded
        assert isinstance(result.exception, SystemExit)  # no PermissionError traceback


def test_the_input_folder_as_output_is_refused_naming_it(bundle, photos):
    result = CliRunner().invoke(app, ["run", str(bundle), str(photos), "-o", str(photos)])
    assert result.exit_code == 2 and f"{photos} is also the output folder" in result.output, result.output
    assert sorted(p.name for p in photos.iterdir()) == sorted(
        ["astronaut.png", "mirror.jpg", "corrupt.jpg", "empty_wall.png", "readme.png"]
    )


def test_save_aligned_writes_the_crop_beside_the_result_and_a_summary_with_the_rate(bundle, photos, tmp_path):
    from psp_deploy.runtime.align import FaceAligner

    out = tmp_path / "out"
    args = ["run", str(bundle), str(photos / "astronaut.png"), str(photos / "mirror.jpg"), "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--save-aligned", "--latent-mask", "8-9", "--n-outputs", "2"])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.glob("astronaut*"))
    assert written == ["astronaut.aligned.png", "astronaut_0.png", "astronaut_1.png"]
    expected = FaceAligner().align(read_image(photos / "astronaut.png")).image
    np.testing.assert_array_equal(read_image(out / "astronaut.aligned.png"), expected)
    assert re.search(r"2 done, 0 skipped \(already there\), 0 failed — \d+\.\d s, [\d.]+ images/s", result.output)
    again = CliRunner().invoke(app, [*args, "--save-aligned", "--latent-mask", "8-9", "--n-outputs", "2"])
    assert re.search(r"0 done, 2 skipped \(already there\), 0 failed — \d+\.\d s\n", again.output), again.output
