"""`psp-deploy align` over a folder with good, corrupt, faceless and non-image files."""

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from psp_deploy.cli import app
from psp_deploy.runtime.align import FaceAligner


@pytest.fixture()
def photos(tmp_path):
    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(root / "astronaut.png")
    Image.fromarray(data.astronaut()[:, ::-1]).save(root / "trip" / "mirror.jpg", quality=95)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(root / "wall.png")
    (root / "notes.txt").write_text("not an image, not picked up from a folder")
    return root


def test_align_folder_reports_every_failure_and_resumes(photos, tmp_path):
    out = tmp_path / "aligned"
    result = CliRunner().invoke(app, ["align", str(photos), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["astronaut.png", "trip/mirror.png"]
    assert Image.open(out / "astronaut.png").size == (256, 256)
    failures = {source_name(f["input"]): f["error"] for f in json.loads((out / "failures.json").read_text())}
    assert failures == {"broken.jpg": "ImageDecodeError", "wall.png": "NoFaceError"}
    assert "2 done, 0 skipped" in result.output and "2 failed" in result.output

    before = (out / "astronaut.png").stat().st_mtime_ns
    again = CliRunner().invoke(app, ["align", str(photos), "-o", str(out)])
    assert "0 done, 2 skipped" in again.output and (out / "astronaut.png").stat().st_mtime_ns == before

    (photos / "broken.jpg").unlink()
    (photos / "wall.png").unlink()
    clean = CliRunner().invoke(app, ["align", str(photos), "-o", str(out), "--overwrite"])
    assert clean.exit_code == 0 and not (out / "failures.json").exists()
    assert (out / "astronaut.png").stat().st_mtime_ns != before


def source_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def test_align_glob_face_policy_and_missing_input(photos, tmp_path):
    result = CliRunner().invoke(app, ["align", str(photos / "*.png"), "-o", str(tmp_path / "o"), "--face", "last"])
    assert result.exit_code == 1  # wall.png has no face
    written = np.asarray(Image.open(tmp_path / "o" / "astronaut.png"))
    last, largest = (FaceAligner(face=p).align(data.astronaut()).image for p in ("last", "largest"))
    np.testing.assert_array_equal(written, last)  # the astronaut photo's last detection is her badge
    assert not np.array_equal(written, largest)
    missing = CliRunner().invoke(app, ["align", str(tmp_path / "nope"), "-o", str(tmp_path / "o2")])
    assert missing.exit_code == 2 and "no such file, folder or matching pattern" in missing.output


def test_align_refuses_colliding_names(photos, tmp_path):
    shutil.copy(photos / "astronaut.png", photos / "trip" / "astronaut.png")
    result = CliRunner().invoke(
        app, ["align", str(photos / "astronaut.png"), str(photos / "trip" / "astronaut.png"), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "would both write" in result.output and not (tmp_path / "o").exists()


def test_align_keeps_every_dot_of_a_name(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("pic.1.jpg", "pic.2.jpg", "pic.png"):  # all three were written to ONE pic.png
        Image.fromarray(data.astronaut()).save(photos / name)
    out = tmp_path / "aligned"
    result = CliRunner().invoke(app, ["align", str(photos), "-o", str(out)])
    assert result.exit_code == 0 and "3 done" in result.output, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["pic.1.png", "pic.2.png", "pic.png"]


def test_align_into_a_file_is_a_named_error(photos, tmp_path):
    taken = tmp_path / "somefile"
    taken.write_text("keep me")
    result = CliRunner().invoke(app, ["align", str(photos / "astronaut.png"), "-o", str(taken)])
    assert result.exit_code == 2 and "somefile: exists and is not a directory" in result.output
    assert taken.read_text() == "keep me"


def test_aligning_a_folder_into_itself_is_refused_naming_the_clash(photos, tmp_path):
    """It said "no input images found" of a folder holding PNGs."""
    aligned = tmp_path / "aligned"
    assert CliRunner().invoke(app, ["align", str(photos / "astronaut.png"), "-o", str(aligned)]).exit_code == 0
    before = sorted(p.name for p in aligned.iterdir())
    result = CliRunner().invoke(app, ["align", f"{aligned}/", "-o", f"{aligned}/"])
    assert result.exit_code == 2, result.output
    assert f"{aligned}/ is also the output folder" in result.output and "no input images" not in result.output
    assert sorted(p.name for p in aligned.iterdir()) == before
    inside = CliRunner().invoke(app, ["align", str(photos), "-o", str(photos / "aligned")])  # fine: kept apart
    assert inside.exit_code == 1 and "2 done" in inside.output, inside.output
    rerun = CliRunner().invoke(app, ["align", str(photos), "-o", str(photos / "aligned")])
    assert "0 done, 2 skipped" in rerun.output  # its outputs are not read as inputs


def test_an_unwritable_output_folder_is_refused_before_any_work(photos, unwritable_dir):
    result = CliRunner().invoke(app, ["align", str(photos / "astronaut.png"), "-o", str(unwritable_dir)])
    assert result.exit_code == 2 and f"error: cannot write to {unwritable_dir}" in result.output, result.output
    assert isinstance(result.exception, SystemExit) and list(unwritable_dir.iterdir()) == []


def test_the_summary_gives_the_time_and_rate(photos, tmp_path):
    result = CliRunner().invoke(app, ["align", str(photos / "astronaut.png"), "-o", str(tmp_path / "o")])
    assert re.search(r"1 done, 0 skipped \(already there\), 0 failed — \d+\.\d s, [\d.]+ images/s", result.output)
    args = ["align", str(photos / "astronaut.png"), "-o", str(tmp_path / "o2"), "--size", "5000"]
    big = CliRunner().invoke(app, args)
    assert big.exit_code == 2 and "Invalid value for '--size'" in big.output and not (tmp_path / "o2").exists()
