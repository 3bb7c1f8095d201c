"""An ONNX file's metadata_props, read without reading its weights (and without the onnx package).

A backend whose library does not report ONNX metadata (OpenVINO compiling straight from the file
or a cached blob) still has to show what the graph declares to ``Bundle.check_declared``. Parsing
the whole ModelProto would load a 1 GB encoder a second time; the metadata is a top-level field,
so walking the top-level fields and seeking past the others (the graph above all) costs a few reads.
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


def _fields(stream: BinaryIO, wanted: set[int]) -> Iterator[tuple[int, bytes]]:
    """(number, payload) of the length-delimited fields numbered in ``wanted``; every other field is
    skipped by seeking, never read."""
    while (tag := _varint(stream)) is not None:
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            _varint(stream)
        elif wire in FIXED_SIZES:
            stream.seek(FIXED_SIZES[wire], 1)
        elif wire == LENGTH:
            length = _varint(stream) or 0
            if number in wanted:
                yield number, stream.read(length)
            else:
                stream.seek(length, 1)
        else:
            raise ValueError(f"wire type {wire} of field {number}")


def _entry(payload: bytes) -> tuple[str, str]:
    parts = dict(_fields(io.BytesIO(payload), {KEY, VALUE}))
    return parts.get(KEY, b"").decode(), parts.get(VALUE, b"").decode()


def read_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of the ONNX file at ``path`` as a dict."""
    try:
        with open(path, "rb") as stream:
            return dict(_entry(payload) for _, payload in _fields(stream, {METADATA_PROPS}))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: cannot read its ONNX metadata: {err}") from err
