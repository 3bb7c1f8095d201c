"""`make demo`: the main job end to end on a synthetic FFHQ-encode checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .bundle import reusable_bundle
from .errors import MissingDependencyError
from .runtime import Pipeline
from .runtime.io import write_image_atomic, write_npy_atomic

CHECKPOINT = "psp_ffhq_encode_synthetic.pt"


def _checkpoint(workdir: Path, output_size: int, console: Console) -> Path:
    from .models.synthetic import make_checkpoint

    path = workdir / f"{output_size}" / CHECKPOINT
    if not path.exists():
        with console.status(f"making a synthetic FFHQ-encode checkpoint ({output_size}², official format)"):
            make_checkpoint(path, output_size=output_size, seed=0)
    return path


def _bundle(checkpoint: Path, console: Console) -> Path:
    from .export import export_bundle

    out = checkpoint.parent / "bundle"
    if reusable_bundle(checkpoint, out) is not None:
        console.print(f"reusing bundle {out}")
        return out
    with console.status("exporting encoder, mapping and synthesis graphs (checked against torch)") as status:
        _, results = export_bundle(checkpoint, out, force=True, progress=lambda m: status.update(m))
    for r in results:
        console.print(f"  {r.graph:<9} batch {r.batch}: max |ONNX − torch| {r.worst:.1e}")
    return out


def run_demo(workdir: Path, output_size: int, console: Console) -> None:
    try:
        from skimage import data
    except ImportError as err:
        raise MissingDependencyError("the demo photo comes from scikit-image: pip install 'psp-deploy[dev]'") from err
    checkpoint = _checkpoint(workdir, output_size, console)
    bundle = _bundle(checkpoint, console)
    photo = data.astronaut()
    started = time.perf_counter()
    with Pipeline.from_bundle(bundle) as pipeline:
        load_time = time.perf_counter() - started
        pipeline.run(photo)  # warm-up: loads the face detector and lets ONNX Runtime settle
        result = pipeline.run(photo)
    out = workdir / f"{output_size}" / "output"
    write_image_atomic(out / "astronaut_input.png", photo)
    write_image_atomic(out / "astronaut_aligned.png", result.aligned[0].image)
    write_image_atomic(out / "astronaut_output.png", result.images[0])
    write_npy_atomic(out / "astronaut_codes.npy", result.codes[0])
    table = Table(title=f"psp-deploy demo ({output_size}² synthetic FFHQ-encode, ONNX Runtime CPU, batch 1)")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_row("load bundle (3 graphs)", f"{load_time:.2f}")
    for stage, seconds in result.timings.items():
        table.add_row("align + preprocess" if stage == "prepare" else stage, f"{seconds:.2f}")
    table.add_row("total per photo", f"{sum(result.timings.values()):.2f}", style="bold")
    console.print(table)
    console.print(
        f"outputs in {out}: aligned face, synthesized image ({result.images.shape[1]}²), W+ codes "
        f"{list(result.codes.shape[1:])}"
    )
