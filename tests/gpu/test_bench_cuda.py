"""`psp-deploy bench --device cuda` on the GPU: the GPU recorded, CUDA-synchronised pipeline rows with the
graphs alone (bound on the device) and the host overhead beside them, the torch baseline in FP32 and FP16
autocast, TF32 recorded. No timing asserted: only what was measured and recorded."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from psp_deploy.benchmark.harness import ALIGN_NOTE
from psp_deploy.cli import app
from psp_deploy.runtime import Pipeline
from psp_deploy.runtime.backends import BackendOptions
from psp_deploy.runtime.backends.onnxruntime.bound import BoundGraph

STAGES = ("encode", "synthesize", "e2e")


def _bench(bundle, out, *extra):
    args = ["bench", str(bundle), "--device", "cuda", "--backend", "onnxruntime", "--runs", "2", "--warmup", "1"]
    result = CliRunner().invoke(app, [*args, "--stages", ",".join(STAGES), "-o", str(out), *extra])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_bench_on_cuda_records_the_gpu_graphs_alone_and_host_overhead(bundles, small_ckpt, tmp_path):
    import torch

    if not torch.cuda.is_available():  # checked here, so that on a machine without a GPU the GPU skip speaks
        pytest.skip(f"the official baseline on the GPU needs torch with CUDA; torch {torch.__version__} has none")
    data = _bench(
        bundles("rgb-scaled")[0].root, tmp_path / "bench.json", "--batch", "1,2", "--baseline", str(small_ckpt)
    )
    gpu = data["gpu"]
    assert gpu["name"] and gpu["driver"] and gpu["driver_cuda"] and gpu["compute_capability"], gpu
    assert "CUDAExecutionProvider" in gpu["onnxruntime"]["providers"] and gpu["onnxruntime"]["version"]
    assert gpu["torch"]["version"] and gpu["torch"]["cuda"], gpu["torch"]
    assert data["synchronised_by"] and data["settings"]["device"] == "cuda" and ALIGN_NOTE in data["notes"]
    _assert_sessions_on_cuda(data, tf32="0")
    rows = data["results"]
    assert all(r["device"] == "cuda" and r["tf32"] is False for r in rows)
    ours = {(r["batch"], r["stage"], r["part"]): r for r in rows if r["backend"] == "onnxruntime"}
    parts = ("pipeline", "graphs", "host")
    assert set(ours) == {(b, s, p) for b in (1, 2) for s in STAGES for p in parts}
    for (batch, stage, part), row in ours.items():
        if part == "host":
            pipeline, graphs = ours[(batch, stage, "pipeline")], ours[(batch, stage, "graphs")]
            expected = pipeline["latency_s"]["p50"] - graphs["latency_s"]["p50"]
            assert row["latency_s"]["p50"] == pytest.approx(expected)
    official = {(r["precision"], r["batch"], r["stage"]) for r in rows if r["backend"] == "torch-official"}
    assert official == {(p, b, s) for p in ("fp32", "fp16") for b in (1, 2) for s in STAGES}


def test_bench_on_cuda_records_tf32_when_asked(bundles, tmp_path):
    data = _bench(bundles("rgb-scaled")[0].root, tmp_path / "bench.json", "--batch", "1", "--tf32")
    assert data["settings"]["tf32"] is True and all(r["tf32"] is True for r in data["results"])
    _assert_sessions_on_cuda(data, tf32="1")


def _assert_sessions_on_cuda(data, tf32):
    """Every session ran on the CUDA provider (no silent CPU fallback) with the TF32 mode recorded."""
    sessions = data["pipelines"]["onnxruntime fp32"]["sessions"]
    assert all(s["providers"][0] == "CUDAExecutionProvider" for s in sessions.values()), sessions
    assert {s["provider_options"]["CUDAExecutionProvider"]["use_tf32"] for s in sessions.values()} == {tf32}


def test_graphs_bound_on_the_gpu_compute_what_the_pipeline_does(bundles):
    bundle = bundles("rgb-scaled")[0]
    codes = np.random.default_rng(0).standard_normal((2, bundle.config.n_styles, 512)).astype(np.float32)
    with Pipeline.from_bundle(bundle.root, options=BackendOptions(device="cuda")) as pipeline:
        image, pooled = pipeline.synthesize(codes)
        net = pipeline.nets["synthesis"]
        bound = BoundGraph(net.session, {"codes": codes}, net.record.outputs, "cuda")
        bound()
        assert {value.device_name().lower() for value in bound.outputs.values()} == {"cuda"}
        outputs = dict(zip(bound.outputs, bound.binding.copy_outputs_to_cpu(), strict=True))
    np.testing.assert_allclose(outputs["image"], image, atol=1e-4)
    np.testing.assert_allclose(outputs["image_256"], pooled, atol=1e-4)
