"""The deployed pipeline: photo → aligned face → W+ codes → (style mixing) → image. No torch."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..bundle import GRAPHS, Bundle
from ..config import ENCODER_INPUT_SIZE, STYLE_DIM, PspConfig
from ..errors import InputError, NoFaceError
from ..graph_io import IMAGE, IMAGE_256, W, Z
from .align import AlignedFace, FaceAligner, LocatedFace
from .backends import Backend, BackendOptions, backend_class, check_precision
from .chain import Chain, HostChain, run_batched
from .edits import Direction, Edit, Sweep, check_edits
from .paste import paste_all
from .preprocess import PIXEL_CHANNELS, face_pixels, preprocess

DEFAULT_MAX_BATCH = 8
MASK_PART = re.compile(r"(\d+)(?:\s*-\s*(\d+))?")  # an index, or a range LO-HI
MAX_SEED = 2**32 - 1  # the seeds of numpy's legacy generators, and of the official scripts


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What one row asks for: the options of `psp-deploy run` and of the served psp model.

    With ``latent_mask`` the masked styles come from mapping(z), z drawn from ``seed`` + k for
    output k (``seed`` None: unseeded), blended by ``mix_alpha`` (None: replaced). Then ``edits``
    ((direction name, strength), in order) move every output's codes; a ``sweep`` makes one output per
    strength of one more direction, after the edits (runtime/edits.py has the formulas)."""

    align: bool | None = None
    resize: bool = False
    latent_mask: tuple[int, ...] | None = None
    mix_alpha: float | None = None
    seed: int | None = None
    n_outputs: int = 1
    edits: tuple[Edit, ...] = ()
    sweep: Sweep | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "edits", check_edits(self.edits))  # frozen: normalised once, here
        if self.sweep is not None and self.n_outputs > 1:
            raise InputError("a sweep makes one output per step: it does not combine with --n-outputs above 1")
        if self.n_outputs < 1:
            raise InputError(f"n_outputs must be at least 1, got {self.n_outputs}")
        if self.latent_mask is None and (self.n_outputs > 1 or self.mix_alpha is not None):
            what = "--n-outputs above 1" if self.n_outputs > 1 else "--mix-alpha"
            raise InputError(f"{what} needs --latent-mask (each output mixes in another random style)")
        last = MAX_SEED - (self.n_outputs - 1)  # output k draws from seed + k
        if self.seed is not None and not (isinstance(self.seed, (int, np.integer)) and 0 <= self.seed <= last):
            raise InputError(f"seed must be an integer from 0 to {last} (output k uses seed + k), got {self.seed!r}")
        if self.mix_alpha is not None and not 0.0 <= self.mix_alpha <= 1.0:  # NaN included
            raise InputError(f"mix_alpha must be from 0 to 1, got {self.mix_alpha}")

    @property
    def n_images(self) -> int:
        """The images this row makes: one per step of its sweep, else ``n_outputs``."""
        return self.sweep.steps if self.sweep is not None else self.n_outputs

    @property
    def as_encoded(self) -> bool:
        """Whether the codes go to the synthesis as the encoder made them: no mixing, no edit, no sweep."""
        return self.latent_mask is None and not self.edits and self.sweep is None

    @property
    def directions(self) -> list[str]:
        """The directions this row's edits and sweep name, in order of use."""
        return [name for name, _ in self.edits] + ([self.sweep.name] if self.sweep else [])


@dataclass
class Output:
    """One row's result."""

    codes: NDArray[np.float32]  # [n_styles, 512] W+ codes as encoded (latent_avg included), before any mixing
    mixed: NDArray[np.float32]  # [n_outputs, n_styles, 512] the codes each output was synthesized from (mixed, edited)
    images: NDArray[np.uint8]  # [n_outputs, R, R, 3] (R = output size, or 256 with resize)


@dataclass
class Generated:
    outputs: list[Output]  # per row; their images are views into ``pixels``
    timings: dict[str, float]  # seconds per stage of the batch
    pixels: dict[str, NDArray[np.uint8]]  # per output name, every row's images in row order: uint8 [n, R, R, 3]


@dataclass
class Result:
    images: NDArray[np.uint8]  # [N, R, R, 3] (R = output size, or 256 with resize)
    codes: NDArray[np.float32]  # [N, n_styles, 512], as synthesized (after any mixing and edits)
    aligned: list[AlignedFace | None]  # per input; None when not aligned
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    pasted: list[NDArray[np.uint8]] | None = None  # per input, with ``paste``: the photo with its face put back


def parse_latent_mask(text: str, n_styles: int, what: str = "latent mask") -> list[int]:
    """'8-17' or '0,1,8-17' → sorted indices, each checked against n_styles (``what``: the option's name,
    for the errors; directions' layers are written so too).

    Strict: every comma-separated part is an index or a range LO-HI with LO ≤ HI, so a typo
    ('8-', '17-8', '8,,9') is an error naming the part rather than a different mask."""
    parts = [p.strip() for p in text.split(",")]
    if parts == [""]:
        raise InputError(f"{what} {text!r} is empty: name style indices such as '8-17' or '0,2,8-17'")
    indices: set[int] = set()
    for part in parts:
        match = MASK_PART.fullmatch(part)
        if not part:
            raise InputError(f"{what} {text!r} has an empty part (two commas, or a comma at an end)")
        if match is None:
            raise InputError(f"{what} {text!r}: {part!r} is not an index or a range LO-HI (e.g. '8-17' or '0,2,8-17')")
        lo, hi = int(match[1]), int(match[2] or match[1])
        if hi < lo:
            raise InputError(f"{what} {text!r}: the range {part!r} runs backwards; write {hi}-{lo}")
        indices.update(range(lo, hi + 1))
    return check_latent_mask(sorted(indices), n_styles, what)


def check_latent_mask(mask: Sequence[int], n_styles: int, what: str = "latent mask") -> list[int]:
    bad = [i for i in mask if not 0 <= int(i) < n_styles]
    if bad or not mask:
        raise InputError(f"{what} must name style indices in 0..{n_styles - 1}, got {list(mask)}")
    return [int(i) for i in mask]


def check_paste(config: PspConfig, align: bool | None, what: str = "paste") -> None:
    """Refuse what needs faces found in a photo (paste-back, every face) for a model that takes no photos,
    or without alignment: before any work, from the bundle's configuration alone."""
    if config.input_kind != "rgb":
        raise InputError(f"{what} needs faces in photos: this model's {config.input_kind} inputs are not photos")
    if align is False:
        raise InputError(f"{what} works on the faces alignment finds: it needs alignment (drop --no-align)")


def openable(bundle: Bundle, backend: str, precision: str) -> type[Backend]:
    """The class of ``backend`` once it is known, runs ``precision``, and the bundle has graphs for it;
    else the refusal, before any graph loads."""
    check_precision(backend, precision)
    bundle.resolve("encoder", precision, backend)  # refuses a precision no graph of the bundle has
    return backend_class(backend)


class Pipeline:
    """A bundle's three graphs on one backend, and the flow between them: photo → aligned face → W+ codes
    → (style mixing, then edits) → image. ``from_bundle`` opens one; ``run`` takes photos, ``generate``
    prepared faces with per-row options; ``encode``, ``mapping``, ``mix``, ``edit`` and ``synthesize`` are the
    stages on their own. Thread-safe; a context manager that releases the backends' sessions and device memory."""

    def __init__(
        self, bundle: Bundle, backends: dict[str, Backend], *, max_batch: int = DEFAULT_MAX_BATCH, face: str = "largest"
    ) -> None:
        self.bundle, self.config = bundle, bundle.config
        self.encoder, self.mapping_net, self.synthesis_net = (
            backends["encoder"],
            backends["mapping"],
            backends["synthesis"],
        )
        self.max_batch, self.face = max_batch, face
        self._aligner: FaceAligner | None = None
        self._aligner_lock = threading.Lock()
        self._directions: dict[str, Direction] = {}  # loaded (hash-checked) when first used
        self._directions_lock = threading.Lock()
        self.host = HostChain(self.encoder, self.synthesis_net, self.config, max_batch)  # the stages on their own
        self.chain: Chain = type(self.encoder).chain(self.encoder, self.synthesis_net, self.config, max_batch)

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        backend: str = "onnxruntime",
        precision: str = "fp32",
        *,
        options: BackendOptions | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        face: str = "largest",
    ) -> Pipeline:
        """Open a bundle with one backend, precision and options (device, threads, ...).

        Graphs calibrated at ``precision`` run at it; graphs the calibration left out (its
        --graphs) run in FP32, as ``precisions`` shows. A precision no graph has is an error."""
        bundle = Bundle.open(path)
        cls_ = openable(bundle, backend, precision)
        backends: dict[str, Backend] = {}
        try:
            for graph in GRAPHS:
                backends[graph] = cls_.from_bundle(bundle, graph, precision, options)
        except BaseException:
            for opened in backends.values():  # a later graph failed: release what the earlier ones hold
                opened.close()
            raise
        return cls(bundle, backends, max_batch=max_batch, face=face)

    def describe(self) -> dict[str, Any]:
        """What runs, to record beside results: backend, device and precision per graph, whether FP32 runs as
        TF32 anywhere, CUDA graphs per graph, how data moves between the graphs (resident on the device,
        page-locked host buffers), and each graph's settings as its library reports them."""
        return {
            "backend": self.encoder.name,
            "precisions": self.precisions,
            "device": self.encoder.device,
            "tf32": any(net.tf32 for net in self.nets.values()),
            "cuda_graph": {graph: net.captures for graph, net in self.nets.items()},
            **self.chain.describe(),
            "sessions": {graph: net.settings() for graph, net in self.nets.items()},
        }

    @property
    def nets(self) -> dict[str, Backend]:
        """The backend running each graph."""
        return dict(zip(GRAPHS, (self.encoder, self.mapping_net, self.synthesis_net), strict=True))

    @property
    def precisions(self) -> dict[str, str]:
        """The precision each graph runs at."""
        return {graph: net.precision for graph, net in self.nets.items()}

    @property
    def aligner(self) -> FaceAligner:
        with self._aligner_lock:
            if self._aligner is None:
                self._aligner = FaceAligner(face=self.face)
            return self._aligner

    def wants_alignment(self, align: bool | None) -> bool:
        """None means: align photos (RGB tasks), never sketches or label maps."""
        photo = self.config.input_kind == "rgb"
        if align and not photo:
            raise InputError(f"{self.config.input_kind} inputs cannot be face-aligned; pass align=False (--no-align)")
        return photo and align is not False

    def prepare(self, image: NDArray[Any], align: bool | None = None) -> tuple[NDArray[np.float32], AlignedFace | None]:
        """One input image → encoder tensor [C, 256, 256] (and the aligned face, if aligned)."""
        face = self.aligner.align(image) if self.wants_alignment(align) else None
        return preprocess(face.image if face else image, self.config), face

    def prepare_face(
        self, image: NDArray[Any], align: bool | None = None
    ) -> tuple[NDArray[np.uint8] | NDArray[np.float32], AlignedFace | None]:
        """One input image → what ``generate`` uploads: a photo's or sketch's face resized to uint8
        [256, 256, C], normalised later (on the device when resident); a label map's one-hot encoder
        tensor, as ``prepare``. And the aligned face, if aligned."""
        if self.config.input_kind not in PIXEL_CHANNELS:
            return self.prepare(image, align)
        face = self.aligner.align(image) if self.wants_alignment(align) else None
        return face_pixels(face.image if face else image, self.config.input_kind), face

    def prepare_faces(
        self, image: NDArray[Any], min_face: float = 0.0
    ) -> tuple[list[tuple[NDArray[np.uint8], AlignedFace]], list[LocatedFace]]:
        """Every face of a photo, left to right, as ``prepare_face`` gives one (uint8 face, aligned face); and the
        faces left out, whose crop is under ``min_face`` photo pixels across. No face kept is a NoFaceError."""
        check_paste(self.config, True, "every face")
        faces, skipped = self.aligner.align_all(image, min_face)
        if not faces:
            under = f" of at least {min_face:g} px ({len(skipped)} smaller)" if skipped else ""
            raise NoFaceError(f"no face{under} found in the photo")
        return [(face_pixels(face.image, self.config.input_kind), face) for face in faces], skipped

    def encode(self, x: NDArray[Any]) -> NDArray[np.float32]:
        """[N, C, 256, 256] float32 → W+ codes [N, n_styles, 512] (latent_avg included)."""
        return self.host.encode(np.asarray(x, np.float32))

    def mapping(self, z: NDArray[Any]) -> NDArray[np.float32]:
        """z [N, 512] → w [N, 512]."""
        run = lambda chunk: [self.mapping_net.infer({Z: chunk})[W]]  # noqa: E731
        return run_batched(run, np.asarray(z, np.float32).reshape(-1, STYLE_DIM), None, self.max_batch)[0]

    def synthesize(self, codes: NDArray[Any]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """W+ codes → (image [N, 3, R, R], image_256 [N, 3, 256, 256]), floats in about [−1, 1]."""
        return self.host.floats(codes)

    def style_latent(self, seed: int | None) -> NDArray[np.float32]:
        """w of a random z ~ N(0, 1) (seeded), repeated over the styles: [1, n_styles, 512]."""
        z = np.random.default_rng(seed).standard_normal((1, STYLE_DIM)).astype(np.float32)
        return np.repeat(self.mapping(z)[:, None, :], self.config.n_styles, axis=1)

    def mix(
        self, codes: NDArray[np.float32], latent_mask: Sequence[int], inject: NDArray[Any], alpha: float | None
    ) -> NDArray[np.float32]:
        """Official mixing: codes[:, i] = α·inject[:, i] + (1 − α)·codes[:, i] for i in the mask
        (α None: replace). ``inject`` is w [512], [N, 512] or W+ [N or 1, n_styles, 512]."""
        mask = check_latent_mask(latent_mask, self.config.n_styles)
        inject = np.asarray(inject, np.float32)
        if inject.ndim == 1:
            inject = inject[None]
        if inject.ndim == 2:
            inject = np.repeat(inject[:, None, :], self.config.n_styles, axis=1)
        if inject.shape[1:] != (self.config.n_styles, STYLE_DIM) or inject.shape[0] not in (1, len(codes)):
            raise InputError(
                f"inject must be w [512], [N, 512] or W+ [N, {self.config.n_styles}, 512]; got {list(inject.shape)}"
            )
        mixed = codes.copy()
        target = np.broadcast_to(inject, codes.shape)
        mixed[:, mask] = target[:, mask] if alpha is None else alpha * target[:, mask] + (1 - alpha) * codes[:, mask]
        return mixed

    def direction(self, name: str) -> Direction:
        """The bundle's direction ``name``, checked against its manifest record (sha256, shape, finite) when first
        used: a changed file is refused (BundleError), an unknown name is an InputError listing the bundle's."""
        with self._directions_lock:
            if name not in self._directions:
                self._directions[name] = Direction(name, *self.bundle.direction(name))
            return self._directions[name]

    def edit(self, codes: NDArray[Any], edits: Sequence[Edit]) -> NDArray[np.float32]:
        """W+ codes [N, n_styles, 512] moved by each (direction name, strength) in turn, each on the codes the
        one before left (runtime/edits.py has the formulas); a copy. No edits: the codes as they are."""
        out = np.asarray(codes, np.float32)
        for name, strength in check_edits(edits):
            out = self.direction(name).apply(out, strength)
        return out

    def generate(self, x: NDArray[Any], rows: Sequence[RunOptions], inject: NDArray[Any] | None = None) -> Generated:
        """Inputs and each row's options → each row's outputs: one encode, every row's style variants
        mixed then edited, ONE synthesis over all of them. ``x`` holds ``prepare_face`` faces (uint8
        [N, 256, 256, C]) or ``prepare`` tensors (float32 [N, C, 256, 256]). ``inject`` (w or W+) replaces the
        seeded styles of every masked row. On a device-resident chain (ONNX Runtime's) codes go from the encoder
        to the synthesis on the device, unless rows mix styles or edit (done on the host, a few kB up again).
        Every direction a row names is loaded and checked before the encoder runs."""
        x = self._checked(x)
        for row in rows:
            for name in row.directions:
                self.direction(name)
        wanted = {IMAGE_256 if row.resize else IMAGE for row in rows}
        names = [name for name in (IMAGE, IMAGE_256) if name in wanted]  # the pooled image only when asked
        timings: dict[str, float] = {}
        if all(row.as_encoded for row in rows):
            codes, pixels = self.chain.chained(x, names, timings)
            variants = [c[None] for c in codes]
        else:
            clock = time.perf_counter()
            codes = self.chain.encode(x)
            timings["encode"], clock = time.perf_counter() - clock, time.perf_counter()
            variants = self._variants(codes, rows, inject)
            timings["mix"], clock = time.perf_counter() - clock, time.perf_counter()
            pixels = self.chain.synthesize(np.concatenate(variants), names)
            timings["synthesize"] = time.perf_counter() - clock
        ends = np.cumsum([len(v) for v in variants])
        outputs = [
            Output(c, v, pixels[IMAGE_256 if row.resize else IMAGE][end - len(v) : end])
            for c, v, row, end in zip(codes, variants, rows, ends, strict=True)
        ]
        return Generated(outputs, timings, pixels)

    def _checked(self, x: NDArray[Any]) -> NDArray[Any]:
        """``generate``'s input, refused unless it is uint8 faces or encoder tensors the chain accepts."""
        x = np.asarray(x)
        if len(x) == 0:
            raise InputError("no inputs given")
        if x.dtype != np.uint8:
            return self.chain.check(x)
        face = (ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE, PIXEL_CHANNELS.get(self.config.input_kind))
        if x.ndim != 4 or x.shape[1:] != face or face[2] is None:
            what = f"uint8 faces {['N', *face]}" if face[2] else "float32 encoder tensors (label maps are one-hot)"
            raise InputError(f"{self.config.input_kind} pipeline: expected {what}, got uint8 {list(x.shape)}")
        return np.ascontiguousarray(x)

    def _variants(
        self, codes: NDArray[np.float32], rows: Sequence[RunOptions], inject: NDArray[Any] | None
    ) -> list[NDArray[np.float32]]:
        """Per row, the codes of each output [n_outputs (or sweep steps), n_styles, 512]: mixed, then edited.
        Output k of a row mixes in the style of seed + k, shared by every row asking for it (an unseeded call
        draws one seed)."""
        unseeded = int(np.random.default_rng().integers(2**31))
        styles: dict[int, NDArray[np.float32]] = {}
        per_row = inject is not None and np.ndim(inject) == 3 and len(inject) == len(codes) > 1
        variants = []
        for i, (row_codes, row) in enumerate(zip(codes, rows, strict=True)):
            if row.latent_mask is None:
                variants.append(self._edited(row_codes[None], row))
                continue
            mixed = []
            for k in range(row.n_outputs):
                if inject is not None:
                    style = inject[i : i + 1] if per_row else inject
                else:
                    seed = (unseeded if row.seed is None else row.seed) + k
                    if seed not in styles:
                        styles[seed] = self.style_latent(seed)
                    style = styles[seed]
                mixed.append(self.mix(row_codes[None], row.latent_mask, style, row.mix_alpha))
            variants.append(self._edited(np.concatenate(mixed), row))
        return variants

    def _edited(self, codes: NDArray[np.float32], row: RunOptions) -> NDArray[np.float32]:
        """A row's (mixed) codes after its edits, then one copy per step of its sweep."""
        codes = self.edit(codes, row.edits)
        if row.sweep is None:
            return codes
        along = self.direction(row.sweep.name)
        return np.concatenate([along.apply(codes, strength) for strength in row.sweep.strengths])

    def run(
        self,
        images: Sequence[NDArray[Any]] | NDArray[Any],
        *,
        align: bool | None = None,
        resize: bool = False,
        latent_mask: Sequence[int] | None = None,
        mix_alpha: float | None = None,
        seed: int | None = None,
        inject: NDArray[Any] | None = None,
        edits: Sequence[Edit] = (),
        paste: bool = False,
        mask: str = "face",
    ) -> Result:
        """Images (uint8 photos, sketches or label maps) → synthesized faces.

        ``align`` None aligns photos and never sketches or label maps. With ``latent_mask``
        the masked styles come from ``inject`` (w or W+ codes; map a z with ``mapping``) or,
        without it, from mapping(z) with z drawn from ``seed``. ``edits``, e.g. [("age", -3.0)], then move
        the codes along the bundle's directions (``RunOptions``). With ``paste`` each photo also comes
        back with its face replaced (``Result.pasted``; ``mask`` "face" or "square", runtime/paste.py).
        """
        if paste:
            self.check_paste(align)
        clock = time.perf_counter()
        if isinstance(images, np.ndarray) and images.ndim in (2, 3):
            images = [images]  # one image; a batch is a list or an [N, H, W, C] array
        if len(images) == 0:
            raise InputError("no images given")
        prepared = [self.prepare_face(image, align) for image in images]
        prepare_s = time.perf_counter() - clock
        styles = None if latent_mask is None else tuple(latent_mask)
        row = RunOptions(
            align=align, resize=resize, latent_mask=styles, mix_alpha=mix_alpha, seed=seed, edits=tuple(edits)
        )
        generated = self.generate(np.stack([x for x, _ in prepared]), [row] * len(prepared), inject)
        result = Result(
            generated.pixels[IMAGE_256 if resize else IMAGE],  # every row asked for it: no copy to gather them
            np.concatenate([o.mixed for o in generated.outputs]),
            [face for _, face in prepared],
            {"prepare": prepare_s, **generated.timings},
        )
        if paste:
            clock = time.perf_counter()
            faces = [face for face in result.aligned if face is not None]
            result.pasted = [
                paste_all(i, [f], [g], mask=mask) for i, f, g in zip(images, faces, result.images, strict=True)
            ]
            result.timings["paste"] = time.perf_counter() - clock
        return result

    def check_paste(self, align: bool | None) -> None:
        """Refuse paste-back where there is no photo to put a face back into, before any work."""
        check_paste(self.config, align)

    def close(self) -> None:
        self.chain = self.host  # the device-resident chain's buffers go with it
        for backend in self.nets.values():
            backend.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


__all__ = ["Generated", "Output", "Pipeline", "Result", "RunOptions", "parse_latent_mask"]
