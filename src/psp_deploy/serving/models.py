"""The three served models as PyTriton inference callables over one Pipeline.

Each PyTriton request carries a batch axis of 1 on its inputs and expects one on its
outputs. Triton batches requests from many clients; a request that fails (an undecodable photo,
no face, bad parameters) must not fail the others in its batch, and PyTriton can only
fail whole batches. So every model has an ``error`` output: empty on success, the
message otherwise (the psp-deploy client raises it), and a ``reason`` output naming its kind
(``REASONS``: what the serving metrics count it under). Wrong dtypes or shapes never get
here: Triton refuses those requests itself against the declared inputs.

Triton counts such a request as a success in its metrics: PyTriton (0.7) can only fail a whole
execution, and taking one request per execution instead (many model instances) made the server's
start race PyTriton's instance handshake. serving/metrics.py counts them by ``reason``.

Outputs of variable size (``image``, ``images``, ``pasted``) are declared with -1 axes: each request
is answered alone (PyTriton never concatenates two requests' outputs), so a photo of any size comes
back at its own size; a request that does not ask for them gets a 1×1 placeholder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import ENCODER_INPUT_SIZE, POOLED_SIZE, STYLE_DIM
from ..errors import ImageDecodeError, ImageTooLargeError, InputError, NoFaceError, PspDeployError
from ..runtime import Output, Pipeline, RunOptions, parse_latent_mask
from ..runtime.align import AlignedFace
from ..runtime.edits import Edit, parse_edit
from ..runtime.io import decode_image
from ..runtime.paste import MASKS, paste_all
from ..runtime.pipeline import check_paste
from ..runtime.preprocess import to_uint8

OK = np.array([b""], dtype=object)
ANSWERED = {"error": OK, "reason": OK}


class NonFiniteCodesError(InputError):
    """W+ codes holding NaN or infinite values."""


# Why a request failed, as the ``reason`` output and the metrics name it: the first class that matches
REASONS = (
    (NoFaceError, "no_face"),
    (ImageTooLargeError, "too_large"),
    (ImageDecodeError, "decode"),
    (NonFiniteCodesError, "non_finite"),
    (InputError, "bad_parameter"),
)
INTERNAL = "internal"  # anything else: a fault of the server, not of the request


def reason(err: Exception) -> str:
    return next((name for kind, name in REASONS if isinstance(err, kind)), INTERNAL)


def _one(response: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One request's outputs with their batch axis of 1."""
    return {name: value[None] for name, value in response.items()}


def _failed(err: Exception) -> dict[str, np.ndarray]:
    """The ``error`` and ``reason`` outputs of a request that failed."""
    message = np.array([f"{type(err).__name__}: {err}".encode()], dtype=object)
    return {"error": message, "reason": np.array([reason(err).encode()], dtype=object)}


PARAMETERS = ("align", "resize", "latent_mask", "mix_alpha", "seed", "n_outputs", "paste", "mask", "edits")
MAX_OUTPUTS = 16  # n_outputs of one request: its images are held at once, beside its batch's


@dataclass(frozen=True, kw_only=True)
class PhotoLimits:
    """The largest photo the psp model takes: its encoded bytes, and its pixels, read from the file's
    header before anything is decoded (a decompression bomb never gets memory)."""

    max_bytes: int = 64 * 2**20
    max_pixels: int = 50_000_000  # a 48-megapixel phone photo passes


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
            edits=parse_edits(str(params.get("edits", ""))),
        )
    except ValueError as err:
        raise InputError(f"bad request parameter: {err}") from None


def parse_edits(text: str) -> tuple[Edit, ...]:
    """The `edits` request parameter, `run --edit`'s specs joined by commas: 'age:-3,smile:1.5'; '' for none."""
    return tuple(parse_edit(spec.strip()) for spec in text.split(",")) if text.strip() else ()


def paste_mask(params: dict[str, Any] | None) -> str | None:
    """The `paste` and `mask` request parameters: the mask to put the face back through, None for no paste."""
    params = params or {}
    try:
        paste = _flag(params.get("paste", False))
    except ValueError as err:
        raise InputError(f"bad request parameter paste: {err}") from None
    mask = str(params.get("mask", "face"))
    if mask not in MASKS:
        raise InputError(f"bad request parameter mask: one of {', '.join(MASKS)}, got {mask!r}")
    if "mask" in params and not paste:
        raise InputError("the mask parameter says how to paste: it goes with paste=true")
    return mask if paste else None


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


@dataclass(frozen=True)
class PhotoRequest:
    """A psp request made ready for the batch: its options, encoder input and aligned face; with paste, the
    decoded photo and the mask to put the face back through."""

    options: RunOptions
    x: np.ndarray
    face: AlignedFace | None
    photo: np.ndarray | None = None
    mask: str | None = None


class ServedModels:
    """Inference callables (lists of PyTriton requests in, one response each out)."""

    def __init__(self, pipeline: Pipeline, limits: PhotoLimits = PhotoLimits()) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config
        self.limits = limits

    def psp(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """Encoded photo (any format, any size) → aligned face, W+ codes, synthesized image."""
        prepared: dict[int, PhotoRequest] = {}
        errors: dict[int, Exception] = {}
        for i, request in enumerate(requests):
            try:
                prepared[i] = self._prepare_photo(request)
            except PspDeployError as err:
                errors[i] = err
        order = sorted(prepared)
        rows = [prepared[i].options for i in order]
        outputs = self.pipeline.generate(np.stack([prepared[i].x for i in order]), rows).outputs if order else []
        responses = {i: _failed(err) for i, err in errors.items()}
        for i, out in zip(order, outputs, strict=True):
            try:
                responses[i] = self._psp_response(prepared[i], out)
            except PspDeployError as err:
                responses[i] = _failed(err)
        return [_one(self._psp_placeholders(responses[i])) for i in range(len(requests))]

    def _prepare_photo(self, request: Any) -> PhotoRequest:
        options = request_options(request.parameters, self.config.n_styles)
        mask = paste_mask(request.parameters)
        if mask:
            check_paste(self.config, options.align)
        for name in options.directions:  # an unknown or changed direction fails this request alone
            self.pipeline.direction(name)
        photo = self._decode(bytes(request["photo"].reshape(-1)[0]))
        x, face = self.pipeline.prepare_face(photo, options.align)  # uint8 up: normalised on the device
        return PhotoRequest(options, x, face, photo if mask else None, mask)

    def _decode(self, data: bytes) -> np.ndarray:
        if len(data) > self.limits.max_bytes:
            raise ImageTooLargeError(
                f"request photo: {len(data):,} bytes is over the server's limit of {self.limits.max_bytes:,}"
            )
        mode = "RGB" if self.config.input_kind == "rgb" else "L"
        return decode_image(data, "request photo", mode, max_pixels=self.limits.max_pixels)

    def _psp_response(self, request: PhotoRequest, out: Output) -> dict[str, np.ndarray]:
        face = request.face
        notes = np.array(["\n".join(face.warnings if face is not None else ()).encode()], dtype=object)
        response = {
            "aligned": face.image if face is not None else None,
            "codes": out.mixed[0],
            "image": out.images[0],
            "images": out.images,  # every output (n_outputs), the first being ``image``
            "warnings": notes,  # the aligner's notes (AlignedFace.warnings), one a line; empty: none
            **ANSWERED,
        }
        if request.mask is not None and face is not None:  # every output put back into the photo
            response["pasted"] = np.stack(
                [paste_all(request.photo, [face], [img], mask=request.mask) for img in out.images]
            )
        return response

    def _psp_placeholders(self, response: dict[str, Any]) -> dict[str, np.ndarray]:
        """Every psp output, placeholders for those a request did not get (each response names all)."""
        placeholders = {
            "aligned": np.zeros((ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE, 3), np.uint8),
            "codes": np.zeros((self.config.n_styles, STYLE_DIM), np.float32),
            "image": np.zeros((1, 1, 3), np.uint8),
            "images": np.zeros((1, 1, 1, 3), np.uint8),
            "pasted": np.zeros((1, 1, 1, 3), np.uint8),
            "warnings": OK,
        }
        return {**placeholders, **{name: value for name, value in response.items() if value is not None}}

    def encode(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """Aligned 256² face (uint8 RGB) → W+ codes."""
        prepared, responses = {}, {}
        for i, request in enumerate(requests):
            try:
                prepared[i] = self.pipeline.prepare(request["face"][0], align=False)[0]
            except PspDeployError as err:
                responses[i] = {"codes": np.zeros((self.config.n_styles, STYLE_DIM), np.float32), **_failed(err)}
        if prepared:
            codes = self.pipeline.encode(np.stack(list(prepared.values())))
            responses.update({i: {"codes": c, **ANSWERED} for i, c in zip(prepared, codes, strict=True)})
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
                err = NonFiniteCodesError(f"codes hold {bad} NaN or infinite values; W+ codes must be finite")
                blank = {
                    "image": np.zeros((size, size, 3), np.uint8),
                    "image_256": np.zeros((pooled_size, pooled_size, 3), np.uint8),
                }
                responses[i] = {**blank, **_failed(err)}
            else:
                finite[i] = request["codes"]
        if finite:
            image, pooled = self.pipeline.synthesize(np.concatenate(list(finite.values())))
            for i, a, b in zip(finite, to_uint8(image), to_uint8(pooled), strict=True):
                responses[i] = {"image": a, "image_256": b, **ANSWERED}
        return [_one(responses[i]) for i in range(len(requests))]


def tensors(config: Any) -> dict[str, tuple[list, list]]:
    """Each model's (inputs, outputs) as (name, dtype, shape) triples, batch axis excluded."""
    n, size = config.n_styles, config.output_size
    answered = [("error", bytes, (1,)), ("reason", bytes, (1,))]
    face_channels = 3 if config.input_kind == "rgb" else 1
    return {
        "psp": (
            [("photo", bytes, (1,))],
            [
                ("aligned", np.uint8, (ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE, 3)),
                ("codes", np.float32, (n, STYLE_DIM)),
                ("image", np.uint8, (-1, -1, 3)),
                ("images", np.uint8, (-1, -1, -1, 3)),
                ("pasted", np.uint8, (-1, -1, -1, 3)),  # with paste: the photo with each output's face put back
                ("warnings", bytes, (1,)),
                *answered,
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
            [("codes", np.float32, (n, STYLE_DIM)), *answered],
        ),
        "psp_synthesize": (
            [("codes", np.float32, (n, STYLE_DIM))],
            [("image", np.uint8, (size, size, 3)), ("image_256", np.uint8, (POOLED_SIZE, POOLED_SIZE, 3)), *answered],
        ),
    }
