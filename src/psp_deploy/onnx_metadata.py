"""An ONNX file's metadata_props, read without reading its weights (and without the onnx package).

A backend whose library does not report ONNX metadata (OpenVINO compiling straight from the file
or a cached blob) still has to show what the graph declares to ``Bundle.check_declared``. Parsing
the whole ModelProto would load a 1 GB encoder a second time; the metadata is a top-level field,
so walking the top-level fields and seeking past the others (the graph above all) costs a few reads.
``fields`` walks any message so: the directions' SeFa reads a synthesis graph's style weights with it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import BundleError

METADATA_PROPS = 14  # ModelProto.metadata_props: repeated StringStringEntryProto
KEY, VALUE = 1, 2  # StringStringEntryProto's fields
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5  # protobuf wire types
FIXED_SIZES = {FIXED64: 8, FIXED32: 4}


def _varint(stream: BinaryIO) -> int | None:
    """The next varint, or None at the end of the stream."""
    value, shift = 0, 0
    while byte := stream.read(1):
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    if shift:
        raise ValueError("truncated varint")
    return None


def fields(stream: BinaryIO, wanted: set[int] | None = None) -> Iterator[tuple[int, int | bytes]]:
    """(number, value) of a message's fields numbered in ``wanted`` (None: all of them): a varint as its
    value, a length-delimited or fixed-size field as its bytes. Length-delimited fields not wanted are
    skipped by seeking, never read."""
    while (tag := _varint(stream)) is not None:
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            value = _varint(stream) or 0
            if wanted is None or number in wanted:
                yield number, value
        elif wire in FIXED_SIZES:
            raw = stream.read(FIXED_SIZES[wire])
            if wanted is None or number in wanted:
                yield number, raw
        elif wire == LENGTH:
            length = _varint(stream) or 0
            if wanted is None or number in wanted:
                yield number, stream.read(length)
            else:
                stream.seek(length, 1)
        else:
            raise ValueError(f"wire type {wire} of field {number}")


def packed_varints(payload: bytes) -> list[int]:
    """The values of a packed repeated integer field."""
    stream, values = io.BytesIO(payload), []
    while (value := _varint(stream)) is not None:
        values.append(value)
    return values


def entry(payload: bytes) -> tuple[str, str]:
    """A StringStringEntryProto (metadata_props) as (key, value)."""
    parts = {number: value for number, value in fields(io.BytesIO(payload), {KEY, VALUE}) if isinstance(value, bytes)}
    return parts.get(KEY, b"").decode(), parts.get(VALUE, b"").decode()


def read_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of the ONNX file at ``path`` as a dict."""
    try:
        with open(path, "rb") as stream:
            return dict(entry(payload) for _, payload in fields(stream, {METADATA_PROPS}) if isinstance(payload, bytes))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: cannot read its ONNX metadata: {err}") from err
