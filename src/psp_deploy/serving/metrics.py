"""The served models' own Prometheus metrics: what Triton's cannot tell.

Triton counts a request as a success once the model answered it, and every psp-deploy model answers a
failed request with its ``error`` output (serving/models.py), so ``nv_inference_request_failure`` only
counts what Triton refused itself (wrong shapes or dtypes, a full queue, a request that waited past the
queue's timeout) and whole batches whose callable raised. These metrics count every request the models
executed, by outcome and reason, on their own port beside Triton's metrics port:

- ``psp_deploy_requests_total{model, outcome, reason}``: outcome ``ok`` (reason "") or ``failed``, reason
  one of models.REASONS (no_face, too_large, decode, non_finite, bad_parameter) or ``internal`` (the model
  raised: its whole batch failed).
- ``psp_deploy_request_duration_seconds{model}``: a histogram of the seconds each request spent in its
  model: the execution of the batch it ran in, without the time it queued (Triton's
  ``nv_inference_queue_duration_us`` has that).
- ``process_*``: the serving process's memory, CPU and open files (prometheus_client's process collector).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError
from .models import INTERNAL, REASONS

Requests = list[Any]
Responses = list[dict[str, np.ndarray]]
# seconds: from one small batch on a GPU to large batches of 1024² images on a CPU
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServingMetrics:
    """The counters and histograms of one server, in a registry of their own."""

    def __init__(self, models: list[str]) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
        except ImportError as err:
            raise BackendUnavailableError("serving needs prometheus_client: pip install 'psp-deploy[serve]'") from err
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "psp_deploy_requests",
            "Requests the psp-deploy models executed, by outcome (ok, failed) and the reason a request failed.",
            ["model", "outcome", "reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "psp_deploy_request_duration_seconds",
            "Seconds a request spent in its model (its batch's execution; queueing not included).",
            ["model"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        for model in models:  # every series exists from the start: a rate over it needs no first failure
            self.requests.labels(model, "ok", "")
            for reason in [name for _, name in REASONS] + [INTERNAL]:
                self.requests.labels(model, "failed", reason)
            self.duration.labels(model)

    def instrument(self, model: str, serve: Callable[[Requests], Responses]) -> Callable[[Requests], Responses]:
        """``serve`` (a PyTriton callable), counting each request of each batch by its ``reason`` output."""

        def counted(requests: Requests) -> Responses:
            clock = time.perf_counter()
            try:
                responses = serve(requests)
            except Exception:
                self._count(model, [INTERNAL] * len(requests), time.perf_counter() - clock)
                raise
            reasons = [bytes(r["reason"].reshape(-1)[0]).decode() for r in responses]
            self._count(model, reasons, time.perf_counter() - clock)
            return responses

        return counted

    def _count(self, model: str, reasons: list[str], seconds: float) -> None:
        for reason in reasons:
            self.requests.labels(model, "failed" if reason else "ok", reason).inc()
            self.duration.labels(model).observe(seconds)

    def export(self, host: str, port: int) -> Any:
        """Serve /metrics on ``host``:``port`` from a daemon thread; returns the HTTP server (``shutdown()``)."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
