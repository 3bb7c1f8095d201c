"""`psp-deploy serve`: the Pipeline on Triton Inference Server through PyTriton.

PyTriton runs a real tritonserver (its Python backend) and binds our callables to it:
Triton does the HTTP/gRPC protocols, dynamic batching across clients, health and
Prometheus metrics; the callables run the runtime Pipeline.
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

from ..errors import BackendUnavailableError, InputError
from ..runtime import Pipeline
from .models import ServedModels, tensors


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

    def ports(self) -> dict[str, int]:
        return {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}


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
    if len(set(options.ports().values())) != 3:
        raise InputError(f"the HTTP, gRPC and metrics ports must differ, got {options.ports()}")
    for flag, port in options.ports().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
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
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    inputs, outputs = spec
    triton.bind(
        model_name=name,
        infer_func=[fn] * options.instances,
        inputs=[Tensor(name=n, dtype=d, shape=s) for n, d, s in inputs],
        outputs=[Tensor(name=n, dtype=d, shape=s) for n, d, s in outputs],
        config=ModelConfig(
            max_batch_size=options.max_batch,
            batcher=DynamicBatcher(max_queue_delay_microseconds=options.max_queue_delay_us),
        ),
        strict=False,
    )


def serve(
    open_pipeline: Callable[[], Pipeline],
    options: ServeOptions,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; either lets in-flight requests finish (Triton drains them).
    The ports are checked before ``open_pipeline`` loads the graphs, so a taken port fails fast."""
    check_ports_free(options)
    _python_backend_environment()
    try:
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig
    except ImportError as err:
        raise BackendUnavailableError("serving needs PyTriton: pip install 'psp-deploy[serve]'") from err
    pipeline = open_pipeline()
    served = ServedModels(pipeline)
    config = TritonConfig(
        http_address=options.host,
        grpc_address=options.host,
        http_port=options.http_port,
        grpc_port=options.grpc_port,
        metrics_port=options.metrics_port,
        log_verbose=0,
    )
    logging.getLogger("pytriton").setLevel(logging.WARNING)
    security = TritonSecurityConfig(access_token=options.access_token)
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        with Triton(config=config, security_config=security) as triton:
            callables = {"psp": served.psp, "psp_encode": served.encode, "psp_synthesize": served.synthesize}
            for name, spec in tensors(pipeline.config).items():
                _bind(triton, name, callables[name], spec, options)
            triton.run()  # start the server without blocking, so we can announce readiness
            if on_ready:
                on_ready()
            triton.serve()  # blocks; SIGINT (and SIGTERM, below) stop it after Triton drains in-flight requests
    finally:
        signal.signal(signal.SIGTERM, previous)
        pipeline.close()


def _sigterm_as_interrupt(*_args: Any) -> None:
    raise KeyboardInterrupt
