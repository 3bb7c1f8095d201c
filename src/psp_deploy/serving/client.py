"""A client for `psp-deploy serve` over Triton's HTTP or gRPC protocol (tritonclient).

One client per thread: tritonclient's HTTP client must not be shared across threads.
A request the server could not process comes back with its ``error`` output set; the
client raises it as RemoteError, naming the cause.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BackendUnavailableError, PspDeployError

DEFAULT_TIMEOUT_S = 300.0
MODELS = ("psp", "psp_encode", "psp_synthesize")


class RemoteError(PspDeployError):
    """The server refused or failed this one request."""


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


class PspClient:
    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.protocol, self.address = _split_url(url)
        self.tc = _modules(self.protocol)
        if self.protocol == "http":
            self.client = self.tc.InferenceServerClient(
                self.address, network_timeout=timeout, connection_timeout=timeout
            )
        else:
            self.client = self.tc.InferenceServerClient(self.address)
        self.timeout = timeout

    def ready(self) -> bool:
        """The server is up and every psp-deploy model is loaded (Triton is ready before its models)."""
        try:
            return bool(self.client.is_server_ready()) and all(self.client.is_model_ready(m) for m in MODELS)
        except Exception:  # noqa: BLE001 - not ready, whatever the transport says
            return False

    def _input(self, name: str, value: np.ndarray, datatype: str) -> Any:
        tensor = self.tc.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        return tensor

    def _infer(self, model: str, inputs: list, outputs: list[str], parameters: dict | None = None) -> list[np.ndarray]:
        kwargs = {"parameters": parameters} if parameters else {}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        requested = [self.tc.InferRequestedOutput(n) for n in outputs + ["error"]]
        try:
            result = self.client.infer(model, inputs, outputs=requested, **kwargs)
        except Exception as err:  # noqa: BLE001 - tritonclient raises InferenceServerException and transport errors
            raise RemoteError(f"{model}: {str(err).strip()}") from None
        error = result.as_numpy("error").reshape(-1)[0]
        if error:
            raise RemoteError(error.decode() if isinstance(error, bytes) else str(error))
        return [result.as_numpy(n)[0] for n in outputs]

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
    ) -> dict[str, Any]:
        """A photo (file bytes, a path, or a uint8 RGB array) → aligned face, W+ codes, synthesized image;
        ``images``: every output's image (n_outputs > 1 needs latent_mask: output k mixes seed + k),
        ``warnings``: what the aligner noted (several faces, a soft upscaled crop), as AlignedFace.warnings."""
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
        data = self._input("photo", np.array([[photo]], dtype=object), "BYTES")
        names = ["aligned", "codes", "image", "warnings"] + (["images"] if n_outputs != 1 else [])
        aligned, codes, image, notes, *more = self._infer("psp", [data], names, parameters)
        notes = notes.reshape(-1)[0]
        notes = notes.decode() if isinstance(notes, bytes) else str(notes)
        return {
            "aligned": aligned,
            "codes": codes,
            "image": image,
            "images": more[0] if more else image[None],
            "warnings": tuple(notes.splitlines()),
        }

    def encode(self, face: np.ndarray) -> np.ndarray:
        """Aligned 256² face (uint8) → W+ codes [n_styles, 512]."""
        return self._infer("psp_encode", [self._input("face", np.asarray(face)[None], "UINT8")], ["codes"])[0]

    def synthesize(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """W+ codes [n_styles, 512] → (full-size image, 256² image), uint8 RGB."""
        value = np.asarray(codes, np.float32)[None]
        return tuple(self._infer("psp_synthesize", [self._input("codes", value, "FP32")], ["image", "image_256"]))

    def statistics(self, model: str, access_token: str) -> dict[str, Any]:
        """Triton's inference statistics for a model (a restricted API: needs the server's token)."""
        headers = {"triton-access-token": access_token}
        if self.protocol == "grpc":
            return self.client.get_inference_statistics(model, headers=headers, as_json=True)
        return self.client.get_inference_statistics(model, headers=headers)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> PspClient:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


class ClientPool:
    """One PspClient per thread (tritonclient's HTTP client is not thread-safe), for batch work."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.url, self.timeout = url, timeout
        self._local = threading.local()

    def get(self) -> PspClient:
        if not hasattr(self._local, "client"):
            self._local.client = PspClient(self.url, self.timeout)
        return self._local.client

    def run(self, photo: str | Path, **parameters: Any) -> dict[str, np.ndarray] | PspDeployError:
        """This thread's client runs ``photo``; a failure is returned in the result's place, so one
        bad input fails alone in a batch."""
        try:
            return self.get().run(photo, **parameters)
        except PspDeployError as err:
            return err
