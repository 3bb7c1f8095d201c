"""torch module → clean ONNX model, through the torch.export-based (dynamo) exporter.

Clean-up is onnxscript's constant folding (the exporter's own machinery) with no size
limit, so equalized-LR scales and demodulation energies of static weights fold into the
initializers, followed by dead-code removal. Not its full ``optimize``: that also runs
rewrite rules, and its "x + 0 → x" rule matches constants within 1e-8 of zero, deleting
the 1e-8 epsilons of PixelNorm and demodulation (a zero input then gives NaN instead of
zero; tests guard this). onnxslim was measured too: on the encoder it spent 5-10 s copying
protobuf initializers and removed nothing ONNX Runtime or TensorRT would not fuse anyway.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import onnx_ir
import onnx_ir.passes.common
import onnxscript.optimizer
import torch

from ..errors import ExportError
from ..graph_io import BATCH_AXIS
from .graphs import GraphSpec

EXPORT_SAMPLE_BATCH = 2  # not 1: torch.export would specialise a batch of 1 as a constant
FOLD_LIMIT = 1 << 30  # fold constants of any size: equalized-LR scales, demodulation energies


@contextlib.contextmanager
def _quiet():
    """The exporter narrates every step; users see our progress bar instead."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def clean(model: onnx_ir.Model) -> None:
    """Fold constants (any size) and drop what no output needs; twice, as folding exposes more.
    Then every Constant node becomes an initializer: one place for constants, which tools such as
    the FP16 converter (that keeps an epsilon FP32 only if it is an initializer) handle well."""
    for _ in range(2):
        onnxscript.optimizer.fold_constants(model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
        onnxscript.optimizer.remove_unused_nodes(model)
        onnxscript.optimizer.remove_unused_functions(model)
    onnx_ir.passes.common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)


def name_outputs(model: onnx_ir.Model, names: list[str]) -> None:
    """Give every graph output its own tensor under its spec name.

    At 256² the pooled image IS the image (no pooling needed): the exporter then names that one
    tensor after both outputs, the last name winning, and the graph has two outputs called
    ``image_256``. An Identity gives the second output a tensor of its own.
    """
    graph = model.graph
    for index, name in enumerate(names):
        value = graph.outputs[index]
        if any(value is other for other in [*graph.inputs, *graph.outputs[:index]]):
            node = onnx_ir.node("Identity", [value])
            graph.append(node)
            copy = node.outputs[0]
            copy.type, copy.shape = value.type, value.shape
            graph.outputs[index] = value = copy
        value.name = name


def export_graph(spec: GraphSpec, opset: int) -> onnx.ModelProto:
    """Export one graph; its batch dimension is dynamic unless the spec fixes it."""
    batch = spec.batch or EXPORT_SAMPLE_BATCH
    args = spec.sample(batch)
    dim = torch.export.Dim("batch", min=1, max=1024)
    dynamic = None if spec.batch else tuple({BATCH_AXIS: dim} for _ in args)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                spec.module.eval(),
                args,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic,
                optimize=False,
                verbose=False,
            )
            clean(program.model)
            name_outputs(program.model, [t.name for t in spec.outputs])
            model = program.model_proto
    except Exception as err:  # noqa: BLE001 - the exporter raises many types; all mean the same to a user
        raise ExportError(f"exporting the {spec.name} graph failed: {type(err).__name__}: {str(err)[:500]}") from err
    return model
