"""The C++ consumer (examples/cpp): built here, run on a bundle and on psp-deploy's own PNG outputs,
checked against the Python runtime."""

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
from typer.testing import CliRunner

from psp_deploy.cli import app
from psp_deploy.directions import GanspaceEdit, add_direction
from psp_deploy.runtime import Pipeline
from psp_deploy.runtime.io import read_image
from tests.directions.test_importing import ganspace_file, interfacegan_file

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("cpp")  # see tests/conftest.py
HEADERS = ("/usr/include/onnxruntime/onnxruntime_cxx_api.h", "/usr/include/nlohmann/json.hpp", "/usr/include/stb")


@pytest.fixture(scope="module")
def psp_infer(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("needs g++ (C++17)")
    if not all(map(os.path.exists, HEADERS)) and (shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None):
        pytest.skip("needs the headers installed, or apt-get and dpkg-deb (Debian) to fetch them")
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
    Image.fromarray(result.aligned[0].image).save(folder / "face.png")
    return bundle, folder, result


def run(binary, *args):
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=300)


def infer(binary, bundle, face, out_image, codes):
    """psp_infer on a face, which must succeed: the W+ codes it wrote."""
    done = run(binary, bundle, "--face", face, "--out-image", out_image, "--out-codes", codes)
    assert done.returncode == 0, done.stderr
    return np.load(codes)


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_cpp_runs_on_psp_deploys_pngs_as_psp_deploy_run_does(psp_infer, bundles, tmp_path):
    """The documented flow: `psp-deploy align` writes the face (PNG); psp_infer reads it as it is and
    writes a PNG and the W+ codes that `psp-deploy run --save-latents` writes for the same photo."""
    bundle = bundles("rgb-scaled")[0].root
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()).save(photos / "astronaut.png")
    _invoke("align", photos, "-o", tmp_path / "aligned")
    _invoke("run", bundle, photos, "-o", tmp_path / "python", "--save-latents")
    face = tmp_path / "aligned" / "astronaut.png"
    codes = infer(psp_infer, bundle, face, tmp_path / "cpp.png", tmp_path / "cpp.npy")
    assert np.abs(codes - np.load(tmp_path / "python" / "astronaut.npy")).max() <= 1e-5
    cpp = np.asarray(Image.open(tmp_path / "cpp.png"))
    python = np.asarray(Image.open(tmp_path / "python" / "astronaut.png"))
    assert cpp.shape == python.shape and np.abs(cpp.astype(int) - python.astype(int)).max() <= 1


def test_cpp_matches_the_python_runtime(psp_infer, case):
    bundle, folder, result = case
    codes = infer(psp_infer, bundle, folder / "face.png", folder / "out.png", folder / "codes.npy")
    assert np.abs(codes - result.codes[0]).max() <= 1e-5
    image = np.asarray(Image.open(folder / "out.png"))
    assert np.abs(image.astype(int) - result.images[0].astype(int)).max() <= 1

    pooled = run(psp_infer, bundle, "--codes", folder / "codes.npy", "--out-image", folder / "pooled.ppm", "--resize")
    assert pooled.returncode == 0, pooled.stderr
    assert np.asarray(Image.open(folder / "pooled.ppm")).shape == (256, 256, 3)


def test_cpp_reads_ppm_and_puts_transparency_on_white_as_psp_deploy_does(psp_infer, case, tmp_path):
    """Binary PPM still reads as before; a face with an alpha channel is composited on white with the
    same rounding as the Python runtime (runtime/io.py), so both encode the same pixels."""
    bundle, folder, result = case
    Image.fromarray(result.aligned[0].image).save(tmp_path / "face.ppm")
    codes = infer(psp_infer, bundle, tmp_path / "face.ppm", tmp_path / "o.ppm", tmp_path / "ppm.npy")
    assert np.abs(codes - result.codes[0]).max() <= 1e-5

    alpha = np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))[..., None]
    Image.fromarray(np.concatenate([result.aligned[0].image, alpha], 2), "RGBA").save(tmp_path / "rgba.png")
    codes = infer(psp_infer, bundle, tmp_path / "rgba.png", tmp_path / "o.png", tmp_path / "rgba.npy")
    with Pipeline.from_bundle(bundle) as pipeline:
        expected = pipeline.run(read_image(tmp_path / "rgba.png"), align=False).codes[0]
    assert np.abs(codes - expected).max() <= 1e-5


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
    done = run(psp_infer, copy, "--face", folder / "face.png", "--out-image", tmp_path / "o.png")
    assert done.returncode == 3 and "schema_version 2 is not supported (this program reads 1)" in done.stderr


def test_cpp_reports_a_missing_model_file(psp_infer, case, tmp_path):
    bundle, folder, _ = case
    copy = _copy(bundle, tmp_path / "b")
    (copy / "synthesis.onnx").unlink()
    done = run(psp_infer, copy, "--face", folder / "face.png", "--out-image", tmp_path / "o.png")
    assert done.returncode == 4 and "synthesis.onnx: listed in the manifest but missing" in done.stderr


def test_cpp_refuses_bad_images_and_arguments(psp_infer, case, tmp_path):
    bundle, _, _ = case
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(tmp_path / "small.png")
    done = run(psp_infer, bundle, "--face", tmp_path / "small.png", "--out-image", tmp_path / "o.png")
    assert done.returncode == 5 and "the face must be 256x256 (aligned), got 120x100" in done.stderr
    (tmp_path / "face.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    webp = run(psp_infer, bundle, "--face", tmp_path / "face.webp", "--out-image", tmp_path / "o.png")
    assert webp.returncode == 5, webp.stderr
    assert "face.webp: not an image this program reads (PNG, JPEG, binary PPM/PGM)" in webp.stderr
    missing = run(psp_infer, bundle, "--face", tmp_path / "none.png", "--out-image", tmp_path / "o.png")
    assert missing.returncode == 4 and "none.png: cannot open (no such file)" in missing.stderr
    usage = run(psp_infer, bundle, "--out-image", tmp_path / "o.png")
    assert usage.returncode == 2 and "exactly one of --face and --codes" in usage.stderr
    jpeg_out = run(psp_infer, bundle, "--face", tmp_path / "small.png", "--out-image", tmp_path / "o.jpg")
    assert jpeg_out.returncode == 2 and "o.jpg: name a .png or a .ppm file" in jpeg_out.stderr


def test_cpp_refuses_a_tampered_file(psp_infer, case, tmp_path):
    bundle, folder, _ = case
    copy = _copy(bundle, tmp_path / "b")
    tampered = bytearray((bundle / "synthesis.onnx").read_bytes())
    tampered[len(tampered) // 2] ^= 1  # one bit of a weight: still a valid model that ONNX Runtime would run
    (copy / "synthesis.onnx").unlink()  # a hard link to the shared bundle: replace it, never write through it
    (copy / "synthesis.onnx").write_bytes(tampered)
    done = run(psp_infer, copy, "--face", folder / "face.png", "--out-image", tmp_path / "o.png")
    assert done.returncode == 7, done.stderr
    assert "synthesis.onnx: contents do not match the manifest's sha256" in done.stderr


def test_cpp_refuses_a_manifest_its_graphs_contradict(psp_infer, case, tmp_path):
    bundle, folder, _ = case
    copy = _copy(bundle, tmp_path / "b")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocess"]["mean"] = [0.4, 0.5, 0.5]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    done = run(psp_infer, copy, "--face", folder / "face.png", "--out-image", tmp_path / "o.png")
    assert done.returncode == 7, done.stderr
    assert "manifest.json: preprocess.mean is [0.4,0.5,0.5] but synthesis.onnx declares [0.5,0.5,0.5]" in done.stderr


def test_cpp_applies_a_direction_as_the_python_runtime_does(psp_infer, case, tmp_path):
    """docs/bundle.md's formulas, one direction at a time: InterFaceGAN and GANSpace (which reads the codes), within
    one level of the Python runtime's image; an edited direction file is refused as any bundle file is."""
    bundle, folder, result = case
    copy = _copy(bundle, tmp_path / "b")
    add_direction(copy, "age", interfacegan_file(tmp_path / "age.pt"))
    add_direction(copy, "smile", ganspace_file(tmp_path / "pca.pt")[0], ganspace=GanspaceEdit(46, 2, 6, -20))
    with Pipeline.from_bundle(copy) as pipeline:
        for edit in (("age", -2.5), ("smile", 0.7)):
            expected = pipeline.run(result.aligned[0].image, align=False, edits=[edit]).images[0]
            out = tmp_path / f"{edit[0]}.png"
            done = run(
                psp_infer, copy, "--face", folder / "face.png", "--out-image", out, "--edit", f"{edit[0]}:{edit[1]}"
            )
            assert done.returncode == 0, done.stderr
            image = np.asarray(Image.open(out))
            assert np.abs(image.astype(int) - expected).max() <= 1
            assert np.abs(image.astype(int) - result.images[0]).max() > 10  # the edit changed the face
    unknown = run(
        psp_infer, copy, "--face", folder / "face.png", "--out-image", tmp_path / "o.png", "--edit", "gender:1"
    )
    assert unknown.returncode == 2 and "no direction gender (it has: age, smile)" in unknown.stderr
    values = np.load(copy / "directions" / "age.npy")
    np.save(copy / "directions" / "age.npy", values * 2)
    edited = run(psp_infer, copy, "--face", folder / "face.png", "--out-image", tmp_path / "o.png", "--edit", "age:1")
    assert edited.returncode == 7 and "age.npy: contents do not match the manifest's sha256" in edited.stderr
