"""`align` and `run` print the aligner's warnings, one line per note and input."""

import cv2
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from psp_deploy.cli import app

pytestmark = pytest.mark.xdist_group("cli")  # see tests/conftest.py

HEAD = data.astronaut()[0:300, 60:380]  # one face; the whole photo also finds the badge on her suit


@pytest.fixture()
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(data.astronaut()).save(root / "astronaut.png")
    Image.fromarray(HEAD).save(root / "head.png")
    Image.fromarray(cv2.resize(HEAD, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)).save(root / "small.png")
    return root


def notes(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("  ! ")]


def test_align_prints_each_inputs_warnings(photos, tmp_path):
    result = CliRunner().invoke(app, ["align", str(photos), "-o", str(tmp_path / "aligned")])
    assert result.exit_code == 0, result.output
    assert notes(result.output) == [
        f"  ! {photos / 'astronaut.png'}: 2 faces found; took the largest (box 90×90 at 175,76)",
        f"  ! {photos / 'small.png'}: face crop is 85 px across, upscaled 3.0× to 256²: expect a soft result",
    ]


def test_run_prints_the_warnings_too(bundles, photos, tmp_path):
    bundle = bundles("rgb-scaled")[0].root
    result = CliRunner().invoke(app, ["run", str(bundle), str(photos / "astronaut.png"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert notes(result.output) == [
        f"  ! {photos / 'astronaut.png'}: 2 faces found; took the largest (box 90×90 at 175,76)"
    ]
