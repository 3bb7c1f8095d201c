"""The C++ consumer (examples/cpp): built here, run on a bundle, checked against the Python runtime."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from psp_deploy.runtime import Pipeline

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("cpp")  # see tests/conftest.py


@pytest.fixture(scope="module")
def psp_infer(tmp_path_factory):
    if shutil.which("g++") is None or shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs g++, apt-get and dpkg-deb (Debian) to fetch ONNX Runtime's headers and compile")
    out = tmp_path_factory.mktemp("cpp")
    build = subprocess.run(
        [str(ROOT / "examples/cpp/build.sh"), sys.executable, str(out)], capture_output=True, text=True, timeout=600
    )
    if build.returncode != 0 and "Could not resolve" in build.stderr + build.stdout:
        pytest.skip(f"the Debian archive is not reachable for the headers: {build.stderr[-300:]}")
    assert build.returncode == 0, build.stdout + build.stderr
    return out / "psp_infer"


@pytest.fixture(scope="module")
def case(bundles, tmp_path_factory):
    bundle = bundles("rgb-scaled")[0].root
    with Pipeline.from_bundle(bundle) as pipeline:
        result = pipeline.run(data.astronaut())
    folder = tmp_path_factory.mktemp("cpp-case")
    Image.fromarray(result.aligned[0].image).save(folder / "face.ppm")
    return bundle, folder, result


def run(binary, *args):
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cpp_matches_the_python_runtime(psp_infer, case):
    bundle, folder, result = case
    done = run(
        psp_infer,
        bundle,
        "--face",
        folder / "face.ppm",
        "--out-image",
        folder / "out.ppm",
        "--out-codes",
        folder / "codes.npy",
    )
    assert done.returncode == 0, done.stderr
    assert np.abs(np.load(folder / "codes.npy") - result.codes[0]).max() <= 1e-5
    image = np.asarray(Image.open(folder / "out.ppm"))
    assert np.abs(image.astype(int) - result.images[0].astype(int)).max() <= 1

    pooled = run(psp_infer, bundle, "--codes", folder / "codes.npy", "--out-image", folder / "pooled.ppm", "--resize")
    assert pooled.returncode == 0, pooled.stderr
    assert np.asarray(Image.open(folder / "pooled.ppm")).shape == (256, 256, 3)


def _copy(bundle, dst):
    shutil.copytree(bundle, dst, copy_function=os.link)
    (dst / "manifest.json").unlink()
    shutil.copy(bundle / "manifest.json", dst / "manifest.json")
    return dst


def test_cpp_refuses_an_unknown_schema(psp_infer, case, tmp_path):
    bundle, folder, _ = case
    copy = _copy(bundle, tmp_path / "b")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 2
    (copy / "manifest.json").write_text(json.dumps(manifest))
    done = run(psp_infer, copy, "--face", folder / "face.ppm", "--out-image", tmp_path / "o.ppm")
    assert done.returncode == 3 and "schema_version 2 is not supported (this program reads 1)" in done.stderr


def test_cpp_reports_a_missing_model_file(psp_infer, case, tmp_path):
    bundle, folder, _ = case
    copy = _copy(bundle, tmp_path / "b")
    (copy / "synthesis.onnx").unlink()
    done = run(psp_infer, copy, "--face", folder / "face.ppm", "--out-image", tmp_path / "o.ppm")
    assert done.returncode == 4 and "synthesis.onnx: listed in the manifest but missing" in done.stderr


def test_cpp_refuses_a_wrong_image_size(psp_infer, case, tmp_path):
    bundle, _, _ = case
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(tmp_path / "small.ppm")
    done = run(psp_infer, bundle, "--face", tmp_path / "small.ppm", "--out-image", tmp_path / "o.ppm")
    assert done.returncode == 5 and "the face must be 256x256 (aligned), got 120x100" in done.stderr
    usage = run(psp_infer, bundle, "--out-image", tmp_path / "o.ppm")
    assert usage.returncode == 2 and "exactly one of --face and --codes" in usage.stderr


def test_cpp_refuses_a_tampered_file(psp_infer, case, tmp_path):
    bundle, folder, _ = case
    copy = _copy(bundle, tmp_path / "b")
    tampered = bytearray((bundle / "synthesis.onnx").read_bytes())
    tampered[len(tampered) // 2] ^= 1  # one bit of a weight: still a valid model that ONNX Runtime would run
    (copy / "synthesis.onnx").unlink()  # a hard link to the shared bundle: replace it, never write through it
    (copy / "synthesis.onnx").write_bytes(tampered)
    done = run(psp_infer, copy, "--face", folder / "face.ppm", "--out-image", tmp_path / "o.ppm")
    assert done.returncode == 7, done.stderr
    assert "synthesis.onnx: contents do not match the manifest's sha256" in done.stderr


def test_cpp_refuses_a_manifest_its_graphs_contradict(psp_infer, case, tmp_path):
    bundle, folder, _ = case
    copy = _copy(bundle, tmp_path / "b")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocess"]["mean"] = [0.4, 0.5, 0.5]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    done = run(psp_infer, copy, "--face", folder / "face.ppm", "--out-image", tmp_path / "o.ppm")
    assert done.returncode == 7, done.stderr
    assert "manifest.json: preprocess.mean is [0.4,0.5,0.5] but synthesis.onnx declares [0.5,0.5,0.5]" in done.stderr
