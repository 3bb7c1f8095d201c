"""The bundle: a directory with manifest.json, ONNX graphs, latent_avg.npy and engines.

The manifest is the contract between stages and with users in other languages
(docs/bundle.md). Torch-free: the runtime reads bundles through this module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .config import ENCODER_INPUT_SIZE, POOLED_SIZE, STYLE_DIM, PspConfig
from .errors import BundleError, InputError, PspDeployError
from .files import sha256_file, write_json

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LATENT_AVG_FILE = "latent_avg.npy"
GRAPHS = ("encoder", "mapping", "synthesis")
DIRECTIONS_DIR = "directions"  # BUNDLE/directions/NAME.npy
# Precisions a backend applies to the FP32 graphs at run time, rather than graphs of their own.
INFERENCE_PRECISIONS = ("bf16",)
BATCH = "batch"  # the symbolic dimension of dynamic-batch graphs


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: a dimension is an int, or "batch" when dynamic."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The shape of one row of the batch: only the batch dimension is ever dynamic."""
        return tuple(int(d) for d in self.shape[1:])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d.get("dtype", "float32"))


@dataclass
class ModelRecord:
    """One model file of the bundle at one precision."""

    file: str
    sha256: str
    precision: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. FP16 decisions, calibration
    external_data: str | None = None  # weights file beside graphs over 2 GB
    external_data_sha256: str | None = None

    @property
    def batch(self) -> int | None:
        """The fixed batch size, or None when the batch dimension is dynamic."""
        first = self.inputs[0].shape[0]
        return None if first == BATCH else int(first)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelRecord:
        return cls(
            file=d["file"],
            sha256=d["sha256"],
            precision=d["precision"],
            opset=int(d["opset"]),
            inputs=[TensorSpec.from_dict(t) for t in d["inputs"]],
            outputs=[TensorSpec.from_dict(t) for t in d["outputs"]],
            notes=d.get("notes", {}),
            external_data=d.get("external_data"),
            external_data_sha256=d.get("external_data_sha256"),
        )


@dataclass
class EngineRecord:
    """A compiled engine (TensorRT plan, OpenVINO cache, ORT optimized model) for one graph."""

    backend: str
    graph: str
    precision: str
    file: str
    sha256: str
    details: dict[str, Any] = field(default_factory=dict)  # versions, device, profiles

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineRecord:
        return cls(d["backend"], d["graph"], d["precision"], d["file"], d["sha256"], d.get("details", {}))

    def differences(self, machine: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """What this engine was built for that ``machine`` (its backend's key: versions, ISA, GPU,
        settings) is not: {key: (built for, here)}; empty when the engine fits."""
        return {k: (self.details.get(k), v) for k, v in machine.items() if self.details.get(k) != v}


@dataclass
class DirectionRecord:
    """A named edit in W+ (docs/bundle.md, "Directions"): its array file, the style layers it moves and how.

    ``kind`` decides the array's shape and the formula (runtime/edits.py): interfacegan and sefa [512],
    one vector added to each layer; offset [n_styles, 512], a row per layer; ganspace [2, 512], the
    component and the mean, with ``params`` std, target and component as the official e4e editor takes
    them. ``source`` says where it came from: the imported file (name, sha256) or the SeFa computation."""

    file: str
    sha256: str
    kind: str
    layers: list[int]
    shape: list[int]
    source: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DirectionRecord:
        return cls(
            d["file"],
            d["sha256"],
            d["kind"],
            [int(i) for i in d["layers"]],
            [int(n) for n in d["shape"]],
            d.get("source", {}),
            d.get("params", {}),
        )


DIRECTION_FORMULAS = {
    "interfacegan": "codes[:, l] += s * d for l in layers",
    "sefa": "codes[:, l] += s * d for l in layers",
    "offset": "codes[:, l] += s * D[l] for l in layers",
    "ganspace": "c = ((codes[:, 0] - mean) . u) / std; codes[:, l] += s * (target - c) * std * u for l in layers",
}


@dataclass(frozen=True)
class Resolved:
    """What runs graph G at precision P on backend B: the bundle's one answer (``Bundle.resolve``)."""

    graph: str
    precision: str  # what the graph runs at: P, or fp32 where calibration left the graph out
    record: ModelRecord  # the ONNX graph (at the graph's precision)
    engine: EngineRecord | None  # what `psp-deploy build` made for B at ``precision``, if anything


def preprocess_spec(config: PspConfig) -> dict[str, Any]:
    """How an image becomes the encoder input, stated so another language can redo it."""
    spec: dict[str, Any] = {
        "kind": config.input_kind,
        "size": ENCODER_INPUT_SIZE,
        "layout": "NCHW",
        "resize": "bilinear",
        "channels": config.input_nc,
    }
    if config.input_kind == "rgb":
        spec.update(channel_order="RGB", formula="x = (pixel / 255 - 0.5) / 0.5", mean=[0.5] * 3, std=[0.5] * 3)
    elif config.input_kind == "sketch":
        spec.update(
            formula="x = gray / 255 (no normalisation); gray = 0.299 R + 0.587 G + 0.114 B", mean=[0.0], std=[1.0]
        )
    else:
        spec.update(formula=f"x[c] = (label == c) for c in 0..{config.label_nc - 1} (one-hot)", classes=config.label_nc)
    return spec


POSTPROCESS = {
    "outputs": {"image": "full resolution", "image_256": f"{POOLED_SIZE}x{POOLED_SIZE} average-pooled"},
    "formula": "pixel = uint8(trunc(clip((x + 1) / 2, 0, 1) * 255))",
    "layout": "NCHW",
    "channel_order": "RGB",
}

# The manifest sections that say what the graphs compute. Export writes them, as JSON, into every
# graph's ONNX metadata_props (key METADATA_PREFIX + section): a graph declares what it was made for.
DECLARED_SECTIONS = ("config", "preprocess", "postprocess", "modconv")
METADATA_PREFIX = "psp_deploy."


def declared_sections(config: PspConfig, modconv: dict[str, Any]) -> dict[str, Any]:
    """The DECLARED_SECTIONS of a bundle of this model and modulated-conv form."""
    return {
        "config": {**config.to_dict(), "n_styles": config.n_styles, "input_kind": config.input_kind},
        "preprocess": preprocess_spec(config),
        "postprocess": POSTPROCESS,
        "modconv": modconv,
    }


def graph_metadata(sections: dict[str, Any]) -> dict[str, str]:
    """The ONNX metadata_props export writes into each graph."""
    return {METADATA_PREFIX + name: json.dumps(value, sort_keys=True) for name, value in sections.items()}


@dataclass(frozen=True)
class GraphDeclaration:
    """What a loaded model file says about itself, as the library that loaded it reports it.

    Shapes are lists of dimensions: an int, or anything else (None, a symbolic name) when dynamic.
    """

    file: str
    inputs: list[tuple[str, list[Any]]]
    outputs: list[tuple[str, list[Any]]]
    metadata: dict[str, str]


ABSENT = object()  # a field one side does not have


def _show(value: Any) -> str:
    return "absent" if value is ABSENT else json.dumps(value)


def _compare(path: str, stated: Any, declared: Any, file: str) -> None:
    """Refuse the first field where the manifest and the graph differ, naming it and both values."""
    if isinstance(stated, dict) and isinstance(declared, dict):
        for key in sorted(set(stated) | set(declared), key=str):
            _compare(f"{path}.{key}", stated.get(key, ABSENT), declared.get(key, ABSENT), file)
    elif stated != declared:
        raise BundleError(f"{MANIFEST}: {path} is {_show(stated)} but {file} declares {_show(declared)}")


def _io_shapes(tensors: list[tuple[str, list[Any]]]) -> dict[str, list[int | str]]:
    return {name: [d if isinstance(d, int) else BATCH for d in shape] for name, shape in tensors}


def _declared_metadata(declared: GraphDeclaration) -> dict[str, Any]:
    sections = {}
    for name in DECLARED_SECTIONS:
        text = declared.metadata.get(METADATA_PREFIX + name)
        if text is None:
            raise BundleError(
                f"{declared.file} declares no {METADATA_PREFIX}{name} metadata (exported by an older "
                "psp-deploy?); export the bundle again"
            )
        try:
            sections[name] = json.loads(text)
        except ValueError as err:
            raise BundleError(f"{declared.file}: unreadable {METADATA_PREFIX}{name} metadata: {err}") from err
    return sections


@dataclass
class Manifest:
    """manifest.json as data: the checkpoint's configuration and source (file name, sha256), the
    modulated-conv forms, each graph's record per precision, and the engines `build` made. ``to_dict`` /
    ``from_dict`` are the JSON form docs/bundle.md specifies."""

    config: PspConfig
    source: dict[str, Any]
    modconv: dict[str, Any]
    models: dict[str, dict[str, ModelRecord]]
    producer: dict[str, Any] = field(default_factory=dict)
    engines: list[EngineRecord] = field(default_factory=list)
    latent_avg_sha256: str | None = None
    directions: dict[str, DirectionRecord] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    stated: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # DECLARED_SECTIONS, as read

    def sections(self) -> dict[str, Any]:
        """The DECLARED_SECTIONS as the manifest states them: as read (never re-derived, so an edited
        field shows), or as this manifest would write them."""
        return self.stated or declared_sections(self.config, self.modconv)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "producer": self.producer,
            "source": self.source,
            **declared_sections(self.config, self.modconv),
            "latent_avg": {
                "file": LATENT_AVG_FILE,
                "shape": [self.config.n_styles, STYLE_DIM],
                "dtype": "float32",
                "sha256": self.latent_avg_sha256,
            },
            "models": {g: {p: _record_dict(r) for p, r in by_p.items()} for g, by_p in self.models.items()},
            "engines": [asdict(e) for e in self.engines],
            "directions": {
                name: {**asdict(d), "formula": DIRECTION_FORMULAS.get(d.kind)} for name, d in self.directions.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema_version {version!r} is not supported (this psp-deploy reads {SCHEMA_VERSION})"
            )
        try:
            return cls(
                config=PspConfig.from_dict(d["config"]),
                source=d["source"],
                modconv=d["modconv"],
                models={g: {p: ModelRecord.from_dict(r) for p, r in by_p.items()} for g, by_p in d["models"].items()},
                producer=d.get("producer", {}),
                engines=[EngineRecord.from_dict(e) for e in d.get("engines", [])],
                latent_avg_sha256=d.get("latent_avg", {}).get("sha256"),
                directions={name: DirectionRecord.from_dict(r) for name, r in d.get("directions", {}).items()},
                stated={name: d.get(name, ABSENT) for name in DECLARED_SECTIONS},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"manifest is malformed: {type(err).__name__} {err}") from err


def _record_dict(record: ModelRecord) -> dict[str, Any]:
    d = asdict(record)
    for key in ("inputs", "outputs"):
        d[key] = [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in getattr(record, key)]
    return d


class Bundle:
    """A bundle directory, read and checked: files present, hashes and shapes as recorded."""

    def __init__(self, root: str | Path, manifest: Manifest) -> None:
        self.root = Path(root)
        self.manifest = manifest

    @classmethod
    def open(cls, root: str | Path) -> Bundle:
        """The bundle in folder ``root`` with its manifest parsed; a missing folder or manifest, or an unreadable
        or unknown-schema manifest, is a BundleError naming it. Files are hash-checked when first used."""
        root = Path(root)
        path = root / MANIFEST
        if not root.exists():
            raise BundleError(f"{root}: no such bundle folder; make one with `psp-deploy export`")
        if not path.is_file():
            raise BundleError(f"{root}: not a bundle (no {MANIFEST}); make one with `psp-deploy export`")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise BundleError(f"{path}: unreadable manifest: {err}") from err
        return cls(root, Manifest.from_dict(data))

    @property
    def config(self) -> PspConfig:
        return self.manifest.config

    def record(self, graph: str, precision: str = "fp32") -> ModelRecord:
        """The manifest's record of ``graph`` stored at ``precision`` (file, I/O, sha256); a graph or precision
        the bundle lacks is a BundleError listing what it has and how to make the rest."""
        by_precision = self.manifest.models.get(graph)
        if not by_precision:
            raise BundleError(f"{self.root}: the bundle has no {graph} graph")
        if precision not in by_precision:
            have = ", ".join(sorted(by_precision))
            hint = " (make it with `psp-deploy calibrate`)" if precision in ("fp16", "int8") else ""
            raise BundleError(f"{self.root}: no {precision} {graph} graph; available: {have}{hint}")
        return by_precision[precision]

    def resolve(self, graph: str, precision: str, backend: str) -> Resolved:
        """Which graph file (and engine) runs ``graph`` at ``precision`` on ``backend``: the one rule
        that build, the runtimes, calibration and the benchmarks share. A graph calibration left
        out (its --graphs) runs in FP32; bf16 runs the FP32 graphs. A precision no graph of the bundle
        has is refused, saying how to make it."""
        stored = self.manifest.models.get(graph, {})
        made = any(precision in by_precision for by_precision in self.manifest.models.values())
        if precision not in INFERENCE_PRECISIONS and not made:
            self.record(graph, precision)  # raises, saying how to make graphs at that precision
        if precision in INFERENCE_PRECISIONS:
            graph_precision, run_precision = "fp32", precision
        else:
            graph_precision = run_precision = precision if precision in stored else "fp32"
        record = self.record(graph, graph_precision)
        engine = next(
            (e for e in self.manifest.engines if (e.backend, e.graph, e.precision) == (backend, graph, run_precision)),
            None,
        )
        return Resolved(graph, run_precision, record, engine)

    def verified_path(self, file: str, sha256: str) -> Path:
        """The path of a bundle file after checking it exists and has the recorded hash."""
        path = self.root / file
        if not path.is_file():
            raise BundleError(f"{self.root}: {file} is listed in the manifest but missing")
        if sha256_file(path) != sha256:
            raise BundleError(f"{path}: contents do not match the manifest's sha256 (edited or corrupt file)")
        return path

    def model_path(self, graph: str, precision: str = "fp32") -> Path:
        """The path of ``graph``'s file at ``precision`` once it (and its external data) exists and has the
        recorded sha256; a BundleError otherwise."""
        record = self.record(graph, precision)
        if record.external_data:
            self.verified_path(record.external_data, record.external_data_sha256 or "")
        return self.verified_path(record.file, record.sha256)

    def check_declared(self, graph: str, precision: str, declared: GraphDeclaration) -> None:
        """Refuse a manifest whose fields disagree with what the loaded graph declares: its I/O names and
        shapes, and the sections export wrote into its metadata. Backends feed what their library reports."""
        record = self.record(graph, precision)
        metadata = _declared_metadata(declared)
        sections = self.manifest.sections()
        for name in DECLARED_SECTIONS:
            _compare(name, sections[name], metadata[name], declared.file)
        where = f"models.{graph}.{precision}"
        for io in ("inputs", "outputs"):
            stated = {t.name: list(t.shape) for t in getattr(record, io)}
            _compare(f"{where}.{io}", stated, _io_shapes(getattr(declared, io)), declared.file)

    def latent_avg(self) -> NDArray[np.float32]:
        """The average face's codes, hash-checked like every file of the bundle."""
        path = self.verified_path(LATENT_AVG_FILE, self.manifest.latent_avg_sha256 or "(none recorded)")
        try:
            value: NDArray[np.float32] = np.load(path, allow_pickle=False)  # its dtype is checked below
        except (OSError, ValueError) as err:
            raise BundleError(f"{path}: unreadable latent_avg: {err}") from err
        expected = (self.config.n_styles, STYLE_DIM)
        if value.shape != expected or value.dtype != np.float32:
            raise BundleError(
                f"{path}: latent_avg is {value.dtype}{list(value.shape)}, expected float32{list(expected)}"
            )
        return value

    def direction(self, name: str) -> tuple[DirectionRecord, NDArray[np.float32]]:
        """The direction ``name``: its record and its array, hash-checked like every file of the bundle and
        checked against the record (float32, the shape its kind has, finite). A name the bundle lacks is an
        InputError listing the ones it has."""
        record = self.manifest.directions.get(name)
        if record is None:
            have = ", ".join(sorted(self.manifest.directions)) or "none"
            raise InputError(
                f"{self.root}: no direction {name!r} (this bundle has: {have}); add one with "
                "`psp-deploy directions add` or `psp-deploy directions sefa`"
            )
        path = self.verified_path(record.file, record.sha256)
        try:
            values: NDArray[np.float32] = np.load(path, allow_pickle=False)  # its dtype is checked below
        except (OSError, ValueError) as err:
            raise BundleError(f"{path}: unreadable direction: {err}") from err
        expected = direction_shape(record.kind, self.config.n_styles)
        bad_layers = [i for i in record.layers if not 0 <= i < self.config.n_styles]
        if values.dtype != np.float32 or list(values.shape) != expected or record.shape != expected or bad_layers:
            raise BundleError(
                f"{path}: direction {name!r} ({record.kind}, layers {record.layers}) is {values.dtype}"
                f"{list(values.shape)}, recorded as {record.shape}; expected float32{expected} on layers of "
                f"0..{self.config.n_styles - 1}"
            )
        if not np.isfinite(values).all():
            raise BundleError(f"{path}: direction {name!r} holds NaN or infinite values")
        return record, values

    def save_manifest(self) -> None:
        write_json(self.root / MANIFEST, self.manifest.to_dict())


def direction_shape(kind: str, n_styles: int) -> list[int]:
    """The array shape of a direction of ``kind`` (DirectionRecord) for a model of ``n_styles`` styles."""
    shapes = {
        "interfacegan": [STYLE_DIM],
        "sefa": [STYLE_DIM],
        "offset": [n_styles, STYLE_DIM],
        "ganspace": [2, STYLE_DIM],
    }
    if kind not in shapes:
        raise BundleError(f"unknown direction kind {kind!r}; known: {', '.join(shapes)}")
    return shapes[kind]


def reusable_bundle(checkpoint: str | Path, out: str | Path) -> Bundle | None:
    """The bundle at ``out`` if it opens and was exported from ``checkpoint`` (same sha256), else None:
    what the demo and the benchmarks reuse instead of exporting again."""
    try:
        bundle = Bundle.open(out)
    except PspDeployError:
        return None
    current = bundle.manifest.latent_avg_sha256 is not None  # older exports lack it (and graph metadata)
    return bundle if current and bundle.manifest.source.get("sha256") == sha256_file(checkpoint) else None
