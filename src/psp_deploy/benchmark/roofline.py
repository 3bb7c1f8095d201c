"""The machine's own limit: the best rate of one large convolution per backend and precision.

A 512→512 3×3 convolution on a 64×64 map (19.3 GFLOP) is the kind of layer that dominates
the generator; its best measured rate in this run is what the end-to-end rate is held
against, so figures mean the same on an AVX2 laptop and an AMX server.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..machine import has_native_bf16
from ..runtime.backends.registry import spec

CHANNELS, SIZE, KERNEL = 512, 64, 3
CONV_FLOPS = 2.0 * CHANNELS * CHANNELS * KERNEL * KERNEL * SIZE * SIZE


def conv_graph(path: Path) -> Path:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(
        (rng.standard_normal((CHANNELS, CHANNELS, KERNEL, KERNEL)) * 0.02).astype(np.float32), "w"
    )
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CHANNELS, SIZE, SIZE])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def quantized_conv_graph(src: Path, dst: Path) -> Path:
    from ..calibration.int8 import quantize

    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, CHANNELS, SIZE, SIZE)).astype(np.float32)} for _ in range(2)]
    return quantize(src, dst, feeds, "minmax", [])


def best_rate(fn: Callable[[], object], seconds: float = 3.0, min_runs: int = 3) -> float:
    """GFLOP/s of the fastest call within a few seconds of repeated calls (after one warm-up)."""
    fn()
    best, started, runs = float("inf"), time.perf_counter(), 0
    while runs < min_runs or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        fn()
        best, runs = min(best, time.perf_counter() - t), runs + 1
    return CONV_FLOPS / best / 1e9


def _ort(path: Path, threads: int | None) -> Callable[[], object]:
    import onnxruntime as ort

    from ..runtime.backends.onnxruntime import session_options

    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((1, CHANNELS, SIZE, SIZE)).astype(np.float32)
    return lambda: session.run(None, {"x": x})


def _openvino(path: Path, precision: str, threads: int | None) -> Callable[[], object]:
    from ..runtime.backends.openvino import compile_config, import_openvino

    config = compile_config(precision, "latency", threads)
    compiled = import_openvino().Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    x = np.random.default_rng(2).standard_normal((1, CHANNELS, SIZE, SIZE)).astype(np.float32)
    return lambda: request.infer({"x": x})


def _torch(precision: str, threads: int | None) -> Callable[[], object]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    conv = torch.nn.Conv2d(CHANNELS, CHANNELS, KERNEL, padding=1, bias=False).to(dtype).eval()
    x = torch.randn(1, CHANNELS, SIZE, SIZE, dtype=dtype)

    def run() -> object:
        with torch.no_grad():
            return conv(x)

    return run


# How each backend with a CPU probe times the conv graph at a precision (its int8 graph for int8; the FP32 graph,
# compiled at the precision, otherwise); the backends without one (inductor) have no limit line.
PROBES: dict[str, Callable[[Path, str, int | None], Callable[[], object]]] = {
    "onnxruntime": lambda graph, _precision, threads: _ort(graph, threads),
    "openvino": _openvino,
}
CPU_PRECISIONS = ("fp32", "int8", "bf16")  # the precisions a CPU has arithmetic for (fp16 it only converts)


def _probed(backend: str, precisions: set[str]) -> list[str]:
    """The backend's CPU precisions this run measures (fp32 always; bf16 only on CPUs with it natively)."""
    own = [p for p in CPU_PRECISIONS if p in spec(backend).precisions and (p == "fp32" or p in precisions)]
    return [p for p in own if p != "bf16" or has_native_bf16()]


def machine_limits(
    backends: set[str], precisions: set[str], threads: int | None = None, torch_too: bool = True
) -> dict[str, dict[str, float]]:
    """{precision: {backend: GFLOP/s}} for the precisions this run measures (BF16 only on CPUs with it natively)."""
    rates: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {"fp32": conv_graph(Path(tmp) / "conv.onnx")}
        for backend in (name for name in PROBES if name in backends):
            for precision in _probed(backend, precisions):
                if precision == "int8" and "int8" not in graphs:
                    graphs["int8"] = quantized_conv_graph(graphs["fp32"], Path(tmp) / "conv.int8.onnx")
                graph = graphs["int8" if precision == "int8" else "fp32"]
                rates.setdefault(precision, {})[backend] = best_rate(PROBES[backend](graph, precision, threads))
        if torch_too:
            rates.setdefault("fp32", {})["torch"] = best_rate(_torch("fp32", threads))
            if "bf16" in precisions and has_native_bf16():  # a limit of a precision no row ran bounds nothing
                rates.setdefault("bf16", {})["torch"] = best_rate(_torch("bf16", threads))
    return rates
