"""The backend interface: a session over one model file.

The base class owns the life cycle (context manager, close) and the one input check
every backend shares, so all refuse bad input with the same message; a backend
implements only ``_infer``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...bundle import BATCH, Bundle, GraphDeclaration, ModelRecord, Resolved, TensorSpec
from ...errors import BackendUnavailableError, BundleError, InputError
from .options import BackendOptions

# What each backend really runs. OpenVINO's CPU plugin has no FP16 arithmetic on x86 (it would
# run the FP16 graphs' casts in f32 at no gain): its reduced precisions are bf16 and int8.
PRECISIONS = {
    "onnxruntime": ("fp32", "fp16", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
    "tensorrt": ("fp32", "fp16", "int8"),
}


def check_precision(backend: str, precision: str) -> None:
    """Refuse a precision the backend does not run, listing what each backend runs."""
    if precision not in PRECISIONS.get(backend, (precision,)):
        each = "; ".join(f"{name}: {', '.join(precisions)}" for name, precisions in PRECISIONS.items())
        raise BackendUnavailableError(f"{backend} does not run {precision} (precisions per backend — {each})")


def check_feeds(feeds: Mapping[str, np.ndarray], specs: list[TensorSpec], graph: str) -> dict[str, np.ndarray]:
    """Names, dtypes and shapes against the declared inputs; one message naming tensor and expectation."""
    names = [s.name for s in specs]
    if set(feeds) != set(names):
        raise InputError(f"{graph}: expected inputs {names}, got {sorted(feeds)}")
    checked = {}
    for spec in specs:
        value = np.asarray(feeds[spec.name])
        if value.dtype != np.dtype(spec.dtype):
            raise InputError(f"{graph} input '{spec.name}': expected dtype {spec.dtype}, got {value.dtype}")
        if value.ndim != len(spec.shape):
            raise InputError(
                f"{graph} input '{spec.name}': expected {len(spec.shape)} dimensions {list(spec.shape)}, "
                f"got shape {list(value.shape)}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, value.shape, strict=True)):
            if want != BATCH and want != got:
                what = "batch size" if axis == 0 else f"dimension {axis}"
                raise InputError(
                    f"{graph} input '{spec.name}': expected {what} {want} (shape {list(spec.shape)}), "
                    f"got shape {list(value.shape)}"
                )
        checked[spec.name] = np.ascontiguousarray(value)
    return checked


class Backend(ABC):
    """One model file, ready to run; every backend lets several threads call ``infer`` at once."""

    name = "base"

    def __init__(self, path: Path, record: ModelRecord, graph: str) -> None:
        self.path, self.record, self.graph = path, record, graph
        self.precision = record.precision

    @classmethod
    def from_bundle(cls, bundle: Bundle, graph: str, precision: str, options: BackendOptions | None = None) -> Backend:
        """Open what the bundle resolves for this graph, precision and backend (hash-checked), once
        the manifest agrees with what the file declares."""
        check_precision(cls.name, precision)
        return cls.load(bundle, bundle.resolve(graph, precision, cls.name), options or BackendOptions()).checked(bundle)

    @classmethod
    def load(cls, bundle: Bundle, resolved: Resolved, options: BackendOptions) -> Backend:
        """The resolved ONNX graph; backends that run engines override this."""
        return cls(bundle.model_path(resolved.graph, resolved.record.precision), resolved.record, resolved.graph)

    def declaration(self) -> GraphDeclaration:
        """The loaded file's I/O shapes and metadata, as the backend's library reports them."""
        raise NotImplementedError(f"the {self.name} backend cannot report what its model file declares")

    def checked(self, bundle: Bundle) -> Backend:
        """This backend once the bundle's manifest agrees with what its file declares; else closed and refused."""
        try:
            bundle.check_declared(self.graph, self.record.precision, self.declaration())
        except BaseException:
            self.close()
            raise
        return self

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.record.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.record.outputs

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._infer(check_feeds(feeds, self.inputs, self.graph))

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 - most backends hold nothing that needs releasing
        """Release what the backend holds (device memory, sessions)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def _check_io(self, inputs: list[str], outputs: list[str]) -> None:
        """The model file's own I/O names must be the manifest's: a mismatched manifest is refused."""
        for io, actual in (("inputs", inputs), ("outputs", outputs)):
            declared = [t.name for t in getattr(self.record, io)]
            if actual != declared:
                raise BundleError(f"{self.path.name}: the model's {io} {actual} do not match the manifest's {declared}")
