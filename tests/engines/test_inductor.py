"""The AOTInductor engine: packages compiled from the bundle's checkpoint, checked against its ONNX graphs at
build, run by the inductor backend; refused where they were not made for.

Compiling is the cost here (the IR-SE-50 encoder above all): the packages are built once per module, FP32 and
BF16, and every test reads them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from psp_deploy.bundle import GRAPHS, Bundle, EngineRecord
from psp_deploy.calibration.report import AccuracyReport, code_accuracy, image_accuracy, psnr_db
from psp_deploy.engines import build_engines
from psp_deploy.engines.inductor import epsilon_guards, exported, forms, graph_spec
from psp_deploy.errors import BackendUnavailableError, CheckpointError, EngineError
from psp_deploy.files import sha256_file
from psp_deploy.inductor.backend import check_target
from psp_deploy.inductor.resident import normalised
from psp_deploy.inductor.resident import to_uint8 as device_uint8
from psp_deploy.models import load_psp
from psp_deploy.runtime import Pipeline, RunOptions
from psp_deploy.runtime.backends import BackendOptions
from psp_deploy.runtime.backends.options import BuildOptions
from psp_deploy.runtime.preprocess import face_pixels, preprocess_rgb, preprocess_sketch, to_uint8

# a group of its own (see tests/conftest.py): the compiles run on one worker while the other runs the rgb tests
pytestmark = pytest.mark.xdist_group("inductor")
CPU = torch.device("cpu")
PHOTOS = (data.astronaut(), data.chelsea(), data.coffee(), data.rocket())


def build(root: Path, precision: str, checkpoint: Path, device: str = "cpu") -> list[EngineRecord]:
    return build_engines(root, "inductor", precision, options=BuildOptions(device=device, checkpoint=checkpoint))


def linked_copy(source: Path, root: Path) -> Path:
    """A copy of a bundle to write into: files hard-linked, the manifest copied (replaced on save, never edited)."""
    shutil.copytree(source, root, copy_function=os.link)
    (root / "manifest.json").unlink()
    shutil.copy(source / "manifest.json", root / "manifest.json")
    return root


@pytest.fixture(scope="module")
def packages(bundles, small_ckpt, tmp_path_factory) -> Path:
    """The shared scaled bundle (exported from the net the checkpoint file holds; its manifest records the file's
    sha256) with FP32 and BF16 packages of its three graphs."""
    root = linked_copy(bundles("rgb-scaled")[0].root, tmp_path_factory.mktemp("inductor") / "bundle")
    for precision in ("fp32", "bf16"):
        build(root, precision, small_ckpt)
    return root


@pytest.fixture()
def packages_copy(packages, tmp_path) -> Path:
    return linked_copy(packages, tmp_path / "bundle")


def faces(pipeline: Pipeline) -> np.ndarray:
    return np.stack([pipeline.prepare(photo, align=False)[0] for photo in PHOTOS])


def test_fp32_packages_match_the_onnx_graphs(packages):
    with Pipeline.from_bundle(packages, "onnxruntime") as onnx, Pipeline.from_bundle(packages, "inductor") as fused:
        assert fused.describe()["backend"] == "inductor" and fused.precisions == dict.fromkeys(GRAPHS, "fp32")
        x = faces(onnx)
        codes = onnx.encode(x)
        assert np.abs(fused.encode(x) - codes).max() <= 1e-4
        for expected, got in zip(onnx.synthesize(codes), fused.synthesize(codes), strict=True):  # image, image_256
            assert min(psnr_db(e, g) for e, g in zip(expected, got, strict=True)) >= 50
        z = np.random.default_rng(0).standard_normal((11, 512)).astype(np.float32)  # above the packages' 8: chunked
        w = onnx.mapping_net.infer({"z": z})["w"]
        assert np.abs(fused.mapping_net.infer({"z": z})["w"] - w).max() <= 1e-4
        photo = fused.run(PHOTOS[0], align=False)
        assert np.abs(photo.images.astype(int) - onnx.run(PHOTOS[0], align=False).images).max() <= 1


def test_fp32_package_records_what_it_depends_on(packages, small_ckpt):
    encoder = next(e for e in Bundle.open(packages).manifest.engines if (e.graph, e.precision) == ("encoder", "fp32"))
    details = encoder.details
    assert details["torch"] == torch.__version__ and details["device"] == "cpu" and "cpu_flags" in details
    assert details["checkpoint_sha256"] == sha256_file(small_ckpt) and details["batch"] == [1, 8]
    assert details["compile_seconds"] > 0 and details["checked"]["codes"]["max_abs_err"] <= 1e-4


def test_bf16_packages_pass_the_bf16_gate(packages):
    with (
        Pipeline.from_bundle(packages, "onnxruntime") as onnx,
        Pipeline.from_bundle(packages, "inductor", "bf16") as bf16,
    ):
        assert bf16.precisions == dict.fromkeys(GRAPHS, "bf16")
        x = faces(onnx)
        codes = onnx.encode(x)
        images = onnx.synthesize(codes)[0]
        low_codes = bf16.encode(x)
        graphs = [
            code_accuracy(codes, low_codes, Bundle.open(packages).latent_avg()),
            image_accuracy("end-to-end", images, bf16.synthesize(low_codes)[0]),
        ]
    report = AccuracyReport("bf16", "inductor", "four photos", len(x), graphs)
    assert report.passed, report.targets()


@pytest.mark.parametrize(
    "key, value",
    [
        ("torch", "2.0.0"),
        ("cpu_flags", ["avx512f", "amx_tile"]),
        ("device", "cuda"),
        ("checkpoint_sha256", "0" * 64),
    ],
)
def test_a_package_made_for_another_machine_or_checkpoint_is_refused(packages_copy, key, value):
    manifest = json.loads((packages_copy / "manifest.json").read_text())
    manifest["engines"][0]["details"][key] = value
    (packages_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        EngineError, match=rf"was built for {{'{key}': .*this machine is {{'{key}': .* --backend inductor"
    ):
        Pipeline.from_bundle(packages_copy, "inductor")


def test_without_packages_the_backend_says_how_to_build_them(packages_copy):
    manifest = json.loads((packages_copy / "manifest.json").read_text())
    manifest["engines"] = []
    (packages_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        EngineError, match=r"no inductor fp32 package .* build them with `psp-deploy build .* --checkpoint"
    ):
        Pipeline.from_bundle(packages_copy, "inductor")


def test_another_checkpoint_is_refused_naming_both_hashes(bundles, small_ckpt, tmp_path):
    root = linked_copy(bundles("rgb-scaled")[0].root, tmp_path / "bundle")
    other = tmp_path / "other.pt"
    other.write_bytes(small_ckpt.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match=rf"{sha256_file(other)}.* {sha256_file(small_ckpt)}"):
        build(root, "fp32", other)
    with pytest.raises(EngineError, match="compiles from the checkpoint .* pass it with --checkpoint"):
        build_engines(root, "inductor")
    assert not (root / "engines").exists() and Bundle.open(root).manifest.engines == []


def test_fp16_runs_on_cuda_only():
    with pytest.raises(BackendUnavailableError, match="fp16 on CUDA only"):
        check_target("cpu", "fp16")


def test_reduced_precision_keeps_the_epsilon_guards_in_fp32(bundles, small_ckpt):
    """FP16's 1e-8 is zero: without its FP32 islands, PixelNorm of a zero z is NaN (eager FP16 on the CPU
    shows it, as the FP16 ONNX graphs' tests do); with them, zero. Every root of the synthesis' demodulations
    reads FP32."""
    net, bundle = load_psp(small_ckpt).eval(), bundles("rgb-scaled")[0]
    fp16 = lambda graph: exported(graph_spec(net, bundle, graph), forms(bundle), torch.float16, (1, 8), CPU)  # noqa: E731
    mapping, synthesis = fp16("mapping"), fp16("synthesis")
    zero = torch.zeros(2, 512)
    assert torch.equal(mapping.module()(zero), zero)
    with torch.no_grad():
        assert torch.isnan(net.half().mapping(zero.half())).all()
    roots = synthesis.graph.find_nodes(op="call_function", target=torch.ops.aten.rsqrt.default)
    assert roots and all(r.args[0].meta["val"].dtype == torch.float32 for r in roots)
    assert len(epsilon_guards(synthesis.graph)) >= 4 * len(roots)  # square, reduction, epsilon, root each


def test_the_resident_chain_s_steps_equal_the_numpy_preprocessing():
    """What the CUDA chain runs on the device (here on CPU tensors): runtime/preprocess.py's float32 operations,
    bit for bit."""
    faces = np.stack([face_pixels(photo, "rgb") for photo in PHOTOS])
    sketch = face_pixels(PHOTOS[0], "sketch")[None]
    assert np.array_equal(normalised(torch.from_numpy(faces), "rgb").numpy(), [preprocess_rgb(f) for f in faces])
    assert np.array_equal(normalised(torch.from_numpy(sketch), "sketch").numpy()[0], preprocess_sketch(PHOTOS[0]))
    images = np.random.default_rng(0).uniform(-1.2, 1.2, (2, 3, 64, 64)).astype(np.float32)
    assert np.array_equal(device_uint8(torch.from_numpy(images)).numpy(), to_uint8(images))


def test_without_torch_the_backend_names_its_extra(packages):
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "from psp_deploy.errors import BackendUnavailableError\n"
        "from psp_deploy.runtime import Pipeline\n"
        "try:\n"
        f"    Pipeline.from_bundle({str(packages)!r}, 'inductor')\n"
        "except BackendUnavailableError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "needs torch: pip install 'psp-deploy[inductor]'" in done.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU that torch sees")
def test_cuda_packages_run_device_resident_and_match(bundles, small_ckpt, tmp_path):
    """On CUDA the chain is device-resident: the same images as the host path through the same packages, bit for
    bit, and the ONNX graphs' codes and images."""
    root = linked_copy(bundles("rgb-scaled")[0].root, tmp_path / "bundle")
    build(root, "fp32", small_ckpt, device="cuda")
    cuda = BackendOptions(device="cuda")
    with Pipeline.from_bundle(root, "inductor", options=cuda) as fused, Pipeline.from_bundle(root) as onnx:
        assert fused.describe()["resident"] and fused.describe()["tf32"] is False
        host = Pipeline(fused.bundle, fused.nets, max_batch=fused.max_batch)
        host.chain = host.host
        x = np.stack([fused.prepare_face(photo, align=False)[0] for photo in PHOTOS])
        rows = [RunOptions(align=False)] * len(PHOTOS)
        resident, reference = fused.generate(x, rows), host.generate(x, rows)
        for ours, theirs in zip(resident.outputs, reference.outputs, strict=True):
            np.testing.assert_array_equal(ours.codes, theirs.codes)
            np.testing.assert_array_equal(ours.images, theirs.images)
        expected = onnx.generate(x, rows)
        assert np.abs(resident.pixels["image"].astype(int) - expected.pixels["image"]).max() <= 1
        assert (
            max(np.abs(o.codes - e.codes).max() for o, e in zip(resident.outputs, expected.outputs, strict=True))
            <= 1e-4
        )
