"""The OpenVINO backend: parity with ONNX Runtime, explicit precision, cache, fixed-batch models."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data

from psp_deploy.benchmark.op_profile import profile_graph
from psp_deploy.bundle import Bundle
from psp_deploy.calibration import calibrate_bundle
from psp_deploy.calibration.report import psnr_db
from psp_deploy.errors import BackendUnavailableError, EngineError
from psp_deploy.machine import cpu_info, has_native_bf16
from psp_deploy.runtime import Pipeline
from psp_deploy.runtime.backends import REGISTRY, BackendOptions, resolve_backend
from psp_deploy.runtime.backends.openvino import OpenVINOBackend
from psp_deploy.runtime.cache import CACHE_ENV, cache_root

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'psp-deploy[openvino]')")
pytestmark = pytest.mark.xdist_group("openvino")  # see tests/conftest.py
NO_BF16 = f"this CPU ({cpu_info()['model']}, flags {cpu_info()['flags']}) has no native BF16"


@pytest.fixture(scope="module")
def pipelines(bundles):
    root = bundles("rgb-scaled")[0].root
    with Pipeline.from_bundle(root, backend="openvino") as ov, Pipeline.from_bundle(root) as ort:
        yield ov, ort


def test_openvino_fp32_matches_onnxruntime(pipelines):
    ov, ort = pipelines
    x = ort.prepare(data.astronaut())[0][None]
    codes_ov, codes_ort = ov.encode(x), ort.encode(x)
    assert np.abs(codes_ov - codes_ort).max() <= 1e-3
    codes = np.concatenate([codes_ort, codes_ort + 0.3])
    assert psnr_db(ov.synthesize(codes)[0], ort.synthesize(codes)[0]) >= 50


def test_fp32_is_pinned_never_left_to_the_plugin(pipelines, bundles):
    ov, _ = pipelines
    for backend in (ov.encoder, ov.mapping_net, ov.synthesis_net):
        assert str(backend.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    assert ov.precisions == {"encoder": "fp32", "mapping": "fp32", "synthesis": "fp32"}


def test_running_never_writes_into_the_bundle(bundles):
    """Compiled-model caches go to the cache folder, keyed by each graph's sha256."""
    root = bundles("rgb-scaled")[0].root
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    with Pipeline.from_bundle(root, backend="openvino") as ov:
        ov.run(data.astronaut())
        shas = {net.record.sha256 for net in ov.nets.values()}
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    cached = {p.name for p in (cache_root() / "openvino").iterdir() if any(p.iterdir())}
    assert shas <= cached


def test_built_blobs_are_imported_and_match(bundle_copy, pipelines, tmp_path):
    """As a user does it: a run fills the cache, then `build` (fresh processes). OpenVINO exports a
    model it loaded from its cache as a blob it cannot import: build must compile afresh."""
    ov, _ = pipelines
    Image.fromarray(np.full((256, 256, 3), 120, np.uint8)).save(tmp_path / "face.png")
    env = {**os.environ, CACHE_ENV: str(tmp_path / "cache")}
    for args in (
        ["run", bundle_copy, tmp_path / "face.png", "-o", tmp_path / "out", "--no-align"],
        ["build", bundle_copy],
    ):
        cli = [sys.executable, "-m", "psp_deploy.cli", *map(str, args)]
        done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    with Pipeline.from_bundle(bundle_copy, "openvino") as built:
        assert {net.source.suffix for net in built.nets.values()} == {".blob"}
        x = ov.prepare(data.astronaut())[0][None]
        np.testing.assert_array_equal(codes := built.encode(x), ov.encode(x))
        # batch 1 of the synthesis runs its own model from the ONNX graph; the blob is for other sizes
        np.testing.assert_array_equal(built.synthesize(codes)[0], ov.synthesize(codes)[0])
        assert built.synthesis_net.compiled_batches == [1]
        pair = np.concatenate([codes, codes])
        assert psnr_db(built.synthesize(pair)[0], ov.synthesize(pair)[0]) >= 60
    with Pipeline.from_bundle(bundle_copy, "openvino", options=BackendOptions(threads=1)) as other:
        assert {net.source.suffix for net in other.nets.values()} == {".blob"}  # threads are a run-time setting
    # one policy for every backend: a blob made for another CPU is refused with the reason, never skipped
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["engines"][0]["details"]["cpu_flags"] = ["avx512f", "amx_tile"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="was built for .*amx_tile.*this machine is .* or pass --no-engines"):
        Pipeline.from_bundle(bundle_copy, "openvino")
    with Pipeline.from_bundle(bundle_copy, "openvino", options=BackendOptions(engines=False)) as plain:
        assert {net.source.suffix for net in plain.nets.values()} == {".onnx"}


def test_fp32_profile_shows_only_f32_kernels(pipelines, bundles):
    _, ort = pipelines
    seconds = profile_graph(bundles("rgb-scaled")[0], "synthesis", "openvino", "fp32", {"codes": ort.style_latent(0)})
    convolutions = [k for k in seconds if k.startswith("Convolution [")]
    assert convolutions and all("f32" in k.lower() for k in convolutions), seconds
    assert not any("bf16" in k.lower() for k in seconds), seconds


def test_batch_one_synthesis_runs_a_model_compiled_for_one_and_agrees(pipelines, bundles):
    """Batch 1 of the synthesis gets its own fixed-shape model, compiled when first needed; other sizes
    share the model compiled for any batch, and so does every size of the encoder. Both give the same
    images."""
    ov, ort = pipelines
    codes = np.concatenate([ort.style_latent(0), ort.style_latent(1)])
    with OpenVINOBackend.from_bundle(bundles("rgb-scaled")[0], "synthesis", "fp32") as synthesis:
        single = synthesis.infer({"codes": codes[:1]})["image"]
        assert synthesis.compiled_batches == [1]  # a batch-1 user holds one model
        pair = synthesis.infer({"codes": codes})["image"]
        assert synthesis.compiled_batches == [1, None]
        fixed = synthesis.compiled_for(1).inputs[0].get_partial_shape()
        assert [d.get_length() for d in fixed] == [1, *codes.shape[1:]]
        assert synthesis.compiled_for(2) is synthesis.compiled
        assert synthesis.compiled.inputs[0].get_partial_shape()[0].is_dynamic
    assert ov.encoder.compiled_for(1) is ov.encoder.compiled
    assert psnr_db(single[0], pair[0]) >= 60


@pytest.mark.skipif(has_native_bf16(), reason="this CPU has native BF16: the refusal does not apply")
def test_bf16_is_refused_without_native_support(bundles):
    with pytest.raises(BackendUnavailableError, match="no native BF16 .* --force-bf16"):
        Pipeline.from_bundle(bundles("rgb-scaled")[0].root, backend="openvino", precision="bf16")


@pytest.mark.skipif(not has_native_bf16(), reason=NO_BF16)
def test_bf16_accuracy_is_reported(bundle_copy):
    report = calibrate_bundle(bundle_copy, "bf16", backend="openvino", synthetic=8)
    # BF16's gate (40 dB, as at 1024²); this 64² bundle measured 51.5 dB (synthesis) and 53.0 dB (end to end)
    scores = {g.name: g.psnr_db for g in report.graphs}
    assert scores["synthesis"] >= 40 and scores["end-to-end"] >= 40, scores


def test_openvino_int8_runs_the_qdq_graphs_and_reports_accuracy(bundle_copy):
    report = calibrate_bundle(
        bundle_copy, "int8", backend="openvino", synthetic=6, graphs=("synthesis",), methods=("minmax",), rounds=0
    )
    assert report.backend == "openvino-cpu"
    assert next(g for g in report.graphs if g.name == "synthesis").psnr_db >= 28
    assert (bundle_copy / "reports" / "openvino-int8.json").exists()
    with Pipeline.from_bundle(bundle_copy, backend="openvino", precision="int8") as ov:
        assert ov.precisions["synthesis"] == "int8" and ov.precisions["encoder"] == "fp32"
        codes = ov.style_latent(0)
        quantized = ov.synthesize(codes)[0]
    with Pipeline.from_bundle(bundle_copy, backend="openvino") as fp32:
        exact = fp32.synthesize(codes)[0]
    assert not np.array_equal(quantized, exact) and psnr_db(quantized, exact) >= 28  # the int8 graph ran
    kernels = profile_graph(Bundle.open(bundle_copy), "synthesis", "openvino", "int8", {"codes": codes})
    assert any(k.startswith("Convolution [") and "i8" in k.lower() for k in kernels), kernels


def test_auto_backend_is_openvino_on_cpu_only_and_explicit_names_stand():
    assert resolve_backend("auto", "cpu") == "openvino"  # installed here (the openvino extra)
    assert resolve_backend("auto", "cuda") == "onnxruntime"
    assert resolve_backend("tensorrt", "cpu") == "tensorrt"


def test_auto_backend_picks_one_that_runs_the_precision():
    assert resolve_backend("auto", "cpu", "fp16") == "onnxruntime"
    assert resolve_backend("auto", "cpu", "bf16") == resolve_backend("auto", "cpu", "int8") == "openvino"


def test_openvino_refuses_fp16_listing_what_each_backend_runs(bundles):
    with pytest.raises(
        BackendUnavailableError, match=r"openvino does not run fp16 \(precisions per backend — "
    ) as refused:
        Pipeline.from_bundle(bundles("rgb-scaled")[0].root, backend="openvino", precision="fp16")
    for known in ("onnxruntime: fp32, fp16, int8", "openvino: fp32, bf16, int8", "tensorrt: fp32, fp16, int8"):
        assert known in str(refused.value)
    assert all(f"{name}: " in str(refused.value) for name in REGISTRY)  # every backend, as the one table lists it
    with pytest.raises(BackendUnavailableError, match="onnxruntime does not run fp64"):
        Pipeline.from_bundle(bundles("rgb-scaled")[0].root, precision="fp64")
