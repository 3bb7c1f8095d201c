"""INT8 Q/DQ graphs with onnxruntime.quantization, in the form TensorRT consumes.

Symmetric per-channel INT8 weights and symmetric per-tensor INT8 activations (zero
points 0, as TensorRT requires), Q/DQ only around Conv, ConvTranspose, Gemm and MatMul.
Light nodes stay in float from the start: the lightest nodes of a graph, together at most
LIGHT_BUDGET of its multiply-adds (squeeze-excitation 1×1 convs, the input conv, the style
heads' smaller convs and linears, the modulations, ToRGB, the low-resolution layers), so INT8
gives up little speed there, and they are where it cost the most accuracy
(benchmarks/results/*-int8-*.md). The calibration method is then picked by measured accuracy;
nodes whose quantized outputs match the float ones worst (per-tensor SQNR) are kept in float,
one round at a time, while that improves the held-back error.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import CalibrationError
from .data import FeedReader
from .progress import Progress, quiet

QUANTIZED_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul"]
METHODS = ("minmax", "entropy", "percentile")
LIGHT_BUDGET = 0.05  # of a graph's multiply-adds: INT8 still runs at least 95% of the work


def light_nodes(flops: dict[str, float], budget: float = LIGHT_BUDGET) -> list[str]:
    """The lightest nodes of ``flops`` (name → FLOPs) that together carry at most ``budget`` of the total.

    A budget, not a per-node share: the encoder's 50 residual convs each carry ~1% of its work, so a
    per-node threshold flips half of the graph to float with the number of style heads."""
    total, spent, light = sum(flops.values()), 0.0, []
    for name, f in sorted(flops.items(), key=lambda item: item[1]):
        if spent + f > budget * total:
            break
        light.append(name)
        spent += f
    return light


@dataclass
class Int8Attempt:
    method: str
    excluded: list[str]
    score: float  # held-back quality: higher is better (dB or cosine, as the caller measures)
    path: Path


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if name not in table:
        raise CalibrationError(f"unknown calibration method {name!r}; choose from {', '.join(METHODS)}")
    return table[name]


def quantize(
    src: Path,
    dst: Path,
    feeds: list[dict[str, np.ndarray]],
    method: str,
    exclude: list[str],
    on_read: Callable[[], None] | None = None,
) -> Path:
    """``src`` quantized to ``dst`` on ``feeds``; ``on_read`` is told each feed the calibration pass reads."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quantize_static(
            str(src),
            str(dst),
            FeedReader(feeds, on_read),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=_method(method),
            nodes_to_exclude=exclude,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "CalibMovingAverage": method == "minmax",
                # Histogram methods otherwise hold every sample's activations at once (tens of GiB
                # at 1024²); one sample per pass merges the same histograms in bounded memory.
                **({"CalibStridedMinMax": 1} if method != "minmax" else {}),
            },
        )
    return dst


def node_sqnr(float_path: Path, qdq_path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per quantized node: the worst SQNR (dB) of its inputs' quantization (before vs after
    Q/DQ, both inside the quantized graph) on ``feeds``: low means its inputs quantize badly."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory() as tmp:
        augmented = Path(tmp) / "qdq.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            modify_model_output_intermediate_tensors(str(qdq_path), str(augmented))
            matching = create_activation_matching(collect_activations(str(augmented), FeedReader(feeds)))
    errors = {t: compute_signal_to_quantization_noice_ratio(m["pre_qdq"], m["post_qdq"]) for t, m in matching.items()}
    scores: dict[str, float] = {}
    for node in onnx.load(float_path, load_external_data=False).graph.node:
        if node.op_type in QUANTIZED_OPS:
            local = [errors[t] for t in node.input if t in errors]
            if local:
                scores[node.name] = float(min(local))
    return scores


def calibrate_int8(
    src: Path,
    dst: Path,
    calib: list[dict[str, np.ndarray]],
    score: Callable[[Path], float],
    *,
    light: list[str],
    methods: tuple[str, ...] = METHODS,
    rounds: int = 2,
    per_round: int = 2,
    progress: Progress = quiet,
    stage: str = "int8",
) -> tuple[Int8Attempt, list[Int8Attempt]]:
    """Pick the best method by ``score`` on held-back data, then exclude the worst nodes while it helps.

    ``light`` nodes stay in float in every attempt; an attempt's ``excluded`` lists the others it keeps.
    ``progress`` counts one ``stage``: each attempt is a unit per calibration feed its pass reads and one for
    its ranges and score; rounds that stop early are counted as done."""
    work = Path(tempfile.mkdtemp(prefix="int8-", dir=dst.parent))
    tried: list[Int8Attempt] = []
    per_attempt, done = len(calib) + 1, 0
    total = per_attempt * (len(methods) + rounds)

    def attempt(method: str, excluded: list[str], note: str) -> Int8Attempt:
        nonlocal done
        start = done
        progress(stage, done, total, note)

        def read() -> None:
            nonlocal done
            done = min(done + 1, start + per_attempt - 1)  # a pass reads each feed once; never past its share
            progress(stage, done, total, note)

        name = f"{method}-x{len(excluded)}.onnx" if excluded else f"{method}.onnx"
        path = quantize(src, work / name, calib, method, light + excluded, read)
        result = Int8Attempt(method, excluded, score(path), path)
        done = start + per_attempt
        progress(stage, done, total, note)
        return result

    try:
        for method in methods:
            tried.append(attempt(method, [], f"{method} calibration"))
        best = max(tried, key=lambda a: a.score)
        for r in range(rounds):
            note = f"sensitivity round {r + 1} ({best.method})"
            progress(stage, done, total, note)
            sqnr = node_sqnr(src, best.path, calib[:1])  # every activation twice: ~5 GiB a sample at 1024²
            kept = set(light) | set(best.excluded)
            worst = [n for n, _ in sorted(sqnr.items(), key=lambda kv: kv[1]) if n not in kept][:per_round]
            if not worst:
                break
            tried.append(attempt(best.method, best.excluded + worst, note))
            if tried[-1].score <= best.score:
                break
            best = tried[-1]
        progress(stage, total, total, f"{best.method} won")
        best.path.replace(dst)
        best.path = dst
        return best, tried
    finally:
        for leftover in work.glob("*"):
            leftover.unlink()
        work.rmdir()
