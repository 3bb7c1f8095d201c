"""AOTInductor packages: a bundle's graphs compiled by PyTorch's ahead-of-time compiler.

Inductor fuses what the ONNX backends run as separate passes over the synthesis' large maps (modulation,
demodulation, noise, bias, activation) into generated kernels around vendor convolutions, on the CPU and on
CUDA. A package is built from the checkpoint the bundle was exported from (its sha256 checked against the
manifest's source), in the forms the bundle records, and checked against the bundle's FP32 ONNX graph on
seeded inputs before it is recorded: the ONNX graphs stay the contract.

Reduced precisions keep in FP32 what the calibrated FP16 graphs keep (calibration/fp16.py): the
epsilon-guarded normalisations (PixelNorm, demodulation), found in the exported graph by the same rule.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ..bundle import Bundle, Resolved
from ..calibration.fp16 import EPS_LIMIT
from ..calibration.report import TARGETS, GraphAccuracy, Target, code_accuracy, image_accuracy, vector_accuracy
from ..errors import CheckpointError, EngineError
from ..export.graphs import GraphSpec, graph_specs
from ..export.parity import ort_session
from ..export.writer import parity_batches
from ..files import sha256_file
from ..inductor.backend import CAPTURED, DTYPES, IO_METADATA, check_target, package_key, set_tf32
from ..inductor.resident import Captured
from ..machine import cpu_info
from ..measure.timing import measure
from ..models import Psp, load_psp
from ..models.forms import using_forms
from ..onnx_metadata import read_metadata
from ..runtime.backends.options import BatchProfile, BuildOptions

AT = torch.ops.aten
# The exported graph's nodes of calibration/fp16.py's epsilon-guard rule: an Add of a tiny positive constant,
# the reduction and square feeding it, the roots after it.
REDUCTIONS = {AT.mean.dim, AT.sum.dim_IntList, AT.matmul.default, AT.mm.default}
SQUARES = {AT.pow.Tensor_Scalar, AT.mul.Tensor}
ROOTS = {AT.rsqrt.default, AT.sqrt.default, AT.reciprocal.default, AT.div.Tensor}
# Inference: weights are constants, so computations of weights alone (the demodulation's energies) fold at compile
# time and the CPU's convolutions take prepacked oneDNN weights with fused epilogues (torch's advice for CPU
# inference).
COMPILE_SETTINGS = {"freezing": True}
CAPTURE_RUNS = 10  # warm-up and timed runs each, launched and replayed
EXPORT_SAMPLE_BATCH = 2  # not 1: torch.export would specialise a batch of 1 as a constant
# FP32 packages against the FP32 ONNX graphs (issue 27's bounds): codes and w as numbers, images as pictures.
FP32_GATES = {
    "encoder": Target("max_abs_err", 1e-4, False, "codes max abs difference", digits=6),
    "mapping": Target("max_abs_err", 1e-4, False, "w max abs difference", digits=6),
    "synthesis": Target("psnr_db_min", 50.0, True, "PSNR (worst sample)", "dB"),
}
COSINE = "cosine_min"  # codes and w at reduced precisions: calibration's codes bound
FINITE = Target("nonfinite", 0, False, "non-finite values", digits=0)


def build_package(bundle: Bundle, resolved: Resolved, target: Path, options: BuildOptions) -> dict[str, Any]:
    """Compile ``resolved``'s graph into an AOTInductor package at ``target`` (atomically) from
    ``options.checkpoint``, check it against the bundle's FP32 ONNX graph at the precision's gate, and return
    the engine record's details: what the package depends on (torch, device, GPU or CPU flags, checkpoint),
    its precision and batch range, the compile time and the check's figures."""
    check_target(options.device, resolved.precision)
    checkpoint, sha256 = checked_checkpoint(bundle, options.checkpoint)
    spec = graph_spec(reference(checkpoint, sha256), bundle, resolved.graph)
    batches = batch_range(spec, options.batch)
    device = torch.device(options.device)
    if options.device == "cuda":
        set_tf32(False)  # FP32 is IEEE FP32, at build as at run time
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as staging:
        staged = Path(staging) / target.name  # checked before it replaces a package already there
        clock = time.perf_counter()
        program = exported(spec, forms(bundle), DTYPES[resolved.precision], batches, device)
        settings = {**COMPILE_SETTINGS, "aot_inductor.metadata": declared(bundle, resolved, spec)}
        torch._inductor.aoti_compile_and_package(program, package_path=str(staged), inductor_configs=settings)
        seconds = time.perf_counter() - clock
        checked = check_package(bundle, resolved, spec, staged, batches, device)
        os.replace(staged, target)
    if options.device == "cuda":
        where = {"cuda_graph": resolved.graph in CAPTURED and capture_pays(target, spec, options.batch, batches)}
    else:
        where = {"cpu": cpu_info()["model"]}
    return {
        **package_key(options.device),
        **where,
        "checkpoint_sha256": sha256,
        "precision": resolved.precision,
        "batch": list(batches),
        "forms": bundle.manifest.modconv,
        "compile_seconds": round(seconds, 1),
        "checked": checked,
        "source": resolved.record.file,
    }


def capture_pays(package: Path, spec: GraphSpec, profile: BatchProfile, batches: tuple[int, int]) -> bool:
    """Whether replaying the package from a CUDA graph beats launching its kernels, timed at the build's
    optimum batch on this GPU (as `build --device cuda` times ONNX Runtime's settings); False where capture
    fails."""
    model = torch._inductor.aoti_load_package(str(package), run_single_threaded=True)

    def run(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = model(*inputs)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    example = spec.sample(min(max(profile.optimum, batches[0]), batches[1]))[0].cuda()
    with torch.inference_mode():
        launched = measure(lambda: run([example]), CAPTURE_RUNS, CAPTURE_RUNS, torch.cuda.synchronize).p50
        try:
            captured = Captured(run, example)
        except RuntimeError:
            return False
        replayed = measure(lambda: captured(example), CAPTURE_RUNS, CAPTURE_RUNS, torch.cuda.synchronize).p50
    return replayed < launched


def checked_checkpoint(bundle: Bundle, checkpoint: Path | None) -> tuple[Path, str]:
    """The checkpoint and its sha256 once it is the one the bundle was exported from; else refused, naming both."""
    expected = bundle.manifest.source.get("sha256")
    if checkpoint is None:
        raise EngineError(
            f"inductor compiles from the checkpoint {bundle.root} was exported from "
            f"({bundle.manifest.source.get('checkpoint')}): pass it with --checkpoint"
        )
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: no such checkpoint file")
    actual = sha256_file(checkpoint)
    if actual != expected:
        raise CheckpointError(
            f"{checkpoint} (sha256 {actual}) is not the checkpoint {bundle.root} was exported from (sha256 "
            f"{expected}, {bundle.manifest.source.get('checkpoint')}): a package must compute what the bundle's "
            "graphs compute"
        )
    return checkpoint, actual


@functools.lru_cache(maxsize=1)
def reference(checkpoint: Path, sha256: str) -> Psp:
    """The torch reference, loaded once for the graphs of one build (``sha256`` keys the cache to the contents)."""
    return load_psp(checkpoint).eval()


def forms(bundle: Bundle) -> dict[str, str]:
    """The forms the bundle's graphs were exported in (export always runs the FIR blur depthwise)."""
    return {
        "modconv": bundle.manifest.modconv["form"],
        "upsample": bundle.manifest.modconv["upsample"],
        "fir": "depthwise",
    }


def graph_spec(net: Psp, bundle: Bundle, graph: str) -> GraphSpec:
    """The graph's spec as export made it: the same module, I/O names and shapes, fixed batch or not."""
    return next(s for s in graph_specs(net, bundle.manifest.modconv.get("batch")) if s.name == graph)


def batch_range(spec: GraphSpec, profile: BatchProfile) -> tuple[int, int]:
    """The batches a package runs: the graph's fixed batch, or the build's range."""
    return (spec.batch, spec.batch) if spec.batch else (profile.minimum, profile.maximum)


class Lowered(nn.Module):
    """A graph run at ``dtype`` with FP32 inputs and outputs, as the ONNX graphs take and give them."""

    def __init__(self, graph: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner, self.dtype = graph.to(dtype), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.inner(x.to(self.dtype))
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def exported(
    spec: GraphSpec, form: dict[str, str], dtype: torch.dtype, batches: tuple[int, int], device: torch.device
) -> torch.export.ExportedProgram:
    """The graph in the forms ``form`` names as torch.export gives it, on ``device``: the batch dimension
    dynamic over ``batches`` unless fixed; at a reduced precision, lowered with the epsilon guards in FP32."""
    lowest, highest = batches
    sample = spec.sample(min(max(EXPORT_SAMPLE_BATCH, lowest), highest))[0].to(device)
    dynamic = None if lowest == highest else ({0: torch.export.Dim("batch", min=lowest, max=highest)},)
    module: nn.Module = spec.module.eval()
    if dtype != torch.float32 or device.type != "cpu":  # the reference stays as it is, for the next graph
        module = copy.deepcopy(module)
    if dtype != torch.float32:
        module = Lowered(module, dtype)
    with torch.no_grad(), using_forms(module, **form):
        program = torch.export.export(module.to(device), (sample,), dynamic_shapes=dynamic)
        if dtype == torch.float32:
            return program
        return torch.export.export(float32_islands(program.module(), dtype), (sample,), dynamic_shapes=dynamic)


def epsilon_guards(graph: fx.Graph) -> set[fx.Node]:
    """Each Add of a tiny positive constant (≤ EPS_LIMIT), the reduction and square feeding it, and the roots
    after it: the nodes calibration/fp16.py keeps in FP32, in an exported graph."""
    island: set[fx.Node] = set()
    for add in graph.find_nodes(op="call_function", target=AT.add.Tensor):
        if not any(isinstance(a, float) and 0.0 < a <= EPS_LIMIT for a in add.args):
            continue
        island.add(add)
        for up in add.all_input_nodes:
            if up.target in REDUCTIONS:
                island |= {up, *(a for a in up.all_input_nodes if a.target in SQUARES)}
        frontier = list(add.users)
        while frontier:
            down = frontier.pop()
            if down.target in ROOTS and down not in island:
                island.add(down)
                frontier += list(down.users)
    return island


def float32_islands(module: fx.GraphModule, low: torch.dtype) -> fx.GraphModule:
    """``module`` with its epsilon guards computed in FP32: a cast up at each input from outside them and a
    cast down at each output leaving them (as the FP16 converter's Cast nodes at its block boundaries)."""
    graph = module.graph
    island = epsilon_guards(graph)
    for node in island:
        for arg in [a for a in node.all_input_nodes if a not in island]:
            with graph.inserting_before(node):
                node.replace_input_with(arg, graph.call_function(AT.to.dtype, (arg, torch.float32)))
    for node in island:
        if outside := [user for user in node.users if user not in island]:
            with graph.inserting_after(node):
                down = graph.call_function(AT.to.dtype, (node, low))
            for user in outside:
                user.replace_input_with(node, down)
    graph.lint()
    module.recompile()
    return module


def declared(bundle: Bundle, resolved: Resolved, spec: GraphSpec) -> dict[str, str]:
    """What the package declares, for ``Bundle.check_declared``: its I/O names and shapes, and the sections
    export wrote into the ONNX graph it is checked against."""
    io = {side: [[t.name, list(t.shape)] for t in getattr(spec, side)] for side in ("inputs", "outputs")}
    onnx_graph = bundle.model_path(resolved.graph, resolved.record.precision)
    return {**read_metadata(onnx_graph), IO_METADATA: json.dumps(io)}


def gates(graph: str, precision: str) -> list[Target]:
    """FP32: issue 27's bounds. Reduced precisions: calibration's PSNR target for images (TARGETS: the synthesis
    on FP32 codes must meet even the end-to-end one alone) and its codes cosine for codes and w. Never a
    non-finite value."""
    if precision == "fp32":
        return [FP32_GATES[graph], FINITE]
    if graph != "synthesis":
        return [Target(COSINE, 0.99, True, "cosine (worst sample)", digits=4), FINITE]
    psnr = next(t for t in TARGETS[precision] if t.metric.endswith("psnr_db"))
    return [Target("psnr_db", psnr.bound, True, "PSNR (mean)", "dB"), FINITE]


def accuracy(graph: str, output: str, reference: np.ndarray, test: np.ndarray, latent_avg: np.ndarray) -> GraphAccuracy:
    if graph == "synthesis":
        return image_accuracy(output, reference, test)
    if graph == "encoder":
        return code_accuracy(reference, test, latent_avg)
    return vector_accuracy(output, reference, test)


def check_package(
    bundle: Bundle, resolved: Resolved, spec: GraphSpec, package: Path, batches: tuple[int, int], device: torch.device
) -> dict[str, dict[str, float]]:
    """Run the package and ONNX Runtime's FP32 session of the bundle's FP32 graph on the same seeded inputs; the
    figures the gates read, per output; refused when a gate is missed."""
    model = torch._inductor.aoti_load_package(str(package))
    session = ort_session(bundle.model_path(resolved.graph, "fp32"))
    names = [t.name for t in spec.outputs]
    lowest, highest = batches
    expected, got = [], []
    for batch in sorted({min(max(b, lowest), highest) for b in parity_batches(spec)}):
        x = spec.sample(batch, seed=batch)[0]
        expected.append(session.run(names, {spec.inputs[0].name: x.numpy()}))
        with torch.inference_mode():
            out = model(x.to(device))
        got.append([o.cpu().numpy() for o in (out if isinstance(out, (tuple, list)) else [out])])
    figures, missed, latent_avg = {}, [], bundle.latent_avg()
    for index, name in enumerate(names):
        reference, test = (np.concatenate([run[index] for run in runs]) for runs in (expected, got))
        measured = accuracy(resolved.graph, name, reference, test, latent_avg)
        figures[name] = {t.metric: getattr(measured, t.metric) for t in gates(resolved.graph, resolved.precision)}
        missed += [
            f"{name} {t.verdict(figures[name][t.metric])}"
            for t in gates(resolved.graph, resolved.precision)
            if not t.passes(figures[name][t.metric])
        ]
    if missed:
        raise EngineError(
            f"the inductor {resolved.precision} package of {resolved.graph} does not match the bundle's FP32 "
            f"ONNX graph ({'; '.join(missed)}): not recorded"
        )
    return figures
