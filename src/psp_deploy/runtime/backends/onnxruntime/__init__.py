"""ONNX Runtime backend: CPU, or CUDA with I/O binding when onnxruntime-gpu is installed; and its
"engines": session-optimized models saved by `psp-deploy build` for the CPU, and on CUDA the
settings `build --device cuda` measured fastest on a GPU (engines/ort_cuda.py)."""

from __future__ import annotations

import functools
import json
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxruntime as ort
from numpy.typing import NDArray

from ....bundle import BATCH, Bundle, EngineRecord, GraphDeclaration, ModelRecord, Resolved
from ....config import PspConfig
from ....errors import BackendUnavailableError, BundleError, EngineError
from ....machine import cpu_info, nvidia_smi
from ..base import Backend
from ..options import BackendOptions, BuildOptions, CudaConv

if TYPE_CHECKING:
    from ...chain import Chain

_state = ort.capi.onnxruntime_pybind11_state
# What a run can raise: ONNX Runtime's error types are siblings under Exception, not one hierarchy
# (CUDA out of memory is a RuntimeException, a bad binding an InvalidArgument).
RUN_ERRORS = (RuntimeError, _state.Fail, _state.InvalidArgument, _state.RuntimeException, _state.EPFail)
DEVICES = ("cpu", "cuda")
CUDA_DEVICE_ID = 0  # the GPU every session and device buffer uses
CAPTURED = ("encoder", "synthesis")  # the graphs the pipeline runs at fixed shapes: CUDA graphs pay off there
GRAPH_ID = "gpu_graph_id"  # run-config key: which captured CUDA graph a run replays (-1: none)
TUNING = "onnxruntime-cuda"  # the engine records of `build --device cuda`: settings, no file of their own


def session_options(threads: int | None, optimize: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # not ``optimize``: an engine built by `psp-deploy build --backend onnxruntime` (optimizing again is
    # waste), or a graph whose formula must run exactly as written (io_graphs.py)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def machine_key() -> dict[str, object]:
    """What a saved optimized model depends on: the ONNX Runtime version and the CPU's ISA."""
    return {"onnxruntime": ort.__version__, "cpu_flags": cpu_info()["flags"]}


def _mismatch(engine: EngineRecord, key: dict[str, object]) -> str:
    """'{what it was made for}, this machine is {what is here}', for the keys that differ; '' when none do."""
    differences = engine.differences(key)
    built, here = ({k: v[i] for k, v in differences.items()} for i in (0, 1))
    return f"{built}, this machine is {here}" if differences else ""


@functools.cache
def cuda_key() -> dict[str, object]:
    """What tuned CUDA settings depend on: the GPU they were timed on (nvidia-smi's first; None where it
    cannot tell) and the ONNX Runtime that ran them."""
    gpu = nvidia_smi()
    return {"onnxruntime": ort.__version__, "gpu": gpu.get("name"), "compute_capability": gpu.get("compute_capability")}


def tuned_options(bundle: Bundle, resolved: Resolved, options: BackendOptions) -> BackendOptions:
    """``options`` with the CUDA settings `build --device cuda` measured fastest for this graph, when the
    bundle has them; refused when they were measured on another GPU or ONNX Runtime."""
    engine = bundle.resolve(resolved.graph, resolved.precision, TUNING).engine
    if engine is None:
        return options
    mismatch = _mismatch(engine, {**cuda_key(), "tf32": uses_tf32(resolved.record.precision, options.tf32)})
    if engine.sha256 != resolved.record.sha256:
        mismatch = f"another {resolved.graph} graph file than the bundle's"
    if mismatch:
        raise EngineError(
            f"the {resolved.graph} graph's CUDA settings were measured for {mismatch}; measure them again with "
            f"`psp-deploy build --backend onnxruntime --device cuda{' --tf32' if options.tf32 else ''}`, or pass "
            "--no-engines"
        )
    # what the caller set explicitly stands: a convolution setting for this graph, CUDA graphs asked for
    conv = options.cuda_conv.get(resolved.graph, CudaConv(**engine.details["cuda_conv"]))
    cuda_conv = {**options.cuda_conv, resolved.graph: conv}
    return replace(options, cuda_conv=cuda_conv, cuda_graph=options.cuda_graph or engine.details["cuda_graph"])


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise BackendUnavailableError(f"onnxruntime device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendUnavailableError(
            f"onnxruntime {ort.__version__} has no CUDA provider here: on a machine with an NVIDIA GPU, install "
            "onnxruntime-gpu in place of onnxruntime, which shares its module name (pip uninstall -y onnxruntime "
            "onnxruntime-gpu; pip install onnxruntime-gpu), or use --device cpu"
        )
    if device == "cuda":
        preload_cuda_libraries()


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of pip's nvidia-* packages (onnxruntime-gpu[cuda,cudnn], or torch's)
    before the first CUDA session: the CUDA provider finds them only once loaded, as ONNX Runtime documents.
    Libraries on the system's search path (LD_LIBRARY_PATH) are loaded from there."""
    if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu 1.21 and later
        ort.preload_dlls()


def captures(graph: str, options: BackendOptions) -> bool:
    """Whether ``graph``'s session captures CUDA graphs: asked for, on CUDA, and a graph run at fixed shapes."""
    return options.device == "cuda" and options.cuda_graph and graph in CAPTURED


def uses_tf32(precision: str, asked: bool) -> bool:
    """Whether a session of a ``precision`` graph runs ONNX Runtime's CUDA provider with use_tf32 on.

    Off for FP32 graphs unless ``asked``: ONNX Runtime's default is on, which makes "fp32" mean TF32. On for
    FP16 graphs: with use_tf32=0, cuDNN ran the FP16 encoder's convolutions mostly in kernels without tensor
    cores, several times slower (benchmarks/results/nvidia-h200-profile.md). The nodes an FP16 graph keeps in
    FP32 may then run as TF32: the FP16 accuracy report, measured on the CPU, does not cover that."""
    return asked or precision == "fp16"


def provider_options(graph: str, options: BackendOptions, precision: str = "fp32") -> list[tuple[str, dict[str, str]]]:
    """The execution providers of one graph's session, with their options: the one place they are chosen.

    On CUDA every choice is explicit, so what ran is what the session reports: TF32 (uses_tf32), CUDA graphs
    for the graphs the pipeline runs at fixed shapes when asked, and the graph's convolution settings."""
    if options.device == "cpu":
        return [("CPUExecutionProvider", {})]
    conv = options.cuda_conv.get(graph, CudaConv())
    cuda = {
        "device_id": str(CUDA_DEVICE_ID),
        "use_tf32": str(int(uses_tf32(precision, options.tf32))),
        "enable_cuda_graph": str(int(captures(graph, options))),
        "cudnn_conv_algo_search": conv.algo_search,
        "prefer_nhwc": str(int(conv.prefer_nhwc)),
    }
    return [("CUDAExecutionProvider", cuda), ("CPUExecutionProvider", {})]


def open_session(
    model: Path | bytes, graph: str, options: BackendOptions, *, optimize: bool = True, precision: str = "fp32"
) -> ort.InferenceSession:
    """A session over a model file (or a model's bytes) with the providers of ``graph`` at ``precision``.
    ``optimize`` False runs the graph as written: an optimized model saved by `build`, or a formula that must
    stay exact."""
    check_device(options.device)
    source = model if isinstance(model, bytes) else str(model)
    providers = provider_options(graph, options, precision)
    session = ort.InferenceSession(source, session_options(options.threads, optimize), providers=providers)
    if options.device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        # onnxruntime-gpu without the CUDA libraries it was built for lists the provider, then falls back
        raise BackendUnavailableError(
            "onnxruntime-gpu lists its CUDA provider but it did not start: the CUDA and cuDNN libraries it was "
            "built for are missing or do not match the driver (ONNX Runtime's log above names what failed)"
        )
    return session


def run_options(graph_id: int) -> ort.RunOptions:
    """Run options replaying the CUDA graph captured for ``graph_id`` (-1: neither capture nor replay)."""
    run = ort.RunOptions()
    run.add_run_config_entry(GRAPH_ID, str(graph_id))
    return run


class OnnxRuntimeBackend(Backend):
    """``InferenceSession.run`` is thread-safe, and so is this backend; except with CUDA graphs
    (``cuda_graph``), which ONNX Runtime replays for one thread at a time: the resident chain's lock
    serialises its calls, and calls from other threads must not overlap them."""

    name = "onnxruntime"

    @classmethod
    def load(cls, bundle: Bundle, resolved: Resolved, options: BackendOptions) -> OnnxRuntimeBackend:
        """The ONNX graph, or its saved optimized model when one was built for this machine; on CUDA with
        the settings measured for this GPU, when they were."""
        cpu_engine = options.engines and options.device == "cpu"
        engine = cls.fitting_engine(bundle, resolved, machine_key()) if cpu_engine else None
        if options.engines and options.device == "cuda":
            options = tuned_options(bundle, resolved, options)
        path = engine or bundle.model_path(resolved.graph, resolved.record.precision)
        return cls(path, resolved.record, resolved.graph, options, preoptimized=engine is not None)

    def __init__(
        self,
        path: Path,
        record: ModelRecord,
        graph: str,
        options: BackendOptions | None = None,
        *,
        preoptimized: bool = False,
    ):
        super().__init__(path, record, graph)
        self.options, self.preoptimized = options or BackendOptions(), preoptimized
        try:
            self.session = open_session(
                path, graph, self.options, optimize=not preoptimized, precision=record.precision
            )
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph) as err:
            raise BundleError(f"{path}: ONNX Runtime cannot load it: {err}") from err
        # A session that captures CUDA graphs must be fed device buffers at fixed addresses; numpy
        # feeds (``infer``) opt out of capture and replay run by run.
        self.captures = captures(graph, self.options)
        self._check_io([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        self._check_batch()

    def _check_batch(self) -> None:
        """A fixed batch in the manifest must be the file's batch (and a dynamic one dynamic)."""
        declared = self.record.inputs[0].shape[0]
        actual = self.session.get_inputs()[0].shape[0]
        if (declared == BATCH) != (not isinstance(actual, int)) or (declared != BATCH and declared != actual):
            raise BundleError(
                f"{self.path.name}: the model's batch dimension is {actual!r} but the manifest says {declared!r}"
            )

    def declaration(self) -> GraphDeclaration:
        def shapes(args: list[Any]) -> list[tuple[str, list[Any]]]:  # ONNX Runtime's NodeArgs
            return [(a.name, a.shape) for a in args]

        inputs, outputs = shapes(self.session.get_inputs()), shapes(self.session.get_outputs())
        return GraphDeclaration(self.path.name, inputs, outputs, self.session.get_modelmeta().custom_metadata_map)

    @classmethod
    def chain(cls, encoder: Backend, synthesis: Backend, config: PspConfig, max_batch: int) -> Chain:
        """The device-resident chain (resident.py) when ONNX Runtime runs the encoder and the synthesis on one
        device and the encoder takes any batch (as exported); else the host chain."""
        if (
            isinstance(encoder, OnnxRuntimeBackend)
            and isinstance(synthesis, OnnxRuntimeBackend)
            and synthesis.device == encoder.device
            and encoder.record.batch is None
        ):
            from .resident import ResidentChain

            return ResidentChain(encoder, synthesis, config.input_kind, max_batch)
        return super().chain(encoder, synthesis, config, max_batch)

    @classmethod
    def check_available(cls, device: str) -> None:
        check_device(device)

    @classmethod
    def build_note(cls, details: dict[str, Any]) -> str | None:
        """ONNX Runtime saves an optimized model after its CPU-specific passes: convolutions re-laid out in blocks of
        this CPU's vector width (its NCHWc layout, 8 floats with AVX2, 16 with AVX-512) as operators of its own
        internal domain. Its log warns of this at every save ("may contain hardware specific optimizations, and
        should only be used in the same environment"); build silences that log and says here what it means."""
        if "cpu_flags" not in details:
            return None
        return (
            f"the optimized models are tied to this machine: to ONNX Runtime {details['onnxruntime']}, and to the "
            f"instruction sets of this CPU ({details.get('cpu') or 'unnamed'}), for whose vector width ONNX Runtime "
            "laid their convolutions out. The manifest records both: run, serve and bench use them only where both "
            "match and elsewhere refuse them, naming the difference (build again there, or pass --no-engines to run "
            "the bundle's portable ONNX graphs)"
        )

    @property
    def device(self) -> str:
        return self.options.device

    @property
    def tf32(self) -> bool:
        return self.device == "cuda" and uses_tf32(self.precision, self.options.tf32)

    def bound(self, feeds: dict[str, NDArray[Any]]) -> Callable[[], None]:
        from .bound import BoundGraph

        return BoundGraph(self.session, feeds, self.outputs, self.device, self.captures)

    def op_seconds(self, feeds: dict[str, NDArray[Any]], runs: int) -> dict[str, float]:
        """From ONNX Runtime's session profiling: a profiling session like this one (same file, options and
        providers), whose trace's last run is read."""
        options = session_options(self.options.threads, optimize=not self.preoptimized)
        options.enable_profiling = True
        with tempfile.TemporaryDirectory() as tmp:
            options.profile_file_prefix = str(Path(tmp) / "ort")
            providers = provider_options(self.graph, self.options, self.precision)
            session = ort.InferenceSession(str(self.path), options, providers=providers)
            for _ in range(runs):
                session.run(None, feeds)
            trace = json.loads(Path(session.end_profiling()).read_text())
        last = [e for e in trace if e.get("name") == "model_run"][-1]
        start, end = last["ts"], last["ts"] + last["dur"]
        seconds: Counter[str] = Counter()
        for event in trace:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and start <= event["ts"] <= end:
                seconds[event["args"]["op_name"]] += event["dur"] / 1e6  # the trace is in microseconds
        return dict(seconds)

    def settings(self) -> dict[str, Any]:
        """What the session runs with, as ONNX Runtime reports it: providers and their options."""
        return {"providers": self.session.get_providers(), "provider_options": self.session.get_provider_options()}

    def _infer(self, feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        names = [o.name for o in self.outputs]
        if self.options.device == "cpu":
            return dict(zip(names, self.session.run(names, feeds), strict=True))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", CUDA_DEVICE_ID))
        for name in names:
            binding.bind_output(name, "cuda", CUDA_DEVICE_ID)
        self.session.run_with_iobinding(binding, run_options(-1) if self.captures else None)
        return dict(zip(names, binding.copy_outputs_to_cpu(), strict=True))


def build_engine(bundle: Bundle, resolved: Resolved, target: Path, options: BuildOptions) -> dict[str, Any]:
    """`psp-deploy build`'s builder (the registry names it): the graph's saved optimized model."""
    return build_optimized(bundle.model_path(resolved.graph, resolved.record.precision), target)


def build_optimized(onnx_path: Path, out_path: Path) -> dict[str, Any]:
    """Save the session-optimized model (fusions, CPU layouts take seconds per start on large graphs);
    return the engine record's details: what it is specific to (ONNX Runtime version, CPU ISA)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(out_path)
    options.log_severity_level = 3  # errors only: its warning that the file is tied to this machine is build's note
    ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return {**machine_key(), "cpu": cpu_info()["model"], "source": onnx_path.name}
