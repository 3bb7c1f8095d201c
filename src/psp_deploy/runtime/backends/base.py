"""The backend interface: a session over one model file.

The base class owns the life cycle (context manager, close), the one input check every
backend shares (so all refuse bad input with the same message) and the one policy for an
engine made for another machine; a backend implements ``_infer`` and overrides the facts and
steps that are its own (device, TF32, settings, engines, profiling, its chain).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from ...bundle import BATCH, Bundle, GraphDeclaration, ModelRecord, Resolved, TensorSpec
from ...config import PspConfig
from ...errors import BundleError, EngineError, InputError
from .options import BackendOptions
from .registry import REGISTRY, BackendSpec, check_precision

if TYPE_CHECKING:
    from ..chain import Chain


def check_feeds(feeds: Mapping[str, NDArray[Any]], specs: list[TensorSpec], graph: str) -> dict[str, NDArray[Any]]:
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

    name: ClassVar[str] = "base"  # its REGISTRY key
    captures: bool = False  # whether it replays CUDA graphs
    runs_graphs: ClassVar[bool] = True  # whether it can run the ONNX graphs without an engine of its own

    @classmethod
    def spec(cls) -> BackendSpec:
        return REGISTRY[cls.name]

    def __init__(self, path: Path, record: ModelRecord, graph: str) -> None:
        self.path, self.record, self.graph = path, record, graph
        self.precision = record.precision

    @classmethod
    def from_bundle(cls, bundle: Bundle, graph: str, precision: str, options: BackendOptions | None = None) -> Backend:
        """Open what the bundle resolves for this graph, precision and backend (hash-checked), once
        the manifest agrees with what the file declares."""
        options = options or BackendOptions()
        check_precision(cls.name, precision)
        return cls.load(bundle, bundle.resolve(graph, precision, cls.name), options).checked(bundle)

    @classmethod
    def load(cls, bundle: Bundle, resolved: Resolved, options: BackendOptions) -> Backend:
        """The resolved ONNX graph; backends that run engines override this."""
        return cls(bundle.model_path(resolved.graph, resolved.record.precision), resolved.record, resolved.graph)

    @classmethod
    def fitting_engine(cls, bundle: Bundle, resolved: Resolved, here: dict[str, Any]) -> Path | None:
        """The engine `build` made for the resolved graph when there is one, hash-checked; refused, with
        what it was made for and what this machine is, when ``here`` (what the backend's engines depend
        on: versions, ISA, GPU, settings) differs. The one policy: an engine in the bundle is never
        silently replaced or skipped (run-time caches, outside the bundle, may rebuild)."""
        engine = resolved.engine
        if engine is None:
            return None
        if differences := engine.differences(here):
            built, now = ({k: v[i] for k, v in differences.items()} for i in (0, 1))
            instead = ", or pass --no-engines to run the ONNX graph" if cls.runs_graphs else ""
            raise EngineError(
                f"{engine.file} was built for {built}, this machine is {now}; rebuild it with "
                f"`psp-deploy build {bundle.root} --backend {cls.name} --precision {resolved.precision}`{instead}"
            )
        return bundle.verified_path(engine.file, engine.sha256)

    @classmethod
    def chain(cls, encoder: Backend, synthesis: Backend, config: PspConfig, max_batch: int) -> Chain:
        """How a Pipeline whose encoder runs on this backend moves data between encoder and synthesis:
        on the host unless the backend has a faster chain."""
        from ..chain import HostChain

        return HostChain(encoder, synthesis, config, max_batch)

    @classmethod  # noqa: B027 - a hook: a backend with nothing to check keeps this one
    def check_available(cls, device: str) -> None:
        """Refuse, saying what to install, when this machine cannot run the backend on ``device``."""

    @classmethod
    def build_note(cls, details: dict[str, Any]) -> str | None:
        """What an engine `build` just made means for the bundle, to say once (None: nothing to say)."""
        return None

    @property
    def device(self) -> str:
        """Where the graph runs."""
        return self.spec().devices[0]

    @property
    def tf32(self) -> bool:
        """Whether FP32 tensors may run as TF32 (as it runs, not as asked)."""
        return False

    def settings(self) -> dict[str, Any]:
        """What the backend's library reports it runs with, to record beside results."""
        return {}

    def bound(self, feeds: dict[str, NDArray[Any]]) -> Callable[[], None] | None:
        """The graph alone: a call that runs it once on ``feeds`` with inputs and outputs already on its device
        (no checks, no copies), for the benchmarks' graphs-alone rows; None where the backend cannot bind them."""
        return None

    def op_seconds(self, feeds: dict[str, NDArray[Any]], runs: int) -> dict[str, float]:
        """Seconds per operator type of the last of ``runs`` runs on ``feeds``, from the backend's profiler."""
        raise InputError(
            f"per-op profiles are available for {', '.join(s.name for s in REGISTRY.values() if s.profiles)}, "
            f"not {self.name}"
        )

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

    def infer(self, feeds: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        return self._infer(check_feeds(feeds, self.inputs, self.graph))

    @abstractmethod
    def _infer(self, feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]: ...

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
