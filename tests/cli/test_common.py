"""The command's face: version, choices in --help, messages printed literally, defaults."""

import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from psp_deploy.cli import app

pytestmark = pytest.mark.xdist_group("cli")  # see tests/conftest.py


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "240"})  # help lines unwrapped


def test_version():
    result = _invoke("--version")
    assert result.exit_code == 0 and re.fullmatch(r"psp-deploy \d+\.\d+\.\d+\S*\n", result.output)


@pytest.mark.parametrize(
    "command,choices",
    [
        ("run", ["<auto|onnxruntime|openvino|tensorrt>", "<fp32|fp16|int8|bf16>", "<cpu|cuda>"]),
        ("serve", ["<auto|onnxruntime|openvino|tensorrt>", "<fp32|fp16|int8|bf16>", "127.0.0.1"]),
        ("build", ["<auto|onnxruntime|openvino|tensorrt>", "<fp32|fp16|int8|bf16>"]),
        ("export", ["<grouped|scaled>", "<transpose|phase>"]),
    ],
)
def test_help_lists_the_choices(command, choices):
    text = re.sub(r"[\s│]+", " ", _invoke(command, "--help").output)
    for choice in choices:
        assert choice in text, (choice, text)


def test_install_hints_keep_their_extra_in_brackets(bundles, tmp_path):
    root = bundles("rgb-scaled")[0].root
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photo.png")
    cuda = _invoke("run", root, tmp_path / "photo.png", "-o", tmp_path / "out", "--device", "cuda")
    assert cuda.exit_code == 2 and "pip install onnxruntime-gpu" in cuda.output, cuda.output
    cpu_only = ("--backend", "openvino", "--device", "cuda")
    openvino = _invoke("run", root, tmp_path / "photo.png", "-o", tmp_path / "out", *cpu_only)
    assert openvino.exit_code == 2 and "openvino runs on the CPU, not cuda" in openvino.output, openvino.output
    trt = _invoke("build", root, "--backend", "tensorrt")
    assert trt.exit_code == 2 and "pip install 'psp-deploy[trt]'" in trt.output, trt.output
    tuning = _invoke("build", root, "--device", "cuda")  # auto: onnxruntime, which needs onnxruntime-gpu
    assert tuning.exit_code == 2 and "install onnxruntime-gpu" in tuning.output, tuning.output
    cpu_builds = [("--backend", "openvino", "--tf32"), ("--backend", "openvino", "--device", "cuda")]
    refusals = [_invoke("build", root, *args) for args in cpu_builds]
    assert [r.exit_code for r in refusals] == [2, 2]
    assert "--tf32 is a GPU build option" in refusals[0].output and "--device is ONNX Runtime's" in refusals[1].output


def test_build_defaults_to_a_backend_this_machine_has(bundle_copy):
    result = _invoke("build", bundle_copy)
    assert result.exit_code == 0, result.output
    assert "backend: openvino" in result.output  # no TensorRT here; what `run --backend auto` picks
