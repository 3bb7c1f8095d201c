"""A small ONNX model written as protobuf bytes, without the onnx package.

The runtime builds a few tiny graphs of its own at load time (io_graphs.py) and must not import
onnx (a deployed runtime has onnxruntime only). ONNX files are protobuf messages, and these
graphs need a handful of fields: nodes with int and ints attributes, scalar float initializers,
and typed inputs and outputs. Fields are written in field-number order, as protobuf serializers
do, so the bytes are the ones onnx itself would write (a test checks it). Field numbers are
onnx.proto's. The reader's half of the wire format lives in onnx_metadata.py.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

VARINT, LENGTH = 0, 2  # protobuf wire types
FLOAT, UINT8 = 1, 2  # TensorProto.DataType
INT, INTS = 2, 7  # AttributeProto.AttributeType
IR_VERSION, OPSET = 8, 17  # ONNX Runtime 1.20 (the oldest this package supports) runs both


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s are ten bytes of two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3 | VARINT) + _varint(value)


def _bytes(number: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | LENGTH) + _varint(len(data)) + data


@dataclass(frozen=True)
class Node:
    op: str
    inputs: tuple[str, ...]
    output: str
    ints: dict[str, int] = field(default_factory=dict)  # int attributes (e.g. Cast's ``to``)
    lists: dict[str, tuple[int, ...]] = field(default_factory=dict)  # ints attributes (e.g. ``perm``)

    def encode(self) -> bytes:
        """NodeProto: input 1, output 2, name 3, op_type 4, attribute 5.
        AttributeProto: name 1, i 3, ints 8, type 20."""
        attributes = [_bytes(1, name) + _int(3, value) + _int(20, INT) for name, value in self.ints.items()]
        attributes += [
            _bytes(1, name) + b"".join(_int(8, v) for v in values) + _int(20, INTS)
            for name, values in self.lists.items()
        ]
        inputs = b"".join(_bytes(1, name) for name in self.inputs)
        return (
            inputs
            + _bytes(2, self.output)
            + _bytes(3, self.output)
            + _bytes(4, self.op)
            + b"".join(_bytes(5, a) for a in attributes)
        )


def _scalar(name: str, value: float) -> bytes:
    """A rank-0 float32 TensorProto (data_type 2, name 8, raw_data 9: little-endian, as onnx writes it)."""
    return _int(2, FLOAT) + _bytes(8, name) + _bytes(9, struct.pack("<f", value))


def _value_info(name: str, elem_type: int, shape: Sequence[int | str]) -> bytes:
    """ValueInfoProto (name 1, type 2) → TypeProto (tensor_type 1) → elem_type 1, shape 2 → dim 1 →
    dim_value 1 or dim_param 2."""
    dims = b"".join(_bytes(1, _bytes(2, d) if isinstance(d, str) else _int(1, d)) for d in shape)
    tensor_type = _int(1, elem_type) + _bytes(2, dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


@dataclass(frozen=True)
class Tensor:
    """A graph input or output: name, element type (FLOAT, UINT8) and shape (ints, or names for dynamic axes)."""

    name: str
    elem_type: int
    shape: tuple[int | str, ...]


def model(
    name: str, nodes: Sequence[Node], constants: dict[str, float], inputs: Sequence[Tensor], outputs: Sequence[Tensor]
) -> bytes:
    """A ModelProto (IR_VERSION, default-domain opset OPSET) of one graph: ``nodes`` in order, scalar
    float32 ``constants`` as initializers. GraphProto: node 1, name 2, initializer 5, input 11, output 12;
    ModelProto: ir_version 1, producer_name 2, graph 7, opset_import 8 (domain 1, version 2)."""
    graph = b"".join(_bytes(1, node.encode()) for node in nodes) + _bytes(2, name)
    graph += b"".join(_bytes(5, _scalar(key, value)) for key, value in constants.items())
    graph += b"".join(_bytes(11, _value_info(t.name, t.elem_type, t.shape)) for t in inputs)
    graph += b"".join(_bytes(12, _value_info(t.name, t.elem_type, t.shape)) for t in outputs)
    return _int(1, IR_VERSION) + _bytes(2, "psp-deploy") + _bytes(7, graph) + _bytes(8, _bytes(1, "") + _int(2, OPSET))
