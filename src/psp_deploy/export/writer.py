"""checkpoint → bundle directory: export, clean, check, verify, write the manifest.

Everything is written to a staging directory beside the target and renamed into place
at the end, so an interrupted export leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from google.protobuf.message import EncodeError

from .. import __version__
from ..bundle import LATENT_AVG_FILE, Bundle, Manifest, ModelRecord, declared_sections, graph_metadata
from ..errors import ExportError, PspDeployError
from ..files import require_writable, sha256_file
from ..models.checkpoint import build_psp, read_checkpoint
from ..models.forms import using_forms
from ..models.modconv import MODCONV_FORMS, UPSAMPLE_FORMS
from ..models.psp import Psp
from .checks import check_graph, check_io
from .graphs import GraphSpec, graph_specs
from .parity import ParityResult, check_parity
from .to_onnx import export_graph

OPSETS = (18, 19, 20, 21)
Progress = Callable[[str], None]


class ExportOptionError(ExportError):
    """A refusal that says which option to change: its message names the Python parameter (``force=True``),
    ``cli`` the command's flag (``--force``), so that neither speaks the other's language."""

    def __init__(self, python: str, cli: str) -> None:
        super().__init__(python)
        self.cli = cli


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """How to export (see ``export_bundle``); checked when made, before any work."""

    batch: int = 1
    modconv: str = "grouped"
    upsample: str = "transpose"
    opset: int = 18
    verify: bool = True
    force: bool = False
    progress: Progress | None = None

    def __post_init__(self) -> None:
        if self.modconv not in MODCONV_FORMS:
            raise ExportError(f"modconv must be one of {', '.join(MODCONV_FORMS)}, got {self.modconv!r}")
        if self.upsample not in UPSAMPLE_FORMS:
            raise ExportError(f"upsample must be one of {', '.join(UPSAMPLE_FORMS)}, got {self.upsample!r}")
        if self.batch < 1:
            raise ExportError(f"batch must be at least 1, got {self.batch}")
        if self.batch != 1 and self.modconv == "scaled":
            why = "fixes the grouped form's batch; the scaled form takes any batch"
            raise ExportOptionError(f"batch {why}: leave batch out", f"--batch {why}: leave --batch out")
        if self.opset not in OPSETS:
            raise ExportError(f"opset must be one of {OPSETS}, got {self.opset}")

    @property
    def form(self) -> dict[str, Any]:
        """The manifest's modconv section this export writes."""
        return {"form": self.modconv, "batch": self.fixed_batch, "upsample": self.upsample}

    @property
    def fixed_batch(self) -> int | None:
        """The one batch a grouped synthesis graph serves; None for the dynamic-batch scaled form."""
        return self.batch if self.modconv == "grouped" else None

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)


def _occupied(out_dir: Path, what: str) -> ExportOptionError:
    return ExportOptionError(
        f"{out_dir} {what}; pass force=True to replace it", f"{out_dir} {what}; pass --force to replace it"
    )


def _check_writable(out_dir: Path) -> None:
    """A bundle is assembled beside ``out_dir`` and renamed into place: its parent and an existing ``out_dir``
    must both take writes, checked before any work (OutputError, naming the folder)."""
    require_writable(out_dir.parent)
    if out_dir.is_dir():
        require_writable(out_dir)


def _check_target(out_dir: Path, force: bool) -> None:
    """``out_dir`` must be missing or empty (or ``force``), and writable."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise _occupied(out_dir, "is not empty")
    _check_writable(out_dir)


def _differences(bundle: Bundle, checkpoint_sha256: str, options: ExportOptions) -> list[str]:
    """How the bundle's export differs from exporting the checkpoint with ``options`` here: [] for the same."""
    manifest, found = bundle.manifest, []
    if manifest.source.get("sha256") != checkpoint_sha256:
        found.append(f"from another checkpoint ({manifest.source.get('checkpoint')}, sha256 differs)")
    names = {"form": "modconv", "batch": "batch", "upsample": "upsample"}
    for key, name in names.items():
        theirs, ours = (form.get(key) for form in (manifest.modconv, options.form))
        if theirs != ours:
            found.append(f"{name} {'any' if theirs is None else theirs}, not {'any' if ours is None else ours}")
    opsets = {by_precision["fp32"].opset for by_precision in manifest.models.values() if "fp32" in by_precision}
    if opsets != {options.opset}:
        found.append(f"opset {', '.join(map(str, sorted(opsets)))}, not {options.opset}")
    made_by = manifest.producer.get("version")
    if made_by != __version__:
        found.append(f"made by psp-deploy {made_by}, this is {__version__}")
    return found


def _existing_export(checkpoint: Path, out_dir: Path, opts: ExportOptions) -> Bundle | None:
    """The bundle already in ``out_dir`` when it is this very export: the same checkpoint (sha256), forms and
    opset, made by this psp-deploy, its graphs intact. None for a missing or empty folder, or with ``force``.
    Anything else there is refused, saying what it is (replacing it takes ``force``)."""
    if opts.force or not out_dir.is_dir() or not any(out_dir.iterdir()):
        return None
    try:
        bundle = Bundle.open(out_dir)
    except PspDeployError:
        raise _occupied(out_dir, "is not empty and holds no bundle this psp-deploy reads") from None
    differences = _differences(bundle, sha256_file(checkpoint), opts)
    if differences:
        raise _occupied(out_dir, f"holds another export ({'; '.join(differences)})")
    try:
        for graph in bundle.manifest.models:
            bundle.model_path(graph)
        bundle.latent_avg()
    except PspDeployError as err:
        raise _occupied(out_dir, f"holds this export, damaged ({err})") from None
    return bundle


def check_target(checkpoint: str | Path, out_dir: str | Path, **options: Any) -> Bundle | None:
    """Everything ``export_bundle`` refuses before any work, in order: bad options, a missing checkpoint, a
    non-empty ``out_dir`` that is not this very export (unless ``force``), a folder that cannot be written.
    Returns the bundle already there when it is this export (kept as it is: nothing to do), else None."""
    opts, checkpoint, out_dir = ExportOptions(**options), Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        read_checkpoint(checkpoint)  # refuses a missing file or a folder, naming it, before reading anything
    existing = _existing_export(checkpoint, out_dir, opts)
    if existing is None:
        _check_target(out_dir, opts.force)
    return existing


def _prepare_target(out_dir: Path, force: bool) -> Path:
    _check_target(out_dir, force)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, out_dir: Path) -> None:
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def save_graph(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save one file, or the graph plus one external-data file when it would pass 2 GB."""
    try:
        path.write_bytes(model.SerializeToString())
        return [path]
    except (ValueError, EncodeError):  # protobuf refuses messages over 2 GB
        path.unlink(missing_ok=True)
    data = path.with_name(path.name + ".data")
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    return [path, data]


def write_graph(spec: GraphSpec, staging: Path, opset: int, metadata: dict[str, str]) -> ModelRecord:
    """Export, tag with the bundle's metadata, check (structure always, whatever --no-verify says), save."""
    model = export_graph(spec, opset)
    onnx.helper.set_model_props(model, metadata)
    check_io(model, spec.name, list(spec.inputs), list(spec.outputs))
    check_graph(model, spec.name)
    files = save_graph(model, staging / f"{spec.name}.onnx")
    return ModelRecord(
        file=files[0].name,
        sha256=sha256_file(files[0]),
        precision="fp32",
        opset=opset,
        inputs=list(spec.inputs),
        outputs=list(spec.outputs),
        external_data=files[1].name if len(files) > 1 else None,
        external_data_sha256=sha256_file(files[1]) if len(files) > 1 else None,
    )


def parity_batches(spec: GraphSpec) -> list[int]:
    """Batches the post-export check runs: the fixed one, else a small and an odd one."""
    if spec.batch is not None:
        return [spec.batch]
    return [1] if spec.name == "encoder" else [1, 3]


def export_net(net: Psp, out_dir: str | Path, *, source: dict, **options: Any) -> tuple[Bundle, list[ParityResult]]:
    """Export an in-memory network (``options``: ExportOptions's fields; see ``export_bundle``)."""
    return _export(net, Path(out_dir), source, ExportOptions(**options))


def _export(net: Psp, out_dir: Path, source: dict, options: ExportOptions) -> tuple[Bundle, list[ParityResult]]:
    staging = _prepare_target(out_dir, options.force)
    forms = using_forms(net, modconv=options.modconv, fir="depthwise", upsample=options.upsample)
    try:
        with forms:
            records, results, form = _write_graphs(net, staging, options)
        np.save(staging / LATENT_AVG_FILE, net.latent_avg.numpy().astype(np.float32))
        manifest = Manifest(
            config=net.config,
            source=source,
            modconv=form,
            models=records,
            latent_avg_sha256=sha256_file(staging / LATENT_AVG_FILE),
            producer={
                "name": "psp-deploy",
                "version": __version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
        )
        Bundle(staging, manifest).save_manifest()
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Bundle.open(out_dir), results


def _write_graphs(
    net: Psp, staging: Path, options: ExportOptions
) -> tuple[dict[str, dict[str, ModelRecord]], list[ParityResult], dict[str, Any]]:
    """Each graph exported in the forms ``net`` is set to, tagged, saved and (``verify``) checked against torch."""
    specs = graph_specs(net, options.fixed_batch)
    form = options.form
    metadata = graph_metadata(declared_sections(net.config, form))
    records, results = {}, []
    for spec in specs:
        options.say(f"exporting {spec.name}")
        records[spec.name] = {"fp32": write_graph(spec, staging, options.opset, metadata)}
        if options.verify:
            options.say(f"checking {spec.name} against torch")
            path = staging / records[spec.name]["fp32"].file
            results += [check_parity(spec, path, b) for b in parity_batches(spec)]
    return records, results, form


def export_bundle(checkpoint: str | Path, out_dir: str | Path, **options: Any) -> tuple[Bundle, list[ParityResult]]:
    """Export an official checkpoint to a bundle: encoder, mapping and synthesis graphs.

    ``options`` are ExportOptions's fields: ``modconv="grouped"`` (the default) runs each
    modulated conv as one grouped Conv with group = ``batch`` (a fixed-batch synthesis
    graph); ``"scaled"`` keeps weights static and the batch dynamic. ``upsample="phase"`` runs
    each upsampling conv as four convs on the low-resolution input instead of one ConvTranspose
    (see models.modconv; benchmarks/results say where it is faster). With ``verify`` (the
    default) every graph is checked against the torch reference; ``progress`` is told each step.

    A rerun is cheap: when ``out_dir`` already holds this very export (``check_target``: same
    checkpoint, forms, opset and psp-deploy, graphs intact) it is kept as it is, with whatever
    calibrate and build added, and returned with no parity results (nothing was exported). Any
    other non-empty ``out_dir`` is refused unless ``force=True``, which replaces it; a folder that
    cannot be written is refused (OutputError) before the checkpoint is read.
    """
    existing = check_target(checkpoint, out_dir, **options)
    if existing is not None:
        return existing, []
    opts, out_dir, checkpoint = ExportOptions(**options), Path(out_dir), Path(checkpoint)
    opts.say("loading checkpoint")
    net = build_psp(read_checkpoint(checkpoint))
    source = {"checkpoint": checkpoint.name, "sha256": sha256_file(checkpoint)}
    return _export(net, out_dir, source, opts)
