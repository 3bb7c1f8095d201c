"""A client for `psp-deploy serve` over Triton's HTTP or gRPC protocol (tritonclient).

One client per thread: tritonclient's HTTP client must not be shared across threads.
A request the server could not process comes back with its ``error`` output set; the
client raises it as RemoteError, naming the cause (and its ``reason``).

A request no server could take now is retried: a full queue or a request that waited past the
queue's timeout (HTTP 503, gRPC UNAVAILABLE), a refused or dropped connection, a server restarting.
Every model is a pure function of its inputs and parameters, so sending a request again is safe.
Retries go to the next server (given several URLs, as replicas behind a Kubernetes Service) and,
once every server failed in a round, wait a jittered, growing back-off; past ``RetryPolicy.deadline_s``
the request fails with ServerUnavailable. A request answers whole or raises: never half a result.
"""

from __future__ import annotations

import http.client
import io
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BackendUnavailableError, PspDeployError

DEFAULT_TIMEOUT_S = 300.0
MODELS = ("psp", "psp_encode", "psp_synthesize")
# Triton's answer when it cannot take a request now (queue full, timed out in the queue, not ready)
UNAVAILABLE = ("503", "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")


class RemoteError(PspDeployError):
    """The server refused or failed this one request; ``reason`` says why, as the server's metrics count it
    (no_face, decode, too_large, non_finite, bad_parameter, internal), or "" when Triton refused it."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class ServerUnavailable(RemoteError):
    """No server took the request before the retry deadline (overloaded, restarting or unreachable)."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How long a request may keep trying (``deadline_s``, from its first attempt), and the back-off
    between rounds over the servers: "full jitter", a uniform draw up to base·2^round, capped, so
    clients refused together do not come back together."""

    deadline_s: float = 120.0
    base_s: float = 0.2
    cap_s: float = 5.0

    def backoff(self, round_: int) -> float:
        return random.uniform(0.0, min(self.cap_s, self.base_s * 2**round_))


NO_RETRY = RetryPolicy(deadline_s=0.0)


def _modules(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as err:
        raise BackendUnavailableError("the client needs tritonclient: pip install 'psp-deploy[serve]'") from err
    return module


def _split_url(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "http", url
    if scheme not in ("http", "grpc"):
        raise PspDeployError(f"URL {url!r}: use http://HOST:PORT or grpc://HOST:PORT")
    return scheme, rest.rstrip("/")


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Unavailable(Exception):
    """One attempt found its server unable to take the request (retried elsewhere or later)."""


class Server:
    """One server's tritonclient connection, remade after a failed attempt (a gRPC channel would otherwise
    wait out its own reconnection back-off after a restart; an HTTP pool may hold dead sockets)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.protocol, self.address = _split_url(url)
        self.tc = _modules(self.protocol)
        self.timeout = timeout
        self.client = self._connect()

    def _connect(self) -> Any:
        if self.protocol == "http":
            return self.tc.InferenceServerClient(
                self.address, network_timeout=self.timeout, connection_timeout=self.timeout
            )
        return self.tc.InferenceServerClient(self.address)

    def reconnect(self) -> None:
        self.close()
        self.client = self._connect()

    def ready(self) -> bool:
        """Up, and every psp-deploy model is loaded (Triton is ready before its models)."""
        try:
            return bool(self.client.is_server_ready()) and all(self.client.is_model_ready(m) for m in MODELS)
        except Exception:  # noqa: BLE001 - not ready, whatever the transport says
            return False

    def infer(self, model: str, inputs: list, outputs: list[str], parameters: dict | None) -> Any:
        """Triton's answer, or _Unavailable (retryable), or RemoteError (Triton refused this request)."""
        kwargs: dict[str, Any] = {"parameters": parameters} if parameters else {}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        requested = [self.tc.InferRequestedOutput(n) for n in [*outputs, "error", "reason"]]
        try:
            return self.client.infer(model, inputs, outputs=requested, **kwargs)
        except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out, closed mid-answer
            raise _Unavailable(f"{self.url}: {type(err).__name__}: {err}") from None
        except Exception as err:  # noqa: BLE001 - tritonclient's InferenceServerException
            status = getattr(err, "status", lambda: None)()
            message = f"{model}: {str(err).strip()}"
            if str(status) in UNAVAILABLE:
                raise _Unavailable(f"{self.url}: {message}") from None
            raise RemoteError(message) from None

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001, S110 - a connection already broken closes as it can
            pass


class PspClient:
    """The three models of one server, or of several (``url`` a list: requests spread over them in turn,
    failing over to the next; see the module's docstring for retries)."""

    def __init__(
        self, url: str | Sequence[str], timeout: float = DEFAULT_TIMEOUT_S, retry: RetryPolicy = RetryPolicy()
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise PspDeployError("no server URL given")
        self.servers = [Server(u, timeout) for u in urls]
        self.timeout, self.retry = timeout, retry
        self.tc = self.servers[0].tc  # inputs are built with the first server's protocol module
        if any(server.protocol != self.servers[0].protocol for server in self.servers):
            raise PspDeployError(f"the URLs mix protocols: {urls}; use all http:// or all grpc://")
        self._turn = random.randrange(len(self.servers))  # clients started together start on different servers
        self.retried = 0  # attempts that found no server able to take them, over this client's life
        self.answered_by: str | None = None  # the URL of the server that answered the last request

    def ready(self) -> bool:
        """At least one server is up with every psp-deploy model loaded."""
        return any(server.ready() for server in self.servers)

    def _input(self, name: str, value: np.ndarray, datatype: str) -> Any:
        tensor = self.tc.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        return tensor

    def _attempts(self) -> Iterator[Server]:
        """Servers to try, in turn from the next one, with a back-off after each round, until the deadline."""
        self._turn += 1
        start, round_ = time.monotonic(), 0
        while True:
            for k in range(len(self.servers)):
                yield self.servers[(self._turn + k) % len(self.servers)]
            pause = self.retry.backoff(round_)
            if time.monotonic() + pause - start > self.retry.deadline_s:
                return
            time.sleep(pause)
            round_ += 1

    def _infer(self, model: str, inputs: list, outputs: list[str], parameters: dict | None = None) -> list[np.ndarray]:
        failures: list[str] = []
        for server in self._attempts():
            try:
                result = server.infer(model, inputs, outputs, parameters)
            except _Unavailable as err:
                failures.append(str(err))
                self.retried += 1
                server.reconnect()
                continue
            self.answered_by = server.url
            error = _text(result.as_numpy("error").reshape(-1)[0])
            if error:
                raise RemoteError(error, _text(result.as_numpy("reason").reshape(-1)[0]))
            return [result.as_numpy(n)[0] for n in outputs]
        raise ServerUnavailable(
            f"{model}: no server took the request in {self.retry.deadline_s:g} s ({len(failures)} attempts; "
            f"last: {failures[-1]})"
        )

    def run(
        self,
        photo: bytes | str | Path | np.ndarray,
        *,
        align: bool | None = None,
        resize: bool = False,
        latent_mask: str | None = None,
        mix_alpha: float | None = None,
        seed: int = 0,
        n_outputs: int = 1,
        paste: bool = False,
        mask: str | None = None,
        edits: Sequence[tuple[str, float]] = (),
    ) -> dict[str, Any]:
        """A photo (file bytes, a path, or a uint8 RGB array) → aligned face, W+ codes, synthesized image;
        ``images``: every output's image (n_outputs > 1 needs latent_mask: output k mixes seed + k),
        ``warnings``: what the aligner noted (several faces, a soft upscaled crop), as AlignedFace.warnings.
        ``paste``: also ``pasted``, the photo with each output's face put back through ``mask`` (face, the
        default, or square): uint8 [n_outputs, H, W, 3] at the photo's size, as Pipeline.run(paste=True).
        ``edits``: (direction, strength) pairs of the served bundle's directions, applied in order after any
        mixing, as Pipeline.run(edits=...); ``codes`` are then the edited codes."""
        if isinstance(photo, (str, Path)):
            photo = Path(photo).read_bytes()
        elif isinstance(photo, np.ndarray):
            photo = encode_png(photo)
        parameters: dict[str, Any] = {"resize": bool(resize), "seed": int(seed)}
        if align is not None:
            parameters["align"] = bool(align)
        if latent_mask:
            parameters["latent_mask"] = str(latent_mask)
        if mix_alpha is not None:
            parameters["mix_alpha"] = str(mix_alpha)
        if n_outputs != 1:
            parameters["n_outputs"] = int(n_outputs)
        if paste:
            parameters["paste"] = True
        if mask is not None:
            parameters["mask"] = str(mask)
        if edits:
            parameters["edits"] = ",".join(f"{name}:{float(strength)!r}" for name, strength in edits)
        data = self._input("photo", np.array([[photo]], dtype=object), "BYTES")
        extra = (["images"] if n_outputs != 1 else []) + (["pasted"] if paste else [])
        aligned, codes, image, notes, *more = self._infer(
            "psp", [data], ["aligned", "codes", "image", "warnings", *extra], parameters
        )
        answer = dict(zip(extra, more, strict=True))
        return {
            "aligned": aligned,
            "codes": codes,
            "image": image,
            "images": answer.get("images", image[None]),
            "warnings": tuple(_text(notes.reshape(-1)[0]).splitlines()),
            **({"pasted": answer["pasted"]} if paste else {}),
        }

    def encode(self, face: np.ndarray) -> np.ndarray:
        """Aligned 256² face (uint8) → W+ codes [n_styles, 512]."""
        return self._infer("psp_encode", [self._input("face", np.asarray(face)[None], "UINT8")], ["codes"])[0]

    def synthesize(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """W+ codes [n_styles, 512] → (full-size image, 256² image), uint8 RGB."""
        value = np.asarray(codes, np.float32)[None]
        return tuple(self._infer("psp_synthesize", [self._input("codes", value, "FP32")], ["image", "image_256"]))

    def statistics(self, model: str, access_token: str) -> dict[str, Any]:
        """Triton's inference statistics for a model, from the first server (a restricted API: needs its token)."""
        headers = {"triton-access-token": access_token}
        server = self.servers[0]
        if server.protocol == "grpc":
            return server.client.get_inference_statistics(model, headers=headers, as_json=True)
        return server.client.get_inference_statistics(model, headers=headers)

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __enter__(self) -> PspClient:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


class ClientPool:
    """One PspClient per thread (tritonclient's HTTP client is not thread-safe), for batch work."""

    def __init__(
        self, url: str | Sequence[str], timeout: float = DEFAULT_TIMEOUT_S, retry: RetryPolicy = RetryPolicy()
    ) -> None:
        self.url, self.timeout, self.retry = url, timeout, retry
        self._local = threading.local()

    def get(self) -> PspClient:
        if not hasattr(self._local, "client"):
            self._local.client = PspClient(self.url, self.timeout, self.retry)
        return self._local.client

    def run(self, photo: str | Path, **parameters: Any) -> dict[str, np.ndarray] | PspDeployError:
        """This thread's client runs ``photo``; a failure is returned in the result's place, so one
        bad input fails alone in a batch."""
        try:
            return self.get().run(photo, **parameters)
        except PspDeployError as err:
            return err
