"""`psp-deploy serve`: the Pipeline on Triton Inference Server through PyTriton.

PyTriton runs a real tritonserver (its Python backend) and binds our callables to it:
Triton does the HTTP/gRPC protocols, dynamic batching across clients, health and
Prometheus metrics; the callables run the runtime Pipeline.

Readiness. ``/v2/health/ready`` (the Kubernetes readiness probe) must not answer 200 while a model
would refuse a request. PyTriton 0.7's default start does exactly that: it launches tritonserver
with an empty model repository (``--model-control-mode=explicit``), waits until that empty server is
ready, and only then loads each bound model through the repository API (ModelManager.add_model →
_load_model). So the endpoint answers 200 with no model loaded (requests: 404 unknown model), 400
while each model loads, and 200 again once the last one has, seconds later. We use PyTriton's other
lifecycle instead (the one it uses for Vertex AI): ``local_model_store`` writes every bound model into
the repository on disk before tritonserver starts, and tritonserver loads all of them (``load-model=*``)
*before* it opens its HTTP and gRPC ports. Nothing, the health endpoints included, answers until every
model is loaded; Triton's strict readiness (set explicitly) then keeps ready false whenever a model is
not. A model whose load fails makes tritonserver exit (``exit_on_error``) instead of serving without it.
Between the ports opening and PyTriton attaching this process's inference handlers (ModelManager
.setup_models: PyTriton polls readiness once a second) a request waits in the proxy's ZeroMQ queue (a
DEALER socket with no peer yet) and is answered once they attach, rather than failing. The test
tests/serving/test_server.py::test_never_ready_before_every_model_answers_and_a_dead_triton_fails_the_command
checks this against a real server, polling from the moment the process starts.

Before tritonserver starts, each callable also answers one request in this process (``warm_up``): a
pipeline that cannot run refuses to start instead of reporting ready, and the first client does not pay
for first-call set-up.

Overload. Each model's queue (Triton's dynamic batcher) holds at most ``max_queue_size`` requests; one more
is refused at once (HTTP 503, gRPC UNAVAILABLE: "Exceeds maximum queue size"), and a request that waited
``queue_timeout_s`` in the queue is refused the same way, rather than waiting without bound: the client
retries elsewhere or later (serving/client.py). Photos over ``PhotoLimits`` are refused per request.
Every executed request is counted by outcome and reason on ``app_metrics_port`` (serving/metrics.py).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import ENCODER_INPUT_SIZE, STYLE_DIM
from ..errors import BackendUnavailableError, InputError, PspDeployError
from ..runtime import Pipeline
from .client import encode_png
from .metrics import ServingMetrics
from .models import PhotoLimits, ServedModels, tensors

MAX_PORT = 65535


class ServerStoppedError(PspDeployError):
    """The server stopped though nobody asked it to (tritonserver or a model's process exited)."""


@dataclass(frozen=True)
class ServeOptions:
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8
    max_queue_delay_us: int = 2000
    instances: int = 1
    access_token: str | None = None  # guards Triton's statistics/repository APIs; None: a random one
    max_queue_size: int = 32  # requests waiting per model; one more is refused at once
    queue_timeout_s: float = 60.0  # a request queued this long is refused; 0: no limit
    app_metrics_port: int | None = None  # psp-deploy's own metrics; None: the metrics port + 1
    limits: PhotoLimits = PhotoLimits()

    def ports(self) -> dict[str, int]:
        app = self.metrics_port + 1 if self.app_metrics_port is None else self.app_metrics_port
        return {
            "--http-port": self.http_port,
            "--grpc-port": self.grpc_port,
            "--metrics-port": self.metrics_port,
            "--app-metrics-port": app,
        }

    def check(self) -> None:
        """Values PyTriton or the OS would otherwise refuse with a traceback, after loading everything
        (a negative port: OverflowError from bind; --max-batch 0: PyTriton's validation), or accept and
        misbehave (--instances 0: a server with no instance, which stops at once)."""
        for flag, port in self.ports().items():
            if not 1 <= port <= MAX_PORT:
                raise InputError(f"{flag} must be a port number from 1 to {MAX_PORT}, got {port}")
        for flag, value, least in (
            ("--max-batch", self.max_batch, 1),
            ("--instances", self.instances, 1),
            ("--max-queue-delay-us", self.max_queue_delay_us, 0),
            ("--max-queue-size", self.max_queue_size, 1),
            ("--queue-timeout", self.queue_timeout_s, 0),
            ("--max-photo-bytes", self.limits.max_bytes, 1),
            ("--max-photo-pixels", self.limits.max_pixels, 1),
        ):
            if not value >= least:  # NaN included
                raise InputError(f"{flag} must be at least {least}, got {value}")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now, for a local server (tests, benchmarks)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def check_ports_free(options: ServeOptions) -> None:
    """A port in use would otherwise surface as a timeout deep inside PyTriton's start-up."""
    if len(set(options.ports().values())) != len(options.ports()):
        raise InputError(f"the HTTP, gRPC, metrics and app metrics ports must differ, got {options.ports()}")
    for flag, port in options.ports().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # as the servers bind: connections of a server that was just killed (TIME_WAIT) do not hold its ports
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((options.host, port))
            except OSError as err:
                raise InputError(
                    f"port {port} ({flag}) on {options.host} is not available: {err.strerror}; pick another with {flag}"
                ) from None


def _python_backend_environment() -> None:
    """Triton's Python-backend stub must load this interpreter's libpython, not the system one
    (else model load fails with "'_thread.RLock' object has no attribute '_recursion_count'")."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)


def _bind(triton: Any, name: str, fn: Callable, spec: tuple[list, list], options: ServeOptions) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction

    inputs, outputs = spec
    queue = QueuePolicy(
        timeout_action=TimeoutAction.REJECT,
        default_timeout_microseconds=round(options.queue_timeout_s * 1e6),
        max_queue_size=options.max_queue_size,
    )
    triton.bind(
        model_name=name,
        infer_func=[fn] * options.instances,
        inputs=[Tensor(name=n, dtype=d, shape=s) for n, d, s in inputs],
        outputs=[Tensor(name=n, dtype=d, shape=s) for n, d, s in outputs],
        config=ModelConfig(
            max_batch_size=options.max_batch,
            batcher=DynamicBatcher(max_queue_delay_microseconds=options.max_queue_delay_us, default_queue_policy=queue),
        ),
        strict=False,
    )


def warm_up(served: ServedModels) -> None:
    """One request through each served callable, in this process, as PyTriton will pass it (a
    ``pytriton.proxy.types.Request`` with a batch axis of 1), before tritonserver starts: a pipeline
    that cannot run fails the start here, named, instead of every request later. The photo model runs
    a blank face unaligned (decode, encoder, synthesis); alignment's detector is loaded too, when the
    task aligns and it is installed (else requests asking for alignment answer that error themselves)."""
    from pytriton.proxy.types import Request

    config, pipeline = served.config, served.pipeline
    rgb = config.input_kind == "rgb"
    face = np.zeros((ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE) + ((3,) if rgb else ()), np.uint8)
    photo = np.array([[encode_png(face)]], dtype=object)
    codes = np.zeros((1, config.n_styles, STYLE_DIM), np.float32)
    calls = {
        "psp": (served.psp, Request(data={"photo": photo}, parameters={"align": False})),
        "psp_encode": (served.encode, Request(data={"face": face[None]})),
        "psp_synthesize": (served.synthesize, Request(data={"codes": codes})),
    }
    for name, (fn, request) in calls.items():
        error = fn([request])[0]["error"].reshape(-1)[0]
        if error:
            message = error.decode(errors="replace")
            raise PspDeployError(f"model {name} fails a warm-up request, so it would fail every request: {message}")
    if rgb:
        try:
            pipeline.aligner  # noqa: B018 - loads dlib's detector and landmark model once, now
        except PspDeployError:
            pass


class _Signals:
    """SIGINT and SIGTERM received while serving: a stop asked for (exit 0 once Triton has drained
    in-flight requests), told apart from the server stopping on its own."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def __call__(self, signum: int, _frame: Any) -> None:
        self.received.append(signum)
        raise KeyboardInterrupt  # Triton.serve stops on it, after Triton drains in-flight requests


def serve(
    open_pipeline: Callable[[], Pipeline],
    options: ServeOptions,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; either lets in-flight requests finish (Triton drains them).
    The options and ports are checked before ``open_pipeline`` loads the graphs, so a bad value or a
    taken port fails fast. ``on_ready`` runs once every model answers requests (see the module's
    docstring). ServerStoppedError: the server stopped without SIGINT or SIGTERM (tritonserver or a
    model's process exited), so that a supervisor sees a failure, not a clean exit."""
    options.check()
    check_ports_free(options)
    _python_backend_environment()
    try:
        from pytriton.client.exceptions import PyTritonClientTimeoutError
        from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy, TritonSecurityConfig
    except ImportError as err:
        raise BackendUnavailableError("serving needs PyTriton: pip install 'psp-deploy[serve]'") from err
    pipeline = open_pipeline()
    signals = _Signals()
    previous = {s: signal.signal(s, signals) for s in (signal.SIGINT, signal.SIGTERM)}
    exporter = None
    try:
        served = ServedModels(pipeline, options.limits)
        warm_up(served)
        config = TritonConfig(
            http_address=options.host,
            grpc_address=options.host,
            http_port=options.http_port,
            grpc_port=options.grpc_port,
            metrics_port=options.metrics_port,
            strict_readiness=True,  # Triton's default, relied on: ready only while every model is ready
            exit_on_error=True,  # a model that fails to load stops the server rather than serving without it
            log_verbose=0,
        )
        logging.getLogger("pytriton").setLevel(logging.WARNING)
        security = TritonSecurityConfig(access_token=options.access_token)
        # models written to the repository first, loaded by tritonserver before its ports open (module docstring)
        lifecycle = TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=True)
        callables = {"psp": served.psp, "psp_encode": served.encode, "psp_synthesize": served.synthesize}
        metrics = ServingMetrics(list(callables))
        exporter = metrics.export(options.host, options.ports()["--app-metrics-port"])
        with Triton(config=config, security_config=security, triton_lifecycle_policy=lifecycle) as triton:
            for name, spec in tensors(pipeline.config).items():
                _bind(triton, name, metrics.instrument(name, callables[name]), spec, options)
            try:
                triton.run()  # starts tritonserver (it loads the models), then attaches our callables to them
            except (TimeoutError, PyTritonClientTimeoutError) as err:
                # tritonserver exited while starting (a model failed to load, say): PyTriton waits for it up to
                # 120 s, then gives up with a timeout; its own log, printed above, has the cause
                raise ServerStoppedError(f"the server did not start ({err}); Triton's log above says why") from None
            if on_ready:
                on_ready()
            triton.serve()  # blocks until a signal (drained, then stopped) or until the server dies
        if not signals.received:
            raise ServerStoppedError(
                "the server stopped without being asked to: tritonserver or a model's process exited; "
                "Triton's log above says why"
            )
    finally:
        if exporter is not None:
            exporter.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        pipeline.close()
