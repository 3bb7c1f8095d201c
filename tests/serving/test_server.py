"""A real Triton server (psp-deploy serve) on 127.0.0.1, talked to with the real client."""

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from psp_deploy.cli import app
from psp_deploy.directions import add_direction
from psp_deploy.runtime import Pipeline
from psp_deploy.serving.client import NO_RETRY, PspClient, RemoteError, RetryPolicy, encode_png
from psp_deploy.serving.server import ServeOptions, free_ports
from tests.directions.test_importing import interfacegan_file

pytest.importorskip("pytriton", reason="PyTriton is not installed (pip install 'psp-deploy[serve]')")
pytestmark = pytest.mark.xdist_group("serving")  # see tests/conftest.py
TOKEN = "test-token"
START_TIMEOUT_S = 120
MAX_PHOTO_BYTES = 8_000_000  # the shared server's limit: above the largest photo the tests send to be answered


class Server:
    """``psp-deploy serve`` in a session of its own: ``kill`` ends it whole (Python, tritonserver and its
    stubs), as a container's end would. ``ports`` (http, grpc, metrics, app metrics): a restart on the same."""

    def __init__(self, bundle, *extra, wait=True, ports=None):
        self.ports = ports or free_ports(4)
        self.http, self.grpc, self.metrics, self.app_metrics = self.ports
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
            "--app-metrics-port",
            str(self.app_metrics),
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
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
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

    def kill(self) -> None:
        """SIGKILL to every process of the server at once: nothing drains, nothing cleans up."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

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
def served(bundles, tmp_path_factory):
    """The scaled RGB bundle with an InterFaceGAN-format direction "age": graphs hard-linked, manifest copied
    (add_direction replaces it by rename, so the shared bundle is untouched)."""
    source, root = bundles("rgb-scaled")[0].root, tmp_path_factory.mktemp("served") / "bundle"
    shutil.copytree(source, root, copy_function=os.link)
    (root / "manifest.json").unlink()
    shutil.copy(source / "manifest.json", root / "manifest.json")
    add_direction(root, "age", interfacegan_file(root.parent / "age.pt"))
    return root


@pytest.fixture(scope="module")
def server(served):
    srv = Server(served, "--max-photo-bytes", str(MAX_PHOTO_BYTES))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def local(served):
    with Pipeline.from_bundle(served) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def photo():
    return data.astronaut()


def _ready_status(url: str) -> int | str:
    try:
        return urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5).status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError as err:  # not listening yet
        return type(err).__name__


def _child(pid: int, name: str) -> int:
    """The pid of ``pid``'s child process called ``name`` (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            command, rest = stat.read_text().rsplit(")", 1)
        except OSError:  # gone meanwhile
            continue
        if int(rest.split()[1]) == pid and command.split("(", 1)[1] == name:
            return int(stat.parent.name)
    raise AssertionError(f"process {pid} has no child {name}")


def test_never_ready_before_every_model_answers_and_a_dead_triton_fails_the_command(bundles, photo):
    """First in the module: its own server, before the shared one starts. /v2/health/ready is polled every
    0.1 s from the moment the process starts; each time it says ready, every model gets a real request
    at once, which must be answered. PyTriton's default start said ready before any model was loaded
    (requests: "unknown model"), then not ready while each loaded, then ready. Then tritonserver dies
    under the command, which must fail (exit 1), not exit 0 as if asked to stop."""
    bundle = bundles("rgb-scaled")[0]
    face = np.ascontiguousarray(photo[:256, 128:384])
    codes = np.zeros((bundle.config.n_styles, 512), np.float32)
    start = time.monotonic()
    server = Server(bundle.root, wait=False)
    try:
        seen, answered, ready_since = [], 0, None  # seen: (seconds since the start, status) at each change
        with PspClient(server.url, timeout=60) as client:
            while ready_since is None or time.monotonic() - ready_since < 2.0 or answered < 2:  # and stays so
                if server.proc.poll() is not None or time.monotonic() - start > START_TIMEOUT_S:
                    server.stop()
                    raise AssertionError(f"server did not start: {seen} {server.proc.stdout.read()[-3000:]}")
                status = _ready_status(server.url)
                if not seen or seen[-1][1] != status:
                    seen.append((round(time.monotonic() - start, 2), status))
                if status == 200:
                    ready_since = ready_since or time.monotonic()
                    refused = {}
                    for model, request in (
                        ("psp", lambda: client.run(face, align=False)),
                        ("psp_encode", lambda: client.encode(face)),
                        ("psp_synthesize", lambda: client.synthesize(codes)),
                    ):
                        try:
                            request()
                        except RemoteError as err:
                            refused[model] = str(err)
                    assert not refused, f"ready, but refused: {refused}; readiness so far (s, status): {seen}"
                    answered += 1
                else:
                    assert ready_since is None, f"ready, then not: {seen}"
                time.sleep(0.1)
        assert seen[0][1] != 200, seen  # polling began before the server was ready

        os.kill(_child(server.proc.pid, "tritonserver"), signal.SIGKILL)
        assert server.proc.wait(timeout=90) == 1
        assert "error: the server stopped without being asked to" in server.proc.stdout.read()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--http-port", "-5"], "Invalid value for '--http-port': Input should be greater than or equal to 1"),
        (["--http-port", "70000"], "Invalid value for '--http-port': Input should be less than or equal to 65535"),
        (["--grpc-port", "0"], "Invalid value for '--grpc-port': Input should be greater than or equal to 1"),
        (["--metrics-port", "65536"], "Invalid value for '--metrics-port': Input should be less than or equal to"),
        (["--max-batch", "0"], "Invalid value for '--max-batch': Input should be greater than or equal to 1"),
        (["--instances", "0"], "Invalid value for '--instances': Input should be greater than or equal to 1"),
        (["--max-queue-delay-us", "-1"], "Invalid value for '--max-queue-delay-us': Input should be greater than or"),
        (["--max-queue-size", "0"], "Invalid value for '--max-queue-size': Input should be greater than or equal to 1"),
        (["--queue-timeout", "-1"], "Invalid value for '--queue-timeout': Input should be greater than or equal to 0"),
        (["--app-metrics-port", "0"], "Invalid value for '--app-metrics-port': Input should be greater than or"),
        (["--max-photo-pixels", "0"], "Invalid value for '--max-photo-pixels': Input should be greater than or"),
        (["--max-photo-bytes", "0"], "Invalid value for '--max-photo-bytes': Input should be greater than or equal"),
    ],
)
def test_bad_serve_options_are_refused_before_loading(tmp_path, monkeypatch, args, message):
    def no_loading(*_args, **_kwargs):
        raise AssertionError("the bundle was opened before the options were checked")

    monkeypatch.setattr("psp_deploy.cli.batch.open_pipeline", no_loading)
    result = CliRunner().invoke(app, ["serve", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.replace("│", " ").split()), result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("http_port", -5, "--http-port must be a port number from 1 to 65535, got -5"),
        ("metrics_port", 70000, "--metrics-port must be a port number from 1 to 65535, got 70000"),
        ("max_batch", 0, "--max-batch must be at least 1, got 0"),
        ("instances", 0, "--instances must be at least 1, got 0"),
        ("max_queue_size", 0, "--max-queue-size must be at least 1, got 0"),
        ("queue_timeout_s", float("nan"), "--queue-timeout must be at least 0, got nan"),
        ("metrics_port", 65535, "--app-metrics-port must be a port number from 1 to 65535, got 65536"),
    ],
)
def test_bad_serve_options_are_refused_from_python(field, value, message):
    from psp_deploy.errors import InputError
    from psp_deploy.serving.server import serve

    def no_loading():
        raise AssertionError("the bundle was opened before the options were checked")

    options = ServeOptions(**{"host": "127.0.0.1", field: value})
    with pytest.raises(InputError, match=f"^{message}$"):
        serve(no_loading, options)


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
    # the pooled 256² image against the Pipeline's own (run with resize: its device-resident path, not synthesize)
    pooled_expected = local.run(photo, latent_mask=[7, 8, 9], mix_alpha=0.6, seed=4, resize=True).images[0]
    assert pooled.shape == (256, 256, 3) and pooled_expected.shape == (256, 256, 3)
    np.testing.assert_array_equal(pooled, pooled_expected)


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


def test_bad_requests_fail_alone(server, local, photo):
    flipped = np.ascontiguousarray(photo[:, ::-1])
    expected = local.run([photo, flipped])
    requests = {
        "good-1": encode_png(photo),
        "corrupt": b"\x89PNG\r\n\x1a\n" + bytes(100),
        "no-face": encode_png(np.full((200, 200, 3), 90, np.uint8)),
        "good-2": encode_png(flipped),
    }

    def request(name):
        with PspClient(server.url) as client:
            try:
                return client.run(requests[name])
            except RemoteError as err:
                return err

    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(requests, pool.map(request, requests), strict=True))
    for name, i in (("good-1", 0), ("good-2", 1)):  # answered as if alone: the Pipeline's own results
        assert not isinstance(results[name], Exception), results
        np.testing.assert_array_equal(results[name]["image"], expected.images[i])
        np.testing.assert_array_equal(results[name]["aligned"], expected.aligned[i].image)
        assert np.abs(results[name]["codes"] - expected.codes[i]).max() <= 1e-5
    assert not np.array_equal(expected.images[0], expected.images[1])  # two different answers, kept apart
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
        np.testing.assert_array_equal(client.run(photo)["image"], expected.images[0])  # still serving


def test_non_finite_codes_get_an_error_not_an_image(server, local, photo):
    codes = local.run(photo).codes[0].copy()
    codes[3, 7], codes[5, 1] = np.nan, np.inf
    with PspClient(f"grpc://127.0.0.1:{server.grpc}") as client:
        with pytest.raises(RemoteError, match=r"^NonFiniteCodesError: codes hold 2 NaN or infinite values"):
            client.synthesize(codes)
        expected = local.run(photo)
        np.testing.assert_array_equal(client.synthesize(expected.codes[0])[0], expected.images[0])  # still serving


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


def _app_metrics(server) -> dict[tuple, float]:
    """psp-deploy's own metrics, scraped from the server's endpoint: {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{server.app_metrics}/metrics", timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _count(metrics: dict, model: str, outcome: str, reason: str = "") -> float:
    labels = (("model", model), ("outcome", outcome), ("reason", reason))
    return metrics[("psp_deploy_requests_total", labels)]


def _bomb_png(side: int = 100_000) -> bytes:
    """A PNG of a few bytes whose header claims side × side pixels (10 gigapixels by default)."""
    png = encode_png(np.zeros((1, 1, 3), np.uint8))
    header = b"IHDR" + struct.pack(">II", side, side) + png[24:29]
    return png[:8] + struct.pack(">I", 13) + header + struct.pack(">I", zlib.crc32(header)) + png[33:]


def _hundred_megapixels() -> bytes:
    """A real 10000×10000 photo (1-bit, so its file is small): decoded to RGB it would take 300 MB."""
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_failed_request_is_counted_under_its_reason(server, local, photo):
    """Triton counts an answered error as a success; psp_deploy_requests_total counts it as failed, by reason,
    on the app metrics port (scraped as Prometheus would)."""
    codes = local.run(photo).codes[0].copy()
    codes[2, 5] = np.nan
    before = _app_metrics(server)
    with PspClient(server.url, retry=NO_RETRY) as client:
        bad = {
            ("psp", "decode"): lambda: client.run(b"\x89PNG\r\n\x1a\n" + bytes(100)),
            ("psp", "no_face"): lambda: client.run(np.full((200, 200, 3), 90, np.uint8)),
            ("psp", "too_large"): lambda: client.run(_bomb_png()),
            ("psp", "bad_parameter"): lambda: client.run(photo, paste=True, mask="oval"),
            ("psp_synthesize", "non_finite"): lambda: client.synthesize(codes),
        }
        for (model, reason), request in bad.items():
            with pytest.raises(RemoteError) as refused:
                request()
            assert refused.value.reason == reason, (model, str(refused.value))
        client.run(photo)
    after = _app_metrics(server)
    for model, reason in bad:
        assert _count(after, model, "failed", reason) - _count(before, model, "failed", reason) == 1, (model, reason)
    assert _count(after, "psp", "ok") - _count(before, "psp", "ok") == 1
    assert _count(after, "psp", "failed", "internal") == 0
    seen = ("psp_deploy_request_duration_seconds_count", (("model", "psp"),))
    assert after[seen] - before.get(seen, 0) == 5  # 4 failed + 1 ok, each timed
    assert after[("process_resident_memory_bytes", ())] > 0  # the server's memory, for the soak benchmark


def test_huge_photos_are_refused_alone_before_decoding(server, local, photo):
    """A 100-megapixel upload, a decompression bomb (10 gigapixels claimed by a 70-byte file) and a file over
    --max-photo-bytes are refused per request from their header or size, while a good photo sent with them is
    answered as if alone. (--max-photo-pixels itself: tests/serving/test_models.py.)"""
    expected = local.run(photo).images[0]
    requests = {
        "good": encode_png(photo),
        "100 MP": _hundred_megapixels(),
        "bomb": _bomb_png(),
        "bytes": bytes(MAX_PHOTO_BYTES + 1),
    }

    def request(name):
        with PspClient(server.url, retry=NO_RETRY) as client:
            try:
                return client.run(requests[name])
            except RemoteError as err:
                return err

    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(requests, pool.map(request, requests), strict=True))
    np.testing.assert_array_equal(results["good"]["image"], expected)
    assert "Image size (100000000 pixels) exceeds limit" in str(results["100 MP"])  # Pillow's own, before ours
    assert "exceeds limit" in str(results["bomb"]) and "decompression bomb" in str(results["bomb"])
    assert f"{MAX_PHOTO_BYTES + 1:,} bytes is over the server's limit of {MAX_PHOTO_BYTES:,}" in str(results["bytes"])
    assert all(results[name].reason == "too_large" for name in ("100 MP", "bomb", "bytes"))


def test_paste_answers_the_photo_with_its_face_put_back(server, local, photo, tmp_path):
    expected = {mask: local.run(photo, paste=True, mask=mask).pasted[0] for mask in ("face", "square")}
    with PspClient(f"grpc://127.0.0.1:{server.grpc}") as client:
        got = {"face": client.run(photo, paste=True)["pasted"], "square": client.run(photo, paste=True, mask="square")}
        with pytest.raises(RemoteError, match="paste works on the faces alignment finds") as refused:
            client.run(photo, paste=True, align=False)
        assert refused.value.reason == "bad_parameter"
        with pytest.raises(RemoteError, match="the mask parameter says how to paste: it goes with paste=true"):
            client.run(photo, mask="square")
    assert got["face"].shape == (1, *photo.shape)
    for mask in ("face", "square"):
        pasted = got[mask] if mask == "face" else got[mask]["pasted"]
        assert np.abs(pasted[0].astype(int) - expected[mask]).max() <= 1, mask
    assert not np.array_equal(expected["face"], expected["square"])  # the mask parameter reached the server

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(photo).save(photos / "astronaut.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["infer", str(photos), "-o", str(out), "--url", server.url, "--paste"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "psp-deploy.json"]
    assert np.abs(np.asarray(Image.open(out / "astronaut.png")).astype(int) - expected["face"]).max() <= 1


def test_served_edits_equal_the_pipeline_s_and_an_unknown_direction_fails_alone(server, local, photo, tmp_path):
    """The psp model's edits parameter moves the codes as Pipeline.run(edits=...) does; infer --edit writes what
    the server answers; a direction the bundle lacks fails its own request, named, and not the others."""
    edits = [("age", -2.5)]
    expected = local.run(photo, edits=edits)

    def ask(edits):  # a client per thread: the HTTP client's connections belong to the thread that made them
        with PspClient(server.url) as client:
            return client.run(photo, edits=edits)

    with ThreadPoolExecutor(2) as pool:  # in flight together: one batch, where one request fails alone
        edited, unknown = pool.submit(ask, edits), pool.submit(ask, [("smile", 1.0)])
        got = edited.result()
        with pytest.raises(RemoteError, match=r"no direction 'smile' \(this bundle has: age\)") as refused:
            unknown.result()
    plain = ask(())
    assert refused.value.reason == "bad_parameter"
    assert np.abs(got["codes"] - expected.codes[0]).max() <= 1e-4
    assert np.abs(got["image"].astype(int) - expected.images[0]).max() <= 1
    assert np.abs(got["image"].astype(int) - plain["image"]).max() > 8  # the edit reached the server

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(photo).save(photos / "astronaut.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["infer", str(photos), "-o", str(out), "--url", server.url, "--edit", "age:-2.5"])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(out / "astronaut.png")), got["image"])
    assert json.loads((out / "psp-deploy.json").read_text())["edits"] == [["age", -2.5]]


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def test_overload_is_refused_at_once_and_infer_outlives_a_killed_server(server, bundles, local, photo, tmp_path):
    """A server that holds one request waiting: more are refused at once (503), and retried they all succeed.
    Then `psp-deploy infer` over a folder while that server is SIGKILLed (every process of it) and started
    again: every output is written, each equal to the Pipeline's, none failed. Last, a client given both
    servers spreads its requests over them."""
    root = bundles("rgb-scaled")[0].root
    small = Server(root, "--max-queue-size", "1", "--max-batch", "1")
    try:
        slow = encode_png(np.asarray(Image.fromarray(photo).resize((2048, 2048))))  # a second or more each

        def once(_):
            with PspClient(small.url, retry=NO_RETRY) as client:
                clock = time.monotonic()
                try:
                    client.run(slow)
                    return "ok", time.monotonic() - clock
                except RemoteError as err:
                    return str(err), time.monotonic() - clock

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(once, range(6)))
        refused = [seconds for message, seconds in answers if "Exceeds maximum queue size" in message]
        assert len(refused) >= 3 and len(refused) + sum(m == "ok" for m, _ in answers) == 6, answers
        assert max(refused) < 1.0, answers  # refused at once, not after waiting (100 ms or so on a quiet machine)

        def retried(_):
            with PspClient(small.url) as client:
                return client.run(slow)["image"].shape, client.retried

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(retried, range(4)))
        assert all(shape == (64, 64, 3) for shape, _ in answers) and sum(n for _, n in answers) >= 1, answers

        variants = [np.ascontiguousarray(np.roll(photo, 5 * i, axis=1)) for i in range(12)]
        photos, out = tmp_path / "photos", tmp_path / "out"
        photos.mkdir()
        for i, image in enumerate(variants):
            Image.fromarray(image).save(photos / f"p{i:02d}.png")
        expected = local.run(variants).images
        args = [
            "infer",
            str(photos),
            "-o",
            str(out),
            "--url",
            small.url,
            "--concurrency",
            "2",
            "--retry-deadline",
            "300",
        ]
        infer = subprocess.Popen(
            [sys.executable, "-m", "psp_deploy.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        _wait_for(lambda: len(list(out.glob("p*.png"))) >= 2 or infer.poll() is not None, 120, "the first outputs")
        small.kill()
        written_before_kill = len(list(out.glob("p*.png")))
        small = Server(root, "--max-queue-size", "1", "--max-batch", "1", ports=small.ports)
        output, _ = infer.communicate(timeout=300)
        assert written_before_kill < len(variants), "infer finished before the kill: nothing was tested"
        assert infer.returncode == 0, output
        assert "12 done, 0 skipped (already there), 0 failed" in output, output
        assert not (out / "failures.json").exists() and not list(out.rglob(".*.partial"))
        for i, image in enumerate(expected):
            np.testing.assert_array_equal(np.asarray(Image.open(out / f"p{i:02d}.png")), image)

        before = [_count(_app_metrics(s), "psp", "ok") for s in (small, server)]
        with PspClient([small.url, server.url]) as client:
            for _ in range(6):
                client.run(photo)
        after = [_count(_app_metrics(s), "psp", "ok") for s in (small, server)]
        assert [a - b for a, b in zip(after, before, strict=True)] == [3, 3]
    finally:
        small.stop()


def test_a_client_fails_over_to_the_server_that_answers(server, photo, tmp_path):
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    with PspClient([dead, server.url]) as client:
        images = [client.run(photo)["image"] for _ in range(4)]
        assert client.retried >= 1  # the dead server was tried, then passed over
    assert all(np.array_equal(image, images[0]) for image in images)
    with pytest.raises(RemoteError, match=r"no server took the request in 1 s \(\d+ attempts; last: .*Connection"):
        PspClient(dead, retry=RetryPolicy(deadline_s=1.0)).run(photo)

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(photo).save(photos / "astronaut.png")
    result = CliRunner().invoke(
        app, ["infer", str(photos), "-o", str(tmp_path / "out"), "--url", dead, "--url", server.url]
    )
    assert result.exit_code == 0 and "1 done" in result.output, result.output


def test_sigterm_finishes_in_flight_requests_then_stops(server, photo):
    """Last in this module: it stops the shared server."""
    # seconds to decode and align each, yet all four well within Triton's 30 s drain on a busy two-core machine
    payload = encode_png(np.asarray(Image.fromarray(photo).resize((3072, 3072))))

    def request(_):
        with PspClient(server.url) as client:
            return client.run(payload)["image"]

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(request, i) for i in range(4)]
        time.sleep(1.0)  # the requests have reached the server and are being served
        in_flight = sum(not f.done() for f in futures)
        server.proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=120) for f in futures]
    assert in_flight > 0  # else the test would drain nothing
    assert results[0].shape == (64, 64, 3) and all(np.array_equal(r, results[0]) for r in results)  # none lost
    assert server.proc.wait(timeout=90) == 0
    assert "stopped" in server.proc.stdout.read()
    assert not os.path.exists(f"/proc/{server.proc.pid}")
