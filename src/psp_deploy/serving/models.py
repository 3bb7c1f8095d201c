"""The three served models as PyTriton inference callables over one Pipeline.

Each PyTriton request carries a batch axis of 1 on its inputs and expects one on its
outputs. Triton batches requests from many clients; a request that fails (an undecodable photo,
no face, bad parameters) must not fail the others in its batch, and PyTriton can only
fail whole batches. So every model has an ``error`` output: empty on success, the
message otherwise (the psp-deploy client raises it). Wrong dtypes or shapes never get
here: Triton refuses those requests itself against the declared inputs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import ENCODER_INPUT_SIZE, POOLED_SIZE, STYLE_DIM
from ..errors import InputError, PspDeployError
from ..runtime import Pipeline, parse_latent_mask
from ..runtime.io import decode_image
from ..runtime.preprocess import to_uint8

OK = np.array([b""], dtype=object)


def _one(response: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One request's outputs with their batch axis of 1."""
    return {name: value[None] for name, value in response.items()}


def _error(err: Exception) -> np.ndarray:
    return np.array([f"{type(err).__name__}: {err}".encode()], dtype=object)


@dataclass(frozen=True)
class RunOptions:
    """The `psp` model's request parameters, with `psp-deploy run`'s meaning."""

    align: bool | None = None
    resize: bool = False
    latent_mask: list[int] | None = None
    mix_alpha: float | None = None
    seed: int = 0

    @classmethod
    def parse(cls, params: dict[str, Any] | None, n_styles: int) -> RunOptions:
        params = dict(params or {})
        unknown = set(params) - {"align", "resize", "latent_mask", "mix_alpha", "seed"}
        if unknown:
            raise InputError(f"unknown request parameters {sorted(unknown)}")
        try:
            alpha = params.get("mix_alpha")
            return cls(
                align=None if params.get("align") is None else _flag(params["align"]),
                resize=_flag(params.get("resize", False)),
                latent_mask=parse_latent_mask(str(params["latent_mask"]), n_styles)
                if params.get("latent_mask")
                else None,
                mix_alpha=None if alpha in (None, "") else float(alpha),
                seed=int(params.get("seed", 0)),
            )
        except ValueError as err:
            raise InputError(f"bad request parameter: {err}") from None


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes"):
        return True
    if str(value).lower() in ("0", "false", "no"):
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


class ServedModels:
    """Inference callables (lists of PyTriton requests in, one response each out)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config
        self.inflight = 0
        self._lock = threading.Lock()

    def _track(self, delta: int) -> None:
        with self._lock:
            self.inflight += delta

    def psp(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """Encoded photo (any format, any size) → aligned face, W+ codes, synthesized image."""
        self._track(len(requests))
        try:
            prepared: dict[int, tuple] = {}
            errors: dict[int, Exception] = {}
            for i, request in enumerate(requests):
                try:
                    options = RunOptions.parse(request.parameters, self.config.n_styles)
                    mode = "RGB" if self.config.input_kind == "rgb" else "L"
                    photo = decode_image(bytes(request["photo"].reshape(-1)[0]), "request photo", mode)
                    x, face = self.pipeline.prepare(photo, options.align)
                    prepared[i] = (options, x, face)
                except PspDeployError as err:
                    errors[i] = err
            images = self._synthesize_prepared(prepared)
            return [_one(self._psp_response(i, prepared, images, errors)) for i in range(len(requests))]
        finally:
            self._track(-len(requests))

    def _synthesize_prepared(self, prepared: dict[int, tuple]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        if not prepared:
            return {}
        order = sorted(prepared)
        codes = self.pipeline.encode(np.stack([prepared[i][1] for i in order]))
        for row, i in enumerate(order):
            options = prepared[i][0]
            if options.latent_mask:
                inject = self.pipeline.style_latent(options.seed)
                codes[row] = self.pipeline.mix(codes[row : row + 1], options.latent_mask, inject, options.mix_alpha)[0]
        image, pooled = self.pipeline.synthesize(codes)
        return {
            i: (codes[row], to_uint8((pooled if prepared[i][0].resize else image)[row : row + 1])[0])
            for row, i in enumerate(order)
        }

    def _psp_response(self, i: int, prepared: dict, images: dict, errors: dict) -> dict[str, np.ndarray]:
        if i in errors:
            return {
                "aligned": np.zeros((ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE, 3), np.uint8),
                "codes": np.zeros((self.config.n_styles, STYLE_DIM), np.float32),
                "image": np.zeros((1, 1, 3), np.uint8),
                "error": _error(errors[i]),
            }
        face = prepared[i][2]
        aligned = face.image if face is not None else np.zeros((ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE, 3), np.uint8)
        codes, image = images[i]
        return {"aligned": aligned, "codes": codes, "image": image, "error": OK}

    def encode(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """Aligned 256² face (uint8 RGB) → W+ codes."""
        self._track(len(requests))
        try:
            prepared, responses = {}, {}
            for i, request in enumerate(requests):
                try:
                    prepared[i] = self.pipeline.prepare(request["face"][0], align=False)[0]
                except PspDeployError as err:
                    responses[i] = {
                        "codes": np.zeros((self.config.n_styles, STYLE_DIM), np.float32),
                        "error": _error(err),
                    }
            if prepared:
                codes = self.pipeline.encode(np.stack(list(prepared.values())))
                responses.update({i: {"codes": c, "error": OK} for i, c in zip(prepared, codes, strict=True)})
            return [_one(responses[i]) for i in range(len(requests))]
        finally:
            self._track(-len(requests))

    def synthesize(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """W+ codes → full-size image and its 256² pooled version (uint8 RGB)."""
        self._track(len(requests))
        try:
            image, pooled = self.pipeline.synthesize(np.concatenate([r["codes"] for r in requests]))
            images = zip(to_uint8(image), to_uint8(pooled), strict=True)
            return [_one({"image": a, "image_256": b, "error": OK}) for a, b in images]
        finally:
            self._track(-len(requests))


def tensors(config: Any) -> dict[str, tuple[list, list]]:
    """Each model's (inputs, outputs) as (name, dtype, shape) triples, batch axis excluded."""
    n, size = config.n_styles, config.output_size
    error = ("error", bytes, (1,))
    face_channels = 3 if config.input_kind == "rgb" else 1
    return {
        "psp": (
            [("photo", bytes, (1,))],
            [
                ("aligned", np.uint8, (ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE, 3)),
                ("codes", np.float32, (n, STYLE_DIM)),
                ("image", np.uint8, (-1, -1, 3)),
                error,
            ],
        ),
        "psp_encode": (
            [
                (
                    "face",
                    np.uint8,
                    (ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE, face_channels)
                    if face_channels == 3
                    else (ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE),
                )
            ],
            [("codes", np.float32, (n, STYLE_DIM)), error],
        ),
        "psp_synthesize": (
            [("codes", np.float32, (n, STYLE_DIM))],
            [("image", np.uint8, (size, size, 3)), ("image_256", np.uint8, (POOLED_SIZE, POOLED_SIZE, 3)), error],
        ),
    }
