"""OpenVINO backend (CPU): compiles the bundle's ONNX graphs directly, caches compiled blobs.

Precision is always explicit. OpenVINO's CPU plugin picks bf16 by itself on AMX machines;
here "fp32" pins f32, "bf16" asks for bf16 and refuses a CPU without native BF16
(avx512_bf16 / amx_bf16) unless forced, and "int8" runs the Q/DQ graphs made by
`psp-deploy calibrate --precision int8`. FP16 is refused: the CPU plugin has no FP16
arithmetic on x86.

A model compiled by `psp-deploy build --backend openvino` (an exported blob in the bundle)
is imported; one made for another OpenVINO, CPU or precision is refused (rebuild it, or
--no-engines). Without one the graph is compiled, with OpenVINO's cache in the user's cache
folder, never in the bundle. A batch size in
``FIXED_BATCHES`` runs a model compiled for exactly that size, always from the ONNX graph.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from ...bundle import Bundle, GraphDeclaration, ModelRecord, Resolved
from ...errors import BackendUnavailableError, BundleError
from ...files import atomic_file
from ...machine import cpu_info, has_native_bf16
from ...onnx_metadata import read_metadata
from ..cache import graph_cache
from .base import Backend
from .options import BackendOptions, BuildOptions
from .registry import check_device

HINTS = ("latency", "throughput")

# OpenVINO fuses the synthesis' elementwise chains (demodulation, noise, bias, activation, next style)
# into its jit "Subgraph" kernels only where shapes are static, so a synthesis compiled for the batch it
# runs is faster; the encoder gains nothing. A fixed-batch model costs a model's memory of its own
# (both measured: benchmarks/results/amd-epyc-openvino-fixed-batch.md), so only batch 1, the latency
# path, gets one.
FIXED_BATCHES = {"synthesis": (1,)}


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError as err:
        raise BackendUnavailableError("OpenVINO is not installed: pip install 'psp-deploy[openvino]'") from err
    return openvino


def check_bf16(force: bool) -> None:
    if not has_native_bf16() and not force:
        raise BackendUnavailableError(
            f"this CPU ({cpu_info()['model']}) has no native BF16 (avx512_bf16 or amx_bf16): OpenVINO would emulate "
            "it, slower than fp32. Use --precision fp32 or int8, or force bf16 with --force-bf16"
        )


def machine_key(config: dict[str, Any]) -> dict[str, Any]:
    """What a compiled blob depends on: OpenVINO's version, the CPU's ISA and the precision it computes in.
    Threads and the performance hint are run-time settings: an imported blob takes the caller's."""
    return {
        "openvino": import_openvino().__version__,
        "cpu_flags": cpu_info()["flags"],
        "inference_precision": config["INFERENCE_PRECISION_HINT"],
    }


def compile_config(precision: str, hint: str = "latency", threads: int | None = None) -> dict[str, Any]:
    """OpenVINO CPU properties for ``precision``: f32 pinned unless bf16 is asked for."""
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": hint.upper(),
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class OpenVINOBackend(Backend):
    """A compiled model plus a pool of infer requests: concurrent calls each take their own."""

    name = "openvino"

    @classmethod
    def load(cls, bundle: Bundle, resolved: Resolved, options: BackendOptions) -> OpenVINOBackend:
        """The blob `build` exported (refused when made for another OpenVINO, CPU or settings), else the
        ONNX graph compiled with the user's cache (keyed by the graph's sha256). A GPU device is refused."""
        check_device(cls.name, options.device)  # the user asked for a GPU: this would run on the CPU
        record = resolved.record
        path = bundle.model_path(resolved.graph, record.precision)
        backend = cls(
            path,
            record,
            resolved.graph,
            precision=resolved.precision,
            hint=options.hint,
            threads=options.threads,
            force_bf16=options.force_bf16,
        )
        engine = cls.fitting_engine(bundle, resolved, machine_key(backend.config)) if options.engines else None
        backend.prepare(engine or path, graph_cache(cls.name, record.sha256, options.cache_dir))
        return backend

    def __init__(
        self,
        path: Path,
        record: ModelRecord,
        graph: str,
        *,
        precision: str = "fp32",
        hint: str = "latency",
        threads: int | None = None,
        force_bf16: bool = False,
        profile: bool = False,
    ) -> None:
        """Checks the options; ``prepare`` (or ``from_bundle``) makes the model runnable. ``profile``
        compiles with OpenVINO's per-layer performance counters on."""
        super().__init__(path, record, graph)
        if hint not in HINTS:
            raise BackendUnavailableError(f"performance hint must be one of {', '.join(HINTS)}, got {hint!r}")
        if precision == "bf16":
            check_bf16(force_bf16)
        self.precision = precision
        self.config = compile_config(precision, hint, threads) | ({"PERF_COUNT": True} if profile else {})
        # a graph exported for one batch (grouped synthesis) is compiled for it already
        self.fixed_batches = () if record.batch else FIXED_BATCHES.get(graph, ())
        self._cache_dir: Path | None = None
        self._compiled: dict[int | None, Any] = {}  # by batch size; None: any batch
        self._idle: dict[int | None, list[Any]] = {}
        self._lock = threading.Lock()  # the request pools
        self._compiling = threading.Lock()  # held while a model compiles: other threads still get requests

    def prepare(self, source: Path, cache_dir: Path | None = None) -> None:
        """Make the graph runnable from ``source``: the ONNX graph, or a blob that `build` exported for
        any batch. The first model a batch runs is compiled now, so a graph OpenVINO cannot compile is
        refused at load: the any-batch one, or a graph's first fixed batch, compiled from the ONNX graph
        (a blob holds the any-batch model only). The other is compiled when a batch first needs it, so a
        batch-1 user holds one model. ONNX compiles are cached in ``cache_dir``."""
        self.source, self._cache_dir = source, cache_dir
        first = self.fixed_batches[0] if self.fixed_batches else None
        model = self._model(first)

        def dims(port: Any) -> list[int | None]:  # a fixed-batch model's batch axis is any size to its callers
            return [
                None if (first is not None and axis == 0) or not d.is_static else d.get_length()
                for axis, d in enumerate(port.get_partial_shape())
            ]

        self._ports = [[(p.get_any_name(), dims(p)) for p in side] for side in (model.inputs, model.outputs)]
        self._check_io(*([name for name, _ in side] for side in self._ports))

    def compile_model(self, source: Path, batch: int | None, extra: dict[str, Any] | None = None) -> Any:
        """``source`` compiled (or imported) for any batch, or an ONNX graph compiled for ``batch`` rows;
        ``extra`` properties on top of the backend's."""
        core = import_openvino().Core()
        settings = {**self.config, **(extra or {})}
        config = {**settings, **({"CACHE_DIR": str(self._cache_dir)} if self._cache_dir else {})}
        if source.suffix != ".onnx":
            return self._loading(source, lambda: core.import_model(source.read_bytes(), "CPU", settings))
        if batch is None:
            return self._loading(source, lambda: core.compile_model(str(source), "CPU", config))

        def fixed() -> Any:
            model = core.read_model(str(source))
            model.reshape({p.get_any_name(): [batch, *list(p.get_partial_shape())[1:]] for p in model.inputs})
            return core.compile_model(model, "CPU", config)

        return self._loading(source, fixed)

    @staticmethod
    def _loading(source: Path, load: Callable[[], Any]) -> Any:
        try:
            return load()
        except RuntimeError as err:
            # OpenVINO's first line only says where it raised; the cause follows
            reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            raise BundleError(f"{source}: OpenVINO cannot load it: {reason}") from err

    @property
    def compiled(self) -> Any:
        """The model compiled for any batch size (compiled now if no batch has needed it yet)."""
        return self._model(None)

    @property
    def compiled_batches(self) -> list[int | None]:
        """The batch sizes compiled so far, in order (None: the model for any batch): what memory it holds."""
        return list(self._compiled)

    def _key(self, batch: int) -> int | None:
        return batch if batch in self.fixed_batches else None

    def compiled_for(self, batch: int) -> Any:
        """The model that runs ``batch`` rows: compiled for that size if it is a fixed one, else for any."""
        return self._model(self._key(batch))

    def _model(self, key: int | None) -> Any:
        if key not in self._compiled:
            with self._compiling:
                if key not in self._compiled:
                    # a fixed batch is always compiled from the ONNX graph: a blob was exported for any batch
                    self._compiled[key] = self.compile_model(self.source if key is None else self.path, key)
        return self._compiled[key]

    def op_seconds(self, feeds: dict[str, NDArray[Any]], runs: int) -> dict[str, float]:
        """From OpenVINO's per-layer performance counters, on the model this batch size runs compiled again
        with the counters on; keyed by layer type and the kernel OpenVINO chose (``layer_seconds``)."""
        key = self._key(len(next(iter(feeds.values()))))
        compiled = self.compile_model(self.source if key is None else self.path, key, {"PERF_COUNT": True})
        return layer_seconds(compiled, feeds, runs)

    def declaration(self) -> GraphDeclaration:
        """Ports as OpenVINO read them; metadata from the ONNX file (a compiled model does not keep it)."""
        inputs, outputs = self._ports
        return GraphDeclaration(self.path.name, inputs, outputs, read_metadata(self.path))

    def _infer(self, feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        key = self._key(len(next(iter(feeds.values()))))
        compiled = self._model(key)
        with self._lock:
            idle = self._idle.setdefault(key, [])
            request = idle.pop() if idle else compiled.create_infer_request()
        try:
            request.infer(feeds)
            return {o.name: request.get_tensor(o.name).data.copy() for o in self.outputs}
        finally:
            with self._lock:
                idle.append(request)


def layer_seconds(compiled: Any, feeds: dict[str, NDArray[Any]], runs: int) -> dict[str, float]:
    """Seconds per ``layer type [kernel]`` (e.g. ``Convolution [brgconv_avx2_FP32]``, which shows whether a layer
    really ran in the precision asked for) of the last of ``runs`` runs of a model compiled with PERF_COUNT."""
    request = compiled.create_infer_request()
    for _ in range(runs):
        request.infer(feeds)
    seconds: Counter[str] = Counter()
    for info in request.get_profiling_info():
        if info.status == info.Status.EXECUTED:
            seconds[f"{info.node_type} [{info.exec_type}]"] += info.real_time.total_seconds()
    return dict(seconds)


def build_engine(bundle: Bundle, resolved: Resolved, target: Path, options: BuildOptions) -> dict[str, Any]:
    """`psp-deploy build`'s builder (the registry names it): the graph compiled and exported."""
    return export_compiled(bundle, resolved.graph, resolved.precision, target, options.force_bf16)


def export_compiled(
    bundle: Bundle, graph: str, precision: str, target: Path, force_bf16: bool = False
) -> dict[str, Any]:
    """Compile one graph afresh and export it to ``target``. Never through a cache, nor from an
    earlier blob: OpenVINO exports a model loaded from its cache as a blob it cannot import."""
    resolved = bundle.resolve(graph, precision, "openvino")
    path = bundle.model_path(graph, resolved.record.precision)
    backend = OpenVINOBackend(path, resolved.record, graph, precision=resolved.precision, force_bf16=force_bf16)
    with atomic_file(target) as f:
        f.write(backend.compile_model(path, None).export_model().getvalue())
    return {**machine_key(backend.config), "config": backend.config, "cpu": cpu_info()["model"], "source": path.name}
