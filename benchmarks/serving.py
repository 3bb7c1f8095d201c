"""Serving throughput and latency: `psp-deploy serve` (Triton) at concurrency 1, 4 and 16,
against the in-process Pipeline driven by the same number of threads, on the same bundle.

    .venv/bin/python benchmarks/serving.py [--bundle DIR] [--requests-per-client 2]

By default the bundle is the synthetic FFHQ-encode 1024 scaled one of run_standard.py.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import bundle, checkpoint, save_json, say

from psp_deploy.benchmark.harness import benchmark_photo
from psp_deploy.machine import cpu_info, library_versions
from psp_deploy.runtime import Pipeline
from psp_deploy.serving.client import PspClient, encode_png
from psp_deploy.serving.server import free_ports

LEVELS = (1, 4, 16)


def drive(call, concurrency: int, per_client: int) -> dict:
    """``concurrency`` clients each sending ``per_client`` requests back to back."""
    latencies: list[float] = []

    def client(_):
        for _ in range(per_client):
            start = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - start
    t = np.array(latencies)
    return {
        "concurrency": concurrency,
        "requests": len(t),
        "images_per_s": len(t) / wall,
        "p50_s": float(np.percentile(t, 50)),
        "p99_s": float(np.percentile(t, 99)),
    }


def in_process(root: Path, photo: np.ndarray, backend: str, per_client: int) -> list[dict]:
    with Pipeline.from_bundle(root, backend=backend) as pipeline:
        pipeline.run(photo)
        return [drive(lambda: pipeline.run(photo), c, per_client) for c in LEVELS]


def served(root: Path, payload: bytes, backend: str, max_batch: int, per_client: int) -> list[dict]:
    http, grpc, metrics, app_metrics = free_ports(4)
    cmd = [sys.executable, "-m", "psp_deploy.cli", "serve", str(root), "--host", "127.0.0.1"]
    cmd += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    cmd += ["--app-metrics-port", str(app_metrics)]
    cmd += ["--max-batch", str(max_batch), "--backend", backend]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 300
        while not PspClient(url).ready():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start")
            time.sleep(1)

        def remote():
            with PspClient(url) as client:
                client.run(payload)

        remote()
        return [drive(remote, c, per_client) for c in LEVELS]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--requests-per-client", type=int, default=2)
    # batches of 8 at 1024² need more memory than 24 GiB holds beside the client
    parser.add_argument("--max-batch", type=int, default=4)
    args = parser.parse_args()
    root = args.bundle or bundle(checkpoint(), "scaled")
    photo = benchmark_photo()
    # one after the other: server and in-process pipeline together do not fit in memory at 1024²
    remote = served(root, encode_png(photo), args.backend, args.max_batch, args.requests_per_client)
    say(f"served: {remote}")
    local = in_process(root, photo, args.backend, args.requests_per_client)
    say(f"in-process: {local}")
    result = {
        "machine": cpu_info(),
        "versions": library_versions(),
        "bundle": str(root),
        "settings": {
            "backend": args.backend,
            "max_batch": args.max_batch,
            "requests_per_client": args.requests_per_client,
        },
        "in_process": local,
        "served": remote,
    }
    say(f"written {save_json(result, '-serving')}")


if __name__ == "__main__":
    main()
