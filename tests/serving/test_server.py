"""A real Triton server (psp-deploy serve) on 127.0.0.1, talked to with the real client."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from psp_deploy.cli import app
from psp_deploy.runtime import Pipeline
from psp_deploy.serving.client import PspClient, RemoteError, encode_png
from psp_deploy.serving.server import free_ports

pytest.importorskip("pytriton", reason="PyTriton is not installed (pip install 'psp-deploy[serve]')")
pytestmark = pytest.mark.xdist_group("serving")  # see tests/conftest.py
TOKEN = "test-token"
START_TIMEOUT_S = 120


class Server:
    def __init__(self, bundle, *extra):
        self.http, self.grpc, self.metrics = free_ports(3)
        cmd = [
            sys.executable,
            "-m",
            "psp_deploy.cli",
            "serve",
            str(bundle),
            "--host",
            "127.0.0.1",
            "--http-port",
            str(self.http),
            "--grpc-port",
            str(self.grpc),
            "--metrics-port",
            str(self.metrics),
            "--access-token",
            TOKEN,
            "--max-batch",
            "8",
            "--max-queue-delay-us",
            "200000",
            "--backend",
            "onnxruntime",  # the in-process Pipeline compared against runs ONNX Runtime
            *extra,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        with PspClient(self.url) as client:
            while not client.ready():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"server did not start: {self.proc.stdout.read()[-3000:]}")
                time.sleep(0.5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(bundles):
    srv = Server(bundles("rgb-scaled")[0].root)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def local(bundles):
    with Pipeline.from_bundle(bundles("rgb-scaled")[0].root) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def photo():
    return data.astronaut()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_outputs_equal_the_in_process_pipeline(server, local, photo, protocol):
    url = server.url if protocol == "http" else f"grpc://127.0.0.1:{server.grpc}"
    expected = local.run(photo, latent_mask=[7, 8, 9], mix_alpha=0.6, seed=4)
    with PspClient(url) as client:
        got = client.run(photo, latent_mask="7-9", mix_alpha=0.6, seed=4)
        codes = client.encode(expected.aligned[0].image)
        image, pooled = client.synthesize(expected.codes[0])
    assert np.abs(got["codes"] - expected.codes[0]).max() <= 1e-5
    np.testing.assert_array_equal(got["image"], expected.images[0])
    np.testing.assert_array_equal(got["aligned"], expected.aligned[0].image)
    assert np.abs(codes - local.encode(local.prepare(expected.aligned[0].image, align=False)[0][None])[0]).max() <= 1e-5
    np.testing.assert_array_equal(image, expected.images[0])
    assert pooled.shape == (256, 256, 3)


def _batched_executions(server) -> dict[int, int]:
    with PspClient(server.url) as client:
        stats = client.statistics("psp", TOKEN)["model_stats"][0]["batch_stats"]
    return {int(s["batch_size"]): int(s["compute_infer"]["count"]) for s in stats}


def test_concurrent_requests_are_batched_and_all_correct(server, local, photo):
    distinct = [np.ascontiguousarray(np.roll(photo, 6 * i, axis=1)) for i in range(4)]
    expected_distinct = list(local.run(distinct).images)
    variants, expected = distinct * 4, expected_distinct * 4  # 16 requests, 4 different answers to keep apart
    before = _batched_executions(server)

    def request(i):
        with PspClient(server.url) as client:  # one client per thread
            return client.run(encode_png(variants[i]))["image"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(request, range(16)))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    after = _batched_executions(server)
    assert any(size > 1 and after.get(size, 0) > before.get(size, 0) for size in after), after


def test_bad_requests_fail_alone(server, photo):
    requests = {
        "good-1": encode_png(photo),
        "corrupt": b"\x89PNG\r\n\x1a\n" + bytes(100),
        "no-face": encode_png(np.full((200, 200, 3), 90, np.uint8)),
        "good-2": encode_png(photo[:, ::-1]),
    }

    def request(name):
        with PspClient(server.url) as client:
            try:
                return client.run(requests[name])
            except RemoteError as err:
                return err

    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(requests, pool.map(request, requests), strict=True))
    assert not isinstance(results["good-1"], Exception), results
    assert results["good-1"]["image"].shape == (64, 64, 3) and results["good-2"]["image"].shape == (64, 64, 3)
    assert isinstance(results["corrupt"], RemoteError) and "ImageDecodeError" in str(results["corrupt"])
    assert isinstance(results["no-face"], RemoteError) and "NoFaceError: no face found" in str(results["no-face"])
    with PspClient(server.url) as client:
        wrong_dtype = client._input("face", np.zeros((1, 256, 256, 3), np.uint16), "UINT16")
        with pytest.raises(RemoteError, match="input 'face' data-type is 'UINT16', but model 'psp_encode' expects"):
            client._infer("psp_encode", [wrong_dtype], ["codes"])
        with pytest.raises(RemoteError, match="unexpected shape for input 'face'"):
            client.encode(np.zeros((128, 128, 3), np.uint8))
        with pytest.raises(RemoteError, match="unknown request parameters"):
            client._infer(
                "psp",
                [client._input("photo", np.array([[requests["good-1"]]], dtype=object), "BYTES")],
                ["image"],
                {"style": "anime"},
            )
        assert client.run(photo)["image"].shape == (64, 64, 3)  # still serving


def test_non_finite_codes_get_an_error_not_an_image(server, local, photo):
    codes = local.run(photo).codes[0].copy()
    codes[3, 7], codes[5, 1] = np.nan, np.inf
    with PspClient(f"grpc://127.0.0.1:{server.grpc}") as client:
        with pytest.raises(RemoteError, match=r"^InputError: codes hold 2 NaN or infinite values"):
            client.synthesize(codes)
        assert client.synthesize(local.run(photo).codes[0])[0].shape == (64, 64, 3)  # still serving


def test_health_and_metrics(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/psp/ready"):
        assert urllib.request.urlopen(f"{server.url}{path}", timeout=10).status == 200
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10).read().decode()
    assert 'nv_inference_request_success{model="psp"' in metrics


def test_busy_port_gets_a_clear_message(bundles):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            app, ["serve", str(bundles("rgb-scaled")[0].root), "--host", "127.0.0.1", "--http-port", str(port)]
        )
    assert result.exit_code == 2 and f"port {port} (--http-port) on 127.0.0.1 is not available" in result.output


def test_infer_command_writes_outputs_and_reports_failures(server, photo, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(photo).save(inputs / "astronaut.png")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff" + bytes(64))
    out = tmp_path / "out"
    args = ["infer", str(inputs), "-o", str(out), "--url", f"grpc://127.0.0.1:{server.grpc}", "--save-latents"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    written = {p.name for p in out.iterdir()}
    assert written == {"astronaut.npy", "astronaut.png", "failures.json", "psp-deploy.json"}
    assert json.loads((out / "failures.json").read_text())[0]["error"] == "RemoteError"
    again = CliRunner().invoke(app, args)
    assert "0 done, 1 skipped" in again.output


def test_sigterm_finishes_in_flight_requests_then_stops(server, photo):
    """Last in this module: it stops the shared server."""
    payload = encode_png(np.asarray(Image.fromarray(photo).resize((4096, 4096))))  # seconds to decode and align

    def request(_):
        with PspClient(server.url) as client:
            return client.run(payload)["image"]

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(request, i) for i in range(6)]
        time.sleep(1.0)  # the requests have reached the server and are being served
        in_flight = sum(not f.done() for f in futures)
        server.proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=120) for f in futures]
    assert in_flight > 0  # else the test would drain nothing
    assert all(r.shape == (64, 64, 3) for r in results)  # none lost
    assert server.proc.wait(timeout=90) == 0
    assert "stopped" in server.proc.stdout.read()
    assert not os.path.exists(f"/proc/{server.proc.pid}")
