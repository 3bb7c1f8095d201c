"""Engines: ONNX Runtime optimized models (here), TensorRT plans and CUDA memory (where a GPU is)."""

import json

import numpy as np
import pytest
from skimage import data

from psp_deploy.bundle import Bundle, EngineRecord, ModelRecord, TensorSpec
from psp_deploy.engines import build_engines
from psp_deploy.errors import BackendUnavailableError, BundleError, EngineError
from psp_deploy.runtime import Pipeline
from psp_deploy.runtime.backends import BackendOptions
from psp_deploy.runtime.backends.onnxruntime import TUNING, cuda_key, provider_options, tuned_options
from psp_deploy.runtime.backends.options import BatchProfile, BuildOptions
from psp_deploy.runtime.backends.tensorrt import check_engine_matches_machine, plan_record, profile_shapes


def _tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401

        from psp_deploy.runtime.backends.cuda_memory import device_properties

        device_properties()
    except Exception as err:  # noqa: BLE001 - any reason means: no TensorRT here
        return f"TensorRT with a CUDA GPU is not available on this machine ({type(err).__name__}: {err})"
    return None


def _cuda_missing() -> str | None:
    try:
        from psp_deploy.runtime.backends.cuda_memory import device_properties

        device_properties()
    except Exception as err:  # noqa: BLE001
        return f"no CUDA device reachable through cuda-python here ({type(err).__name__}: {err})"
    return None


def test_onnxruntime_engines_load_and_match(bundle_copy, bundles):
    engines = build_engines(bundle_copy, "onnxruntime")
    assert [e.graph for e in engines] == ["encoder", "mapping", "synthesis"]
    assert all(e.details["onnxruntime"] and "cpu_flags" in e.details for e in engines)
    photo = data.astronaut()
    with Pipeline.from_bundle(bundle_copy) as fast, Pipeline.from_bundle(bundles("rgb-scaled")[0].root) as plain:
        assert fast.encoder.path.parent.name == "onnxruntime"  # the saved optimized model
        a, b = fast.run(photo), plain.run(photo)
    assert np.abs(a.codes - b.codes).max() < 1e-4
    assert np.abs(a.images.astype(int) - b.images.astype(int)).max() <= 1


def test_onnxruntime_engine_for_another_cpu_is_refused(bundle_copy):
    build_engines(bundle_copy, "onnxruntime")
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["engines"][0]["details"]["cpu_flags"] = ["avx512f", "amx_tile"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        EngineError, match="was built for .*cpu_flags.*this machine is .* rebuild it .* or pass --no-engines"
    ):
        Pipeline.from_bundle(bundle_copy)
    with Pipeline.from_bundle(
        bundle_copy, options=BackendOptions(engines=False)
    ) as pipeline:  # the plain graphs still work
        assert pipeline.encoder.path.name == "encoder.onnx"


def test_profile_shapes_follow_the_batch_axis():
    dynamic = ModelRecord("e.onnx", "", "fp32", 18, [TensorSpec("image", ("batch", 3, 256, 256))], [])
    fixed = ModelRecord("s.onnx", "", "fp32", 18, [TensorSpec("codes", (4, 18, 512))], [])
    assert profile_shapes(dynamic, BatchProfile(1, 4, 16)) == [
        {"input": "image", "min": [1, 3, 256, 256], "opt": [4, 3, 256, 256], "max": [16, 3, 256, 256]}
    ]
    assert profile_shapes(fixed, BatchProfile(1, 4, 16))[0]["max"] == [4, 18, 512]
    with pytest.raises(EngineError, match="1 ≤ min ≤ opt ≤ max"):
        BatchProfile(2, 1, 8)


def test_tensorrt_plans_must_match_the_machine():
    device = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    engine = EngineRecord(
        "tensorrt", "synthesis", "fp16", "engines/tensorrt/synthesis.fp16.plan", "", {"tensorrt": "10.13.0", **device}
    )
    check_engine_matches_machine(engine, "10.13.0", device)  # matches: no error
    with pytest.raises(EngineError, match="built with TensorRT 10.13.0, this is 10.14.1"):
        check_engine_matches_machine(engine, "10.14.1", device)
    with pytest.raises(EngineError, match=r"built for NVIDIA H100 80GB HBM3 \(sm 9.0\).* NVIDIA L4 \(sm 8.9\)"):
        check_engine_matches_machine(engine, "10.13.0", {"gpu": "NVIDIA L4", "compute_capability": "8.9"})
    engine.details["version_compatible"] = True
    check_engine_matches_machine(engine, "10.14.1", device)  # version-compatible plans run on later TensorRT


def test_missing_tensorrt_engine_says_how_to_build_it(bundles):
    bundle = Bundle.open(bundles("rgb-scaled")[0].root)
    with pytest.raises(
        BundleError,
        match=r"no tensorrt fp32 engine for the encoder graph; build it with "
        r"`psp-deploy build .* --backend tensorrt --precision fp32`",
    ):
        plan_record(bundle, bundle.resolve("encoder", "fp32", "tensorrt"))


@pytest.mark.skipif(_tensorrt_missing() is None, reason="TensorRT is installed here: the real build test runs")
def test_tensorrt_backend_says_why_it_is_unavailable(bundles):
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed here|no CUDA device"):
        Pipeline.from_bundle(bundles("rgb-scaled")[0].root, backend="tensorrt")


@pytest.mark.skipif(_tensorrt_missing() is not None, reason=str(_tensorrt_missing()))
def test_tensorrt_plans_build_and_match_onnxruntime(bundle_copy):
    engines = build_engines(bundle_copy, "tensorrt", "fp32", options=BuildOptions(batch=BatchProfile(1, 2, 4)))
    assert all(e.details["tf32"] is False for e in engines)  # fp32 is IEEE FP32 unless --tf32 asks
    photo = data.astronaut()
    with Pipeline.from_bundle(bundle_copy, backend="tensorrt") as trt, Pipeline.from_bundle(bundle_copy) as ort:
        a, b = trt.run(photo), ort.run(photo)
        codes = np.repeat(b.codes, 3, axis=0)
        np.testing.assert_allclose(trt.synthesize(codes)[0], ort.synthesize(codes)[0], atol=1e-2)
    assert np.abs(a.codes - b.codes).max() < 1e-2


@pytest.mark.skipif(_cuda_missing() is not None, reason=str(_cuda_missing()))
def test_cuda_memory_round_trip_reuse_and_no_leak():
    from psp_deploy.runtime.backends.cuda_memory import CudaMemory, check, cudart

    memory = CudaMemory()
    rt = memory.rt
    x = np.arange(1000, dtype=np.float32).reshape(10, 100)
    buf = memory.upload("x", x)
    out = memory.buffer("y", x.shape, x.dtype)
    kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
    check(rt.cudaMemcpyAsync(out.device, buf.device, buf.nbytes, kind, memory.stream))
    memory.enqueue_download(out)
    memory.synchronize()
    np.testing.assert_array_equal(out.host, x)
    address = buf.device
    free_before = check(cudart().cudaMemGetInfo())[0]
    for i in range(500):
        assert memory.upload("x", x + i).device == address  # same shape: the same buffer, reused
    memory.synchronize()
    assert check(cudart().cudaMemGetInfo())[0] >= free_before - (1 << 20)
    memory.close()


def test_measured_cuda_settings_apply_on_their_gpu_only(bundles):
    """What `build --backend onnxruntime --device cuda` records reaches the CUDA provider's options on the
    GPU it was measured on, and is refused elsewhere (measured itself in tests/gpu)."""
    bundle = Bundle.open(bundles("rgb-scaled")[0].root)  # the manifest edited in memory only
    synthesis = bundle.resolve("synthesis", "fp32", "onnxruntime")
    settings = {"cuda_conv": {"algo_search": "HEURISTIC", "prefer_nhwc": True}, "cuda_graph": True, "tf32": False}
    graph_file = (synthesis.record.file, synthesis.record.sha256)
    record = EngineRecord(TUNING, "synthesis", "fp32", *graph_file, {**cuda_key(), **settings})
    bundle.manifest.engines.append(record)
    cuda = BackendOptions(device="cuda")
    assert tuned_options(bundle, bundle.resolve("encoder", "fp32", "onnxruntime"), cuda) == cuda  # none measured
    chosen = provider_options("synthesis", tuned_options(bundle, synthesis, cuda))[0][1]
    assert [chosen[k] for k in ("cudnn_conv_algo_search", "prefer_nhwc", "enable_cuda_graph")] == [
        "HEURISTIC",
        "1",
        "1",
    ]
    refusals = [
        (BackendOptions(device="cuda", tf32=True), {}, r"\{'tf32': False\}, this machine is \{'tf32': True\}"),
        (cuda, {"gpu": "no-such-gpu"}, r"no-such-gpu.*`psp-deploy build --backend onnxruntime --device cuda`"),
    ]
    for options, change, message in refusals:
        record.details.update(change)
        with pytest.raises(EngineError, match="measured for .*" + message):
            tuned_options(bundle, synthesis, options)
    record.details.update(cuda_key())
    record.sha256 = "0" * 64  # timed on a graph file since replaced (re-exported, recalibrated)
    with pytest.raises(EngineError, match="measured for another synthesis graph file than the bundle's"):
        tuned_options(bundle, synthesis, cuda)


def test_onnxruntime_build_says_once_what_its_saved_models_are_tied_to(bundle_copy, capfd):
    """ONNX Runtime's own log (raw ANSI colours, once per graph) warns that a saved optimized model "may contain
    hardware specific optimizations": silenced; the command says once, in its words, what that means here."""
    from typer.testing import CliRunner

    from psp_deploy.cli import app

    result = CliRunner().invoke(app, ["build", str(bundle_copy), "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    stderr = capfd.readouterr().err  # ONNX Runtime logs from C++ straight to file descriptor 2
    assert "Serializing optimized model" not in stderr + result.output and "\x1b[" not in stderr, stderr
    notes = [line for line in result.output.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1, result.output
    assert "tied to this machine: to ONNX Runtime" in notes[0] and "pass --no-engines" in notes[0]
