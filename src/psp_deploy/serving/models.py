"""The three served models as PyTriton inference callables over one Pipeline.

Each PyTriton request carries a batch axis of 1 on its inputs and expects one on its
outputs. Triton batches requests from many clients; a request that fails (an undecodable photo,
no face, bad parameters) must not fail the others in its batch, and PyTriton can only
fail whole batches. So every model has an ``error`` output: empty on success, the
message otherwise (the psp-deploy client raises it). Wrong dtypes or shapes never get
here: Triton refuses those requests itself against the declared inputs.

Triton counts such a request as a success in its metrics: PyTriton (0.7) can only fail a whole
execution, and taking one request per execution instead (many model instances) made the server's
start race PyTriton's instance handshake. The client and `psp-deploy infer` count failures.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import ENCODER_INPUT_SIZE, POOLED_SIZE, STYLE_DIM
from ..errors import InputError, PspDeployError
from ..runtime import Output, Pipeline, RunOptions, parse_latent_mask
from ..runtime.io import decode_image
from ..runtime.preprocess import to_uint8

OK = np.array([b""], dtype=object)


def _one(response: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One request's outputs with their batch axis of 1."""
    return {name: value[None] for name, value in response.items()}


def _error(err: Exception) -> np.ndarray:
    return np.array([f"{type(err).__name__}: {err}".encode()], dtype=object)


PARAMETERS = ("align", "resize", "latent_mask", "mix_alpha", "seed", "n_outputs")
MAX_OUTPUTS = 16  # n_outputs of one request: its images are held at once, beside its batch's


def request_options(params: dict[str, Any] | None, n_styles: int) -> RunOptions:
    """The `psp` model's request parameters, with `psp-deploy run`'s meaning (seed 0 by default)."""
    params = dict(params or {})
    unknown = set(params) - set(PARAMETERS)
    if unknown:
        raise InputError(f"unknown request parameters {sorted(unknown)}")
    try:
        alpha, mask = params.get("mix_alpha"), params.get("latent_mask")
        return RunOptions(
            align=None if params.get("align") is None else _flag(params["align"]),
            resize=_flag(params.get("resize", False)),
            latent_mask=tuple(parse_latent_mask(str(mask), n_styles)) if mask else None,
            mix_alpha=None if alpha in (None, "") else float(alpha),
            seed=int(params.get("seed", 0)),
            n_outputs=_outputs(params.get("n_outputs", 1)),
        )
    except ValueError as err:
        raise InputError(f"bad request parameter: {err}") from None


def _outputs(value: Any) -> int:
    n = int(value)
    if n > MAX_OUTPUTS:
        raise InputError(f"n_outputs is at most {MAX_OUTPUTS} per request (send more with other seeds), got {n}")
    return n


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

    def psp(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """Encoded photo (any format, any size) → aligned face, W+ codes, synthesized image."""
        prepared: dict[int, tuple[RunOptions, np.ndarray, Any]] = {}
        errors: dict[int, Exception] = {}
        for i, request in enumerate(requests):
            try:
                prepared[i] = self._prepare_photo(request)
            except PspDeployError as err:
                errors[i] = err
        order = sorted(prepared)
        rows = [prepared[i][0] for i in order]
        outputs = self.pipeline.generate(np.stack([prepared[i][1] for i in order]), rows).outputs if order else []
        made = dict(zip(order, outputs, strict=True))
        return [_one(self._psp_response(prepared.get(i), made.get(i), errors.get(i))) for i in range(len(requests))]

    def _prepare_photo(self, request: Any) -> tuple[RunOptions, np.ndarray, Any]:
        options = request_options(request.parameters, self.config.n_styles)
        mode = "RGB" if self.config.input_kind == "rgb" else "L"
        photo = decode_image(bytes(request["photo"].reshape(-1)[0]), "request photo", mode)
        x, face = self.pipeline.prepare_face(photo, options.align)  # uint8 up: normalised on the device
        return options, x, face

    def _psp_response(
        self, prepared: tuple | None, out: Output | None, error: Exception | None
    ) -> dict[str, np.ndarray]:
        blank_face = np.zeros((ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE, 3), np.uint8)
        if error is not None:
            codes = np.zeros((self.config.n_styles, STYLE_DIM), np.float32)
            return {
                "aligned": blank_face,
                "codes": codes,
                "image": np.zeros((1, 1, 3), np.uint8),
                "images": np.zeros((1, 1, 1, 3), np.uint8),
                "warnings": OK,
                "error": _error(error),
            }
        face = prepared[2]
        aligned = face.image if face is not None else blank_face
        warnings = np.array(["\n".join(face.warnings if face is not None else ()).encode()], dtype=object)
        return {
            "aligned": aligned,
            "codes": out.mixed[0],
            "image": out.images[0],
            "images": out.images,  # every output (n_outputs), the first being ``image``
            "warnings": warnings,  # the aligner's notes (AlignedFace.warnings), one a line; empty: none
            "error": OK,
        }

    def encode(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """Aligned 256² face (uint8 RGB) → W+ codes."""
        prepared, responses = {}, {}
        for i, request in enumerate(requests):
            try:
                prepared[i] = self.pipeline.prepare(request["face"][0], align=False)[0]
            except PspDeployError as err:
                responses[i] = {"codes": np.zeros((self.config.n_styles, STYLE_DIM), np.float32), "error": _error(err)}
        if prepared:
            codes = self.pipeline.encode(np.stack(list(prepared.values())))
            responses.update({i: {"codes": c, "error": OK} for i, c in zip(prepared, codes, strict=True)})
        return [_one(responses[i]) for i in range(len(requests))]

    def synthesize(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """W+ codes → full-size image and its 256² pooled version (uint8 RGB). Non-finite codes would
        come out as plausible pixels (to_uint8 clips NaN): such a request gets an error instead."""
        size, pooled_size = self.config.output_size, POOLED_SIZE
        responses: dict[int, dict[str, np.ndarray]] = {}
        finite = {}
        for i, request in enumerate(requests):
            bad = int((~np.isfinite(request["codes"])).sum())
            if bad:
                err = InputError(f"codes hold {bad} NaN or infinite values; W+ codes must be finite")
                blank = {
                    "image": np.zeros((size, size, 3), np.uint8),
                    "image_256": np.zeros((pooled_size, pooled_size, 3), np.uint8),
                }
                responses[i] = {**blank, "error": _error(err)}
            else:
                finite[i] = request["codes"]
        if finite:
            image, pooled = self.pipeline.synthesize(np.concatenate(list(finite.values())))
            for i, a, b in zip(finite, to_uint8(image), to_uint8(pooled), strict=True):
                responses[i] = {"image": a, "image_256": b, "error": OK}
        return [_one(responses[i]) for i in range(len(requests))]


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
                ("images", np.uint8, (-1, -1, -1, 3)),
                ("warnings", bytes, (1,)),
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
