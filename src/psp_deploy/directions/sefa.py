"""SeFa (Shen & Zhou, "Closed-Form Factorization of Latent Semantics in GANs"): directions from the
synthesis' own style weights, read from the bundle's synthesis graph (no checkpoint, no torch, no onnx).

Each style layer l maps w to the styles of its convolution by an affine map, s = A_l·w + b (A_l [C, 512]);
a direction n moves those styles by A_l·n. SeFa stacks the A_l of the chosen layers, scales each row
(one output channel) to unit length and takes the eigenvectors of AᵀA [512, 512] by decreasing
eigenvalue: the unit directions that move the normalised styles most. Each is stored with a sign that
makes its largest-magnitude entry positive (an eigenvector's sign is arbitrary).

The layer of W+ index k is the convolution that reads it (conv1 reads 0, convs[k − 1] reads k); the
last index, read only by the last to_rgb, uses that one (as genforce's SeFa does). Rows are normalised,
so per-channel scales the exporter folded into A_l (equalized-LR, gains) change nothing.
"""

from __future__ import annotations

import ast
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..bundle import Bundle, DirectionRecord
from ..config import STYLE_DIM
from ..errors import BundleError, DirectionError
from ..onnx_metadata import entry, fields, packed_varints
from ..runtime.pipeline import parse_latent_mask
from .store import NewDirection, check_free, store

# Protobuf field numbers (onnx.proto)
MODEL_GRAPH, GRAPH_NODE, GRAPH_INITIALIZER = 7, 1, 5
NODE_INPUT, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_METADATA = 1, 4, 5, 9
ATTRIBUTE_NAME, ATTRIBUTE_INT = 1, 3
TENSOR_DIMS, TENSOR_TYPE, TENSOR_FLOATS, TENSOR_NAME, TENSOR_RAW, TENSOR_LOCATION = 1, 2, 4, 8, 9, 14
FLOAT, EXTERNAL = 1, 1  # TensorProto.DataType.FLOAT, DataLocation.EXTERNAL
# The torch exporter's record of the modules a node came from; a modulation's affine map is a Gemm
SCOPES = "pkg.torch.onnx.name_scopes"
MODULATION = re.compile(r"(?:.*\.)?decoder\.(conv1|convs\.\d+|to_rgb1|to_rgbs\.\d+)\.conv\.modulation")


@dataclass(frozen=True)
class _Gemm:
    weight: str  # the initializer holding B
    trans_b: bool


def sefa_layer(style: int, n_styles: int) -> str:
    """The module (under decoder.) whose style weights SeFa takes for W+ index ``style`` (module docstring)."""
    if style == 0:
        return "conv1"
    if style < n_styles - 1:
        return f"convs.{style - 1}"
    return f"to_rgbs.{(n_styles - 2) // 2 - 1}"


def style_weights(path: Path) -> dict[str, NDArray[np.float32]]:
    """{module: A [C, 512]} of every style modulation of a synthesis graph, keyed as ``sefa_layer`` names them."""
    try:
        with open(path, "rb") as stream:
            graph = next((g for _, g in fields(stream, {MODEL_GRAPH}) if isinstance(g, bytes)), b"")
        gemms: dict[str, _Gemm] = {}
        weights: dict[str, NDArray[np.float32]] = {}
        for number, payload in fields(io.BytesIO(graph), {GRAPH_NODE, GRAPH_INITIALIZER}):
            if not isinstance(payload, bytes):
                continue
            if number == GRAPH_NODE:
                gemms.update(_modulation(payload))
            elif (found := _tensor(payload, {g.weight for g in gemms.values()})) is not None:
                weights[found[0]] = found[1]
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: cannot read the synthesis graph's style weights: {err}") from err
    found_weights = {}
    for module, gemm in gemms.items():
        if gemm.weight not in weights:
            raise BundleError(f"{path}: the style weights of {module} are not a constant of the graph")
        a = weights[gemm.weight]
        found_weights[module] = a if gemm.trans_b else a.T
    return found_weights


def _modulation(node: bytes) -> dict[str, _Gemm]:
    """{module: its Gemm} when ``node`` is a style modulation's Gemm, else nothing."""
    inputs, op_type, trans_b, module = [], "", False, None
    for number, value in fields(io.BytesIO(node), {NODE_INPUT, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_METADATA}):
        if not isinstance(value, bytes):
            continue
        if number == NODE_INPUT:
            inputs.append(value.decode())
        elif number == NODE_OP_TYPE:
            op_type = value.decode()
        elif number == NODE_ATTRIBUTE:
            attribute = dict(fields(io.BytesIO(value), {ATTRIBUTE_NAME, ATTRIBUTE_INT}))
            trans_b = trans_b or (attribute.get(ATTRIBUTE_NAME) == b"transB" and attribute.get(ATTRIBUTE_INT) == 1)
        else:
            key, text = entry(value)
            if key == SCOPES:
                module = next((m[1] for s in ast.literal_eval(text) if (m := MODULATION.fullmatch(s))), module)
    if op_type != "Gemm" or module is None or len(inputs) < 2:
        return {}
    return {module: _Gemm(inputs[1], trans_b)}


def _tensor(payload: bytes, wanted: set[str]) -> tuple[str, NDArray[np.float32]] | None:
    """(name, values) of a float initializer named in ``wanted``; None for any other."""
    dims: list[int] = []
    data = bytearray()  # raw_data, or float_data (packed, or one fixed32 field per value)
    name, data_type, location = "", 0, 0
    for number, value in fields(io.BytesIO(payload)):
        if number == TENSOR_DIMS:
            dims.extend([value] if isinstance(value, int) else packed_varints(value))
        elif number == TENSOR_NAME and isinstance(value, bytes):
            name = value.decode()
        elif number in (TENSOR_RAW, TENSOR_FLOATS) and isinstance(value, bytes):
            data += value
        elif number == TENSOR_TYPE and isinstance(value, int):
            data_type = value
        elif number == TENSOR_LOCATION and isinstance(value, int):
            location = value
    if name not in wanted:
        return None
    if data_type != FLOAT or location == EXTERNAL:
        raise ValueError(f"style weights {name} are not float32 data inside the graph")
    return name, np.frombuffer(bytes(data), "<f4").reshape(dims).astype(np.float32)


def factorize(weights: Sequence[NDArray[np.floating]]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """SeFa of the stacked style weights [C_l, 512]: (eigenvalues, unit eigenvectors as rows), by decreasing
    eigenvalue, each vector's largest-magnitude entry positive."""
    a = np.concatenate(weights).astype(np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    values, vectors = np.linalg.eigh(a.T @ a)
    order = np.argsort(values)[::-1]
    values, rows = values[order], vectors[:, order].T
    signs = np.sign(rows[np.arange(len(rows)), np.abs(rows).argmax(axis=1)])
    return values, rows * signs[:, None]


def sefa_directions(bundle: Bundle, layers: Sequence[int], top: int) -> list[NewDirection]:
    """The ``top`` SeFa directions of ``bundle``'s synthesis for the W+ ``layers``, ready to store."""
    if not 1 <= top <= STYLE_DIM:
        raise DirectionError(f"--top must be from 1 to {STYLE_DIM}, got {top}")
    graph = bundle.model_path("synthesis")  # hash-checked
    found = style_weights(graph)
    wanted = [sefa_layer(k, bundle.config.n_styles) for k in layers]
    missing = [module for module in wanted if module not in found]
    if missing:
        raise BundleError(
            f"{graph}: no style weights found for {', '.join(missing)} (is it a graph psp-deploy exported? "
            "its nodes carry the module names SeFa looks for)"
        )
    values, rows = factorize([found[module] for module in wanted])
    record = bundle.record("synthesis")
    return [
        NewDirection(
            "sefa",
            rows[k].astype(np.float32),
            list(layers),
            source={"method": "sefa", "graph": record.file, "graph_sha256": record.sha256, "rank": k},
            params={"eigenvalue": float(values[k])},
        )
        for k in range(top)
    ]


def add_sefa(
    bundle: str | Path, layers: str, top: int = 10, name: str = "sefa", force: bool = False
) -> dict[str, DirectionRecord]:
    """Compute the ``top`` SeFa directions for ``layers`` ('0-5') and store them as NAME0 … NAME{top − 1}."""
    opened = Bundle.open(bundle)
    chosen = parse_latent_mask(layers, opened.config.n_styles, "layers")
    names = [f"{name}{k}" for k in range(top)]
    check_free(opened, names, force)
    return store(opened, dict(zip(names, sefa_directions(opened, chosen, top), strict=True)))
