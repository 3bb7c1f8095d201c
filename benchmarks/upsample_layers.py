"""The 1024² synthesis' eight stride-2 upsampling convs alone, batch 1, FP32 on ONNX Runtime and OpenVINO:
as one ConvTranspose (the `transpose` form) against ONE 2×2 convolution that gives all four output phases
at once (4·out channels, about 16/9 of the multiply-adds) followed by DepthToSpace. The `phase` form's four
exact sub-kernel convs are measured whole-graph by cpu_forms.py; this asks whether one bigger, denser
GEMM pays for its extra multiply-adds on a CPU. Writes benchmarks/results/<cpu>-upsample-layers.json.

    .venv/bin/python benchmarks/upsample_layers.py [--runs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
from common import save_json, say
from onnx import TensorProto, helper, numpy_helper

from psp_deploy.machine import cpu_info, library_versions
from psp_deploy.measure.timing import measure
from psp_deploy.runtime.backends.onnxruntime import session_options
from psp_deploy.runtime.backends.openvino import compile_config

# (in channels, out channels, input size) of FFHQ 1024's upsampling convs
LAYERS = [(512, 512, 4), (512, 512, 8), (512, 512, 16), (512, 512, 32), (512, 256, 64), (256, 128, 128)]
LAYERS += [(128, 64, 256), (64, 32, 512)]
# Per output parity, the transposed conv's kernel tap at each row (column) of a 2×2 window over input
# rows i − 1 and i: even outputs take tap 2 from row i − 1 and tap 0 from row i, odd ones tap 1 from row i.
WINDOW_TAPS = {0: {0: 2, 1: 0}, 1: {1: 1}}


def graph(nodes: list, weights: dict[str, np.ndarray], shape_in: list[int], shape_out: list[int]) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(value, name) for name, value in weights.items()]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape_out)
    opset = [helper.make_opsetid("", 18)]
    return helper.make_model(helper.make_graph(nodes, "layer", [x], [y], inits), opset_imports=opset)


def transposed(weight: np.ndarray, size: int) -> onnx.ModelProto:
    """``weight`` [in, out, 3, 3] as ConvTranspose stride 2: [1, out, 2·size + 1, …]."""
    c_in, c_out = weight.shape[:2]
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    return graph([node], {"w": weight}, [1, c_in, size, size], [1, c_out, 2 * size + 1, 2 * size + 1])


def windowed(weight: np.ndarray, size: int) -> onnx.ModelProto:
    """The same transposed conv as one 2×2 conv (padding 1) with each output channel's four phases as
    channels, interleaved by DepthToSpace (CRD): [1, out, 2·size + 2, …], the last row and column zero."""
    c_in, c_out = weight.shape[:2]
    taps = weight.transpose(1, 0, 2, 3)  # [out, in, 3, 3]
    kernel = np.zeros((c_out, 4, c_in, 2, 2), np.float32)
    for row_parity, rows in WINDOW_TAPS.items():
        for col_parity, cols in WINDOW_TAPS.items():
            for at_row, tap_row in rows.items():
                for at_col, tap_col in cols.items():
                    kernel[:, 2 * row_parity + col_parity, :, at_row, at_col] = taps[:, :, tap_row, tap_col]
    nodes = [
        helper.make_node("Conv", ["x", "k"], ["phases"], pads=[1, 1, 1, 1]),
        helper.make_node("DepthToSpace", ["phases"], ["y"], blocksize=2, mode="CRD"),
    ]
    out = 2 * size + 2
    return graph(nodes, {"k": kernel.reshape(4 * c_out, c_in, 2, 2)}, [1, c_in, size, size], [1, c_out, out, out])


def runners(model: onnx.ModelProto, threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Each backend's call, with the settings the runtime gives it (FP32, latency, ``threads``)."""
    source = model.SerializeToString()
    session = ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])
    core, config = ov.Core(), compile_config("fp32", "latency", threads)
    request = core.compile_model(core.read_model(source, b""), "CPU", config).create_infer_request()
    return {
        "onnxruntime": lambda x: session.run(None, {"x": x})[0],
        "openvino": lambda x: next(iter(request.infer({0: x}).values())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for c_in, c_out, size in LAYERS:
        weight = (rng.standard_normal((c_in, c_out, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
        x = rng.standard_normal((1, c_in, size, size)).astype(np.float32)
        forms = {"transpose": runners(transposed(weight, size), args.threads)}
        forms["window"] = runners(windowed(weight, size), args.threads)
        reference = forms["transpose"]["onnxruntime"](x)
        row = {"layer": f"{c_in}→{c_out} at {size}²"}
        for form, backends in forms.items():
            for backend, run in backends.items():
                out = run(x)[:, :, : 2 * size + 1, : 2 * size + 1]
                assert np.abs(out - reference).max() < 1e-4, (form, backend)  # the same transposed conv
                latency = measure(lambda run=run, x=x: run(x), warmup=2, runs=args.runs)
                row[f"{form} {backend} ms"] = 1e3 * latency.p50
        say(str(row))
        rows.append(row)
    totals = {key: sum(r[key] for r in rows) for key in rows[0] if key != "layer"}
    say(f"totals: {totals}")
    results = {
        "command": "benchmarks/upsample_layers.py " + " ".join(sys.argv[1:]),
        "machine": cpu_info(),
        "versions": library_versions(),
        "settings": {"runs": args.runs, "threads": args.threads, "batch": 1, "precision": "fp32"},
        "layers": rows,
        "totals_ms": totals,
    }
    path = save_json(results, "-upsample-layers")
    say(f"results: {path}")


if __name__ == "__main__":
    main()
