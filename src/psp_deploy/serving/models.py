"""The three served models as PyTriton inference callables over one Pipeline.

A failed request must count as failed in Triton's metrics (nv_inference_request_failure). Triton
counts per execution: a request fails when the execution that carries it raises, which fails every
request batched with it; an error response for one request of a batch counts as a success in
Triton's Python backend, and PyTriton cannot send one anyway. So each model takes ONE request per
execution (no Triton batcher) and checks and prepares it there: a request that cannot be served
(an undecodable photo, no face, bad parameters, non-finite codes) raises, and Triton answers it
with that message and counts it as failed, alone. The graphs still run in batches, formed across
the requests waiting at that moment by a Batcher per model. Wrong dtypes or shapes never get here:
Triton refuses those requests itself against the declared inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import ENCODER_INPUT_SIZE, POOLED_SIZE, STYLE_DIM
from ..errors import InputError
from ..runtime import Pipeline, parse_latent_mask
from ..runtime.io import decode_image
from ..runtime.preprocess import to_uint8
from .batcher import Batcher


def _one(response: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One request's outputs with their batch axis of 1."""
    return {name: value[None] for name, value in response.items()}


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

    def __init__(self, pipeline: Pipeline, max_batch: int = 8, max_delay_s: float = 0.002, workers: int = 1) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config
        runs = {"psp": self._psp_batch, "encode": self._encode_batch, "synthesize": self._synthesize_batch}
        self._batches = {name: Batcher(run, max_batch, max_delay_s, workers) for name, run in runs.items()}

    def close(self) -> None:
        for batcher in self._batches.values():
            batcher.close()

    def psp(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """Encoded photo (any format, any size) → aligned face, W+ codes, synthesized image."""
        return [self._psp_one(request) for request in requests]

    def _psp_one(self, request: Any) -> dict[str, np.ndarray]:
        options = RunOptions.parse(request.parameters, self.config.n_styles)
        if request["photo"].size != 1:
            raise InputError(f"send one photo per request, got {request['photo'].size}")
        mode = "RGB" if self.config.input_kind == "rgb" else "L"
        photo = decode_image(bytes(request["photo"].reshape(-1)[0]), "request photo", mode)
        x, face = self.pipeline.prepare(photo, options.align)
        codes, image = self._batches["psp"].submit((x, options))
        aligned = face.image if face is not None else np.zeros((ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE, 3), np.uint8)
        return _one({"aligned": aligned, "codes": codes, "image": image})

    def _psp_batch(self, work: list[tuple[np.ndarray, RunOptions]]) -> list[tuple[np.ndarray, np.ndarray]]:
        codes = self.pipeline.encode(np.stack([x for x, _ in work]))
        for row, (_, options) in enumerate(work):
            if options.latent_mask:
                inject = self.pipeline.style_latent(options.seed)
                codes[row] = self.pipeline.mix(codes[row : row + 1], options.latent_mask, inject, options.mix_alpha)[0]
        image, pooled = self.pipeline.synthesize(codes)
        return [
            (codes[row], to_uint8((pooled if options.resize else image)[row : row + 1])[0])
            for row, (_, options) in enumerate(work)
        ]

    def encode(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """Aligned 256² faces (uint8 RGB) → W+ codes."""
        return [{"codes": self._batches["encode"].submit(self._faces(request["face"]))} for request in requests]

    def _faces(self, faces: np.ndarray) -> np.ndarray:
        return np.stack([self.pipeline.prepare(face, align=False)[0] for face in faces])

    def _encode_batch(self, faces: list[np.ndarray]) -> list[np.ndarray]:
        return _split(self.pipeline.encode(np.concatenate(faces)), faces)

    def synthesize(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """W+ codes → full-size image and its 256² pooled version (uint8 RGB)."""
        responses = []
        for request in requests:
            codes = _finite_codes(request["codes"])
            image, pooled = self._batches["synthesize"].submit(codes)
            responses.append({"image": image, "image_256": pooled})
        return responses

    def _synthesize_batch(self, codes: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        image, pooled = self.pipeline.synthesize(np.concatenate(codes))
        return list(zip(_split(to_uint8(image), codes), _split(to_uint8(pooled), codes), strict=True))


def _finite_codes(codes: np.ndarray) -> np.ndarray:
    """Non-finite codes synthesize a NaN image that to_uint8 turns into plausible pixels: refuse them."""
    bad = int((~np.isfinite(codes)).sum())
    if bad:
        raise InputError(f"codes hold {bad} NaN or infinite values; W+ codes must be finite")
    return codes


def _split(batch: np.ndarray, parts: list[np.ndarray]) -> list[np.ndarray]:
    """``batch`` cut back into the requests' rows (each part's length)."""
    return np.split(batch, np.cumsum([len(p) for p in parts])[:-1])


def tensors(config: Any) -> dict[str, tuple[list, list]]:
    """Each model's (inputs, outputs) as (name, dtype, shape) triples, batch axis excluded."""
    n, size = config.n_styles, config.output_size
    face_channels = 3 if config.input_kind == "rgb" else 1
    return {
        "psp": (
            [("photo", bytes, (1,))],
            [
                ("aligned", np.uint8, (ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE, 3)),
                ("codes", np.float32, (n, STYLE_DIM)),
                ("image", np.uint8, (-1, -1, 3)),
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
            [("codes", np.float32, (n, STYLE_DIM))],
        ),
        "psp_synthesize": (
            [("codes", np.float32, (n, STYLE_DIM))],
            [("image", np.uint8, (size, size, 3)), ("image_256", np.uint8, (POOLED_SIZE, POOLED_SIZE, 3))],
        ),
    }
