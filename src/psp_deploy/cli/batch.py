"""The batch commands: align, run, infer and synthesize, over files, folders and globs.

Each refuses bad arguments and an unusable output folder (exit 2) before it loads a model or
writes a file, then hands its inputs to runtime.batch.BatchRunner behind a progress bar and ends
with one summary line: counts, elapsed time and rate."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.markup import escape

from ..bundle import Bundle
from ..config import STYLE_DIM
from ..errors import InputError, PspDeployError
from ..runtime.batch import FAILURES_FILE, Item, Summary, check_before_work, collect_inputs
from .common import (
    AlignOpt,
    BackendOpt,
    BundleArg,
    CacheDirOpt,
    DeviceOpt,
    EnginesOpt,
    FaceChoice,
    FaceOpt,
    FacePolicy,
    ForceBf16Opt,
    InputsArg,
    LatentMaskOpt,
    Mask,
    MaskOpt,
    MixAlphaOpt,
    OutputDir,
    OverwriteOpt,
    PrecisionOpt,
    ResizeOpt,
    SaveLatentsOpt,
    SeedOpt,
    Tf32Opt,
    ThreadsOpt,
    app,
    console,
    handled,
    say,
)
from .edits import EditOpt, GifOpt, StripOpt, SweepOpt, check_directions, edit_settings, sweep_files, write_sweep

if TYPE_CHECKING:
    from ..runtime import Output, Pipeline
    from ..runtime.align import AlignedFace

NOutputsOpt = Annotated[
    int,
    typer.Option(
        min=1, help="Mixed outputs per input, each with its own random style: NAME_0.png … (needs --latent-mask)."
    ),
]
BatchSizeOpt = Annotated[int | None, typer.Option(min=1, help="Images per batch (default: the bundle's, else 4).")]
SaveAlignedOpt = Annotated[
    bool, typer.Option(help="Also write each input's aligned face (the crop the encoder saw) as NAME.aligned.png.")
]
ALIGNED = ".aligned"  # NAME.aligned.png: the aligned crop beside the result
RunFaceOpt = Annotated[
    FaceChoice,
    typer.Option(
        "--face",
        help="Which face of a photo: every face (all: NAME.face1.png …, or one photo with --paste), or one: the "
        "largest box, the best detector score, the last detection (the official script).",
    ),
]
MinFaceOpt = Annotated[
    float, typer.Option(min=0, help="With --face all: leave out faces whose crop is smaller (photo pixels across).")
]
PasteOpt = Annotated[
    bool,
    typer.Option(
        help="Write the input photo with each processed face put back where it was (at the photo's resolution, "
        "blended through --mask; outside it the photo is untouched) instead of the aligned square."
    ),
]
NO_ALIGNMENT = "--save-aligned writes the aligned face, so it needs alignment: drop --no-align"


def run_batch(items: list[Item], title: str, **runner: Any) -> Summary:
    """A BatchRunner over ``items`` behind a progress bar; then the summary, and exit with its code."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..runtime.batch import BatchRunner

    batch = BatchRunner(**runner)
    batch.check(items)  # a refusal prints alone, not under a progress bar
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    times = (TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(SpinnerColumn(), *columns, *times, console=console) as bar:
        task = bar.add_task(title, total=len(items))
        batch.on_advance = lambda n: bar.advance(task, n)
        return batch.run(items)


def report(summary: Summary, out_dir: Path, unit: str = "images") -> None:
    """One summary line (counts, then how long the run took and its rate); failures listed (first
    few) with the file holding them all."""
    stopped = f" — [yellow]stopped early ({signal.Signals(summary.stopped_by).name})[/]" if summary.interrupted else ""
    console.print(
        f"[green]{len(summary.done)} done[/], {len(summary.skipped)} skipped (already there), "
        f"[{'red' if summary.failed else 'green'}]{len(summary.failed)} failed[/]{stopped} — "
        f"{escape(pace(summary, unit))}",
        highlight=False,
    )
    for item, (error, message) in summary.failed[:10]:
        message = message.removeprefix(f"{item.source}: ")  # most messages name the file already
        say(f"  ✗ {item.source}: {error}: {message}", "red")
    if summary.failed:
        say(f"  all failures: {out_dir / FAILURES_FILE}")


def pace(summary: Summary, unit: str) -> str:
    """'12.3 s, 0.16 images/s (6.1 s each)': the run's elapsed time and the rate of the inputs it did."""
    text = duration(summary.elapsed)
    if summary.rate is not None:
        text += f", {summary.rate:.3g} {unit}/s"
        if summary.rate < 1:
            text += f" ({1 / summary.rate:.3g} s each)"
    return text


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def print_notes(item: Item, notes: Any) -> None:
    """What the aligner noted about this input (several faces, a small face), one line each: printed
    through the console, they land above the progress bar."""
    for note in notes:
        say(f"  ! {item.source}: {note}", "yellow")


@app.command()
def align(
    inputs: Annotated[list[str], typer.Argument(help="Photos, folders (searched recursively) or glob patterns.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the aligned 256×256 PNGs.")],
    size: Annotated[int, typer.Option(min=16, max=4096, help="Output side in pixels.")] = 256,
    face: FaceOpt = FacePolicy.largest,
    overwrite: OverwriteOpt = False,
) -> None:
    """Align faces the FFHQ way (dlib landmarks → oriented crop), as pSp models expect.

    Writes OUTPUT/NAME.png per photo, keeping sub-folders. Photos with no face and
    unreadable files are listed in OUTPUT/failures.json; exit code 1 if any failed.
    """
    from ..runtime.align import FaceAligner
    from ..runtime.io import read_image, write_image_atomic

    with handled():
        items = collect_inputs(inputs, output)
        outputs = lambda item: [item.output(output, ".png")]  # noqa: E731
        check_before_work(items, output, outputs)  # before the detector loads
        aligner = FaceAligner(output_size=size, face=face.value)

        def prepare(item: Item) -> np.ndarray:
            aligned = aligner.align(read_image(item.source))
            print_notes(item, aligned.warnings)
            return aligned.image

        summary = run_batch(
            items,
            "aligning",
            out_dir=output,
            outputs=outputs,
            prepare=prepare,
            compute=lambda images: images,
            write=lambda item, image: write_image_atomic(item.output(output, ".png"), image),
            overwrite=overwrite,
            settings={"command": "align", "size": size, "face": face.value},
        )
    report(summary, output)
    raise typer.Exit(summary.exit_code)


def open_pipeline(bundle: Path, backend: str, precision: str, options: Any, face: str = "largest") -> Pipeline:
    """The Pipeline on the backend ``auto`` resolves to, saying what was chosen."""
    from ..runtime import Pipeline
    from ..runtime.backends import resolve_backend

    chosen = resolve_backend(backend, options.device, precision)
    if chosen != backend:
        say(f"backend: {chosen}")
    pipeline = Pipeline.from_bundle(bundle, chosen, precision, options=options, face=face)
    if set(pipeline.precisions.values()) != {precision}:
        say(f"precision per graph: {pipeline.precisions}")
    return pipeline


@app.command()
def run(
    bundle: BundleArg,
    inputs: InputsArg,
    output: OutputDir,
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "cpu",
    tf32: Tf32Opt = False,
    force_bf16: ForceBf16Opt = False,
    threads: ThreadsOpt = None,
    align: AlignOpt = None,
    resize: ResizeOpt = False,
    latent_mask: LatentMaskOpt = None,
    mix_alpha: MixAlphaOpt = None,
    n_outputs: NOutputsOpt = 1,
    seed: SeedOpt = 0,
    save_latents: SaveLatentsOpt = False,
    save_aligned: SaveAlignedOpt = False,
    batch_size: BatchSizeOpt = None,
    face: RunFaceOpt = FaceChoice.largest,
    min_face: MinFaceOpt = 0.0,
    paste: PasteOpt = False,
    mask: MaskOpt = Mask.face,
    edit: EditOpt = None,
    sweep: SweepOpt = None,
    strip: StripOpt = False,
    gif: GifOpt = False,
    engines: EnginesOpt = True,
    overwrite: OverwriteOpt = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Run the pipeline on photos: align → encode → (style mixing) → (edits) → synthesize (→ paste back).

    Writes OUTPUT/NAME.png, NAME being the input's whole name minus its extension (--n-outputs K or a sweep of
    K steps: NAME_0.png … NAME_K-1.png), keeping sub-folders; --save-latents adds NAME.npy (the encoded codes),
    --save-aligned NAME.aligned.png, --strip and --gif NAME.strip.png and NAME.gif. --paste makes NAME.png the
    photo with its face put back; --face all runs every face of a photo (NAME.face1.png, NAME.face2.png …, or
    all pasted into one photo). Reruns
    skip finished inputs, and refuse (unless --overwrite) other settings than the folder's
    (OUTPUT/psp-deploy.json); Ctrl-C or SIGTERM stop after the current batch. Failures go to
    OUTPUT/failures.json; exit code 1 if any.

    Example: psp-deploy run bundles/toonify photos/ -o out --face all --paste
    Example: psp-deploy run bundles/e4e photos/ -o aged --sweep age:-3:3:7 --gif
    """
    from ..runtime import RunOptions, Sweep, parse_latent_mask
    from ..runtime.backends import BackendOptions
    from ..runtime.edits import parse_edit
    from ..runtime.io import read_image
    from ..runtime.pipeline import check_paste

    with handled():
        opened = Bundle.open(bundle)  # the manifest (and directions) alone: bad arguments fail before loading
        config = opened.config
        styles = None if latent_mask is None else tuple(parse_latent_mask(latent_mask, config.n_styles))
        row = RunOptions(
            align=align,
            resize=resize,
            latent_mask=styles,
            mix_alpha=mix_alpha,
            seed=seed,
            n_outputs=n_outputs,
            edits=tuple(parse_edit(spec) for spec in edit or ()),
            sweep=Sweep.parse(sweep) if sweep is not None else None,
        )
        sweeps = sweep_files(row, strip, gif)
        check_directions(opened, row)
        if save_aligned and (align is False or config.input_kind != "rgb"):
            never = f"--save-aligned: {config.input_kind} inputs are never aligned"
            raise InputError(NO_ALIGNMENT if align is False else never)
        every = face == FaceChoice.all
        if paste or every:
            check_paste(config, align, "--paste" if paste else "--face all")
        if min_face and not every:
            raise InputError("--min-face chooses among every face of a photo: it goes with --face all")
        items = collect_inputs(inputs, output)
        layout = RunLayout(output, row.n_images, save_latents, save_aligned, every, paste, sweeps)
        check_before_work(items, output, layout.done)
        options = BackendOptions(
            device=device.value, threads=threads, engines=engines, force_bf16=force_bf16, cache_dir=cache_dir, tf32=tf32
        )
        policy = FacePolicy.largest.value if every else face.value
        pipeline = open_pipeline(bundle, backend.value, precision.value, options, policy)
        read_mode = "RGB" if pipeline.config.input_kind == "rgb" else "L"

        def prepare(item: Item) -> Photo:
            image = read_image(item.source, read_mode)
            if every:
                faces, skipped = pipeline.prepare_faces(image, min_face)
                if skipped:
                    print_notes(item, [f"{len(skipped)} face(s) under --min-face {min_face:g} px left as they were"])
            else:
                faces = [pipeline.prepare_face(image, align)]
            for _, aligned in faces:
                print_notes(item, aligned.warnings if aligned else ())
            return Photo(image if paste else None, faces)

        def compute(photos: list[Photo]) -> list[tuple[Photo, list[Output]]]:
            x = np.stack([x for photo in photos for x, _ in photo.faces])
            outs = iter(pipeline.generate(x, [row] * len(x)).outputs)
            return [(photo, [next(outs) for _ in photo.faces]) for photo in photos]

        summary = run_batch(
            items,
            "running",
            out_dir=output,
            outputs=layout.done,
            prepare=prepare,
            compute=compute,
            write=lambda item, result: layout.write(item, *result, mask.value),
            overwrite=overwrite,
            batch_size=batch_size or pipeline.synthesis_net.record.batch or 4,
            settings={
                **run_settings(pipeline, row, face.value, save_latents),
                "min_face": min_face,
                "paste": mask.value if paste else None,
                **edit_settings(opened, row),
            },
        )
    report(summary, output)
    raise typer.Exit(summary.exit_code)


@dataclass
class Photo:
    """An input as `run` prepared it: its faces (what ``generate`` takes, and the aligned face), and the photo
    itself when the faces go back into it."""

    image: np.ndarray | None
    faces: list[tuple[np.ndarray, AlignedFace | None]]


@dataclass(frozen=True)
class RunLayout:
    """Where `run` writes an input's outputs. One face: NAME{tag}.png, NAME.npy, NAME.aligned.png. --face all:
    each face's files carry .faceN, and face 1's are written last, so that they mark the input done (a rerun
    skips it only when every face was written). --paste: NAME{tag}.png is the photo with every face put back,
    written after each face's other files. ``sweeps``: the suffixes of what shows all the outputs at once
    (.strip.png, .gif), per face beside its images, or per photo with --paste."""

    out_dir: Path
    n_outputs: int
    save_latents: bool
    save_aligned: bool
    every: bool
    paste: bool
    sweeps: tuple[str, ...] = ()

    @property
    def tags(self) -> list[str]:
        return [f"_{k}" for k in range(self.n_outputs)] if self.n_outputs > 1 else [""]

    def done(self, item: Item) -> list[Path]:
        """The files whose presence means the input is finished (all of them, for one face)."""
        photos = self.image_files(item, "") if self.paste else []
        return self.face_files(item, 0) + photos

    def image_files(self, item: Item, label: str) -> list[Path]:
        """An image per output, then what shows them all at once (--strip, --gif)."""
        images = [item.output(self.out_dir, ".png", label + tag) for tag in self.tags]
        return images + [item.output(self.out_dir, suffix, label) for suffix in self.sweeps]

    def face_files(self, item: Item, index: int) -> list[Path]:
        label = f".face{index + 1}" if self.every else ""
        found = [] if self.paste else self.image_files(item, label)
        if self.save_latents:
            found.append(item.output(self.out_dir, ".npy", label))
        if self.save_aligned:
            found.append(item.output(self.out_dir, ".png", label + ALIGNED))
        return found

    def write(self, item: Item, photo: Photo, outs: list[Output], mask: str) -> None:
        from ..runtime.io import write_image_atomic, write_npy_atomic
        from ..runtime.paste import paste_all

        for index in reversed(range(len(outs))):  # face 1 last: its files mark the input done
            out, (_, aligned) = outs[index], photo.faces[index]
            files = iter(self.face_files(item, index))
            if not self.paste:
                self.write_images(files, list(out.images))
            if self.save_latents:
                write_npy_atomic(next(files), out.codes)
            if self.save_aligned and aligned is not None:
                write_image_atomic(next(files), aligned.image)
        if self.paste and photo.image is not None:
            faces = [aligned for _, aligned in photo.faces if aligned is not None]
            outputs = [[out.images[k] for out in outs] for k in range(self.n_outputs)]
            pasted = [paste_all(photo.image, faces, images, mask=mask) for images in outputs]
            self.write_images(iter(self.image_files(item, "")), pasted)

    def write_images(self, files: Iterator[Path], images: list[np.ndarray]) -> None:
        """Each output's image into the next of ``files``, then the strip and GIF of them all."""
        from ..runtime.io import write_image_atomic

        for image in images:
            write_image_atomic(next(files), image)
        for _ in self.sweeps:
            write_sweep(next(files), images)


def graph_settings(pipeline: Pipeline, graphs: Any = None) -> dict[str, str]:
    """Each graph that makes the outputs, by precision and hash: another graph makes other outputs."""
    nets = pipeline.nets
    return {graph: f"{nets[graph].precision} {nets[graph].record.sha256[:16]}" for graph in graphs or nets}


def run_settings(pipeline: Pipeline, row: Any, face: str, save_latents: bool) -> dict[str, Any]:
    """What decides a run's outputs (psp-deploy.json): the graphs that ran and the row's options.
    The backend and threads are left out: they move numbers within tolerance, not what an output is;
    so is --save-aligned, which adds a file but changes none (a rerun asking for it makes what is missing)."""
    graphs = graph_settings(pipeline)
    mixing = row.latent_mask is not None
    return {
        "command": "run",
        "graphs": graphs,
        "align": row.align,
        "face": face,
        "resize": row.resize,
        "latent_mask": list(row.latent_mask) if mixing else None,
        "mix_alpha": row.mix_alpha,
        "n_outputs": row.n_outputs,
        "seed": row.seed if mixing else None,
        "save_latents": save_latents,
    }


@app.command()
def infer(
    inputs: Annotated[list[str], typer.Argument(help="Photos, folders or glob patterns.")],
    output: OutputDir,
    url: Annotated[
        list[str],
        typer.Option(
            help="Server URL: http://HOST:8000 or grpc://HOST:8001. Repeat it for several servers: requests are "
            "spread over them and move to another when one cannot take them."
        ),
    ] = ["http://127.0.0.1:8000"],  # noqa: B006 - typer's list default, never mutated
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 4,
    align: AlignOpt = None,
    resize: ResizeOpt = False,
    latent_mask: LatentMaskOpt = None,
    mix_alpha: MixAlphaOpt = None,
    n_outputs: NOutputsOpt = 1,
    seed: SeedOpt = 0,
    save_latents: SaveLatentsOpt = False,
    save_aligned: SaveAlignedOpt = False,
    paste: PasteOpt = False,
    mask: MaskOpt = Mask.face,
    edit: EditOpt = None,
    overwrite: OverwriteOpt = False,
    timeout: Annotated[float, typer.Option(min=0.1, max=86400.0, help="Seconds to wait for one request.")] = 300.0,
    retry_deadline: Annotated[
        float,
        typer.Option(
            min=0,
            max=86400.0,
            help="Seconds a photo keeps being retried while no server can take it (a full queue, a restart, a "
            "refused connection), with jittered back-off; then it fails alone (failures.json; a rerun does it).",
        ),
    ] = 600.0,
) -> None:
    """Send photos to `psp-deploy serve` servers; outputs, resume, failures.json, notes, summary and exit codes
    as `run` (--save-latents: the codes output 0 was synthesized from, as the server answers them; --paste: the
    photo with its face put back, as NAME.png)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..runtime import RunOptions
    from ..runtime.edits import parse_edit
    from ..serving.client import ClientPool, RetryPolicy
    from ..serving.models import MAX_OUTPUTS

    with handled():
        edits = [parse_edit(spec) for spec in edit or ()]
        # run's rules for a row; the mask and the directions are checked by the server, which knows its bundle
        RunOptions(
            align=align,
            resize=resize,
            latent_mask=(0,) if latent_mask else None,
            mix_alpha=mix_alpha,
            seed=seed,
            n_outputs=n_outputs,
            edits=tuple(edits),
        )
        if n_outputs > MAX_OUTPUTS:
            raise InputError(f"--n-outputs: the server makes at most {MAX_OUTPUTS} outputs per photo, got {n_outputs}")
        if save_aligned and align is False:
            raise InputError(NO_ALIGNMENT)
        if paste and align is False:  # a model that takes no photos refuses it itself, per request
            raise InputError("--paste works on the faces alignment finds: it needs alignment (drop --no-align)")
        items = collect_inputs(inputs, output)
        tags = [f"_{k}" for k in range(n_outputs)] if n_outputs > 1 else [""]
        outputs = RunLayout(output, n_outputs, save_latents, save_aligned, every=False, paste=paste).done
        check_before_work(items, output, outputs)
        parameters = dict(
            align=align, resize=resize, latent_mask=latent_mask, mix_alpha=mix_alpha, seed=seed, n_outputs=n_outputs
        )
        pasting = {"paste": True, "mask": mask.value} if paste else {}
        editing = {"edits": [[name, strength] for name, strength in edits]} if edits else {}
        asked = {**parameters, **pasting, **editing}
        clients = ClientPool(url, timeout, RetryPolicy(deadline_s=retry_deadline))
        if not clients.get().ready():
            raise PspDeployError(f"no ready server at {', '.join(url)} (start one with `psp-deploy serve BUNDLE`)")
        with ThreadPoolExecutor(concurrency) as pool:
            summary = run_batch(
                items,
                "inferring",
                out_dir=output,
                outputs=outputs,
                prepare=lambda item: item.source,
                compute=lambda sources: list(pool.map(lambda path: clients.run(path, **asked), sources)),
                write=lambda item, result: write_served(item, result, output, tags, save_latents, save_aligned),
                batch_size=concurrency,
                overwrite=overwrite,
                settings={"command": "infer", **parameters, "save_latents": save_latents, **pasting, **editing},
            )
    report(summary, output)
    raise typer.Exit(summary.exit_code)


def write_served(
    item: Item, result: dict[str, Any], out_dir: Path, tags: list[str], save_latents: bool, save_aligned: bool
) -> None:
    """A served answer's files, as ``run`` writes them (with paste, NAME{tag}.png is the photo with the face
    put back); the aligner's notes printed first."""
    from ..runtime.io import write_image_atomic, write_npy_atomic

    print_notes(item, result.get("warnings", ()))
    images = result.get("pasted", result["images"])
    if len(images) != len(tags):
        raise InputError(f"the server answered {len(images)} images for {len(tags)} outputs")
    if save_aligned and not result["aligned"].any():  # a blank face: the served model did not align
        raise InputError("the server did not align this input (its model takes sketches or label maps)")
    if save_latents:
        write_npy_atomic(item.output(out_dir, ".npy"), result["codes"])
    if save_aligned:
        write_image_atomic(item.output(out_dir, ".png", ALIGNED), result["aligned"])
    for tag, image in zip(tags, images, strict=True):  # last: with paste these mark the input done
        write_image_atomic(item.output(out_dir, ".png", tag), image)


CodesArg = Annotated[
    list[str],
    typer.Argument(
        help="W+ codes: .npy files of [n_styles, 512] floats (as `run --save-latents` writes them), folders "
        "(searched recursively for .npy) or glob patterns."
    ),
]


@app.command()
def synthesize(
    bundle: BundleArg,
    codes: CodesArg,
    output: OutputDir,
    backend: BackendOpt = "auto",
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "cpu",
    tf32: Tf32Opt = False,
    force_bf16: ForceBf16Opt = False,
    threads: ThreadsOpt = None,
    resize: ResizeOpt = False,
    batch_size: BatchSizeOpt = None,
    engines: EnginesOpt = True,
    overwrite: OverwriteOpt = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Synthesize images from saved W+ codes (.npy, e.g. from `run --save-latents`, edited or not).

    Writes OUTPUT/NAME.png per NAME.npy, keeping sub-folders; resume, settings (OUTPUT/psp-deploy.json),
    Ctrl-C/SIGTERM, failures.json and exit codes as `run`. A file that is not finite [n_styles, 512]
    floats fails alone, named in OUTPUT/failures.json.

    Example: psp-deploy synthesize bundles/ffhq out/*.npy -o edited/
    """
    from ..runtime.backends import BackendOptions
    from ..runtime.io import write_image_atomic
    from ..runtime.preprocess import to_uint8

    with handled():
        n_styles = Bundle.open(bundle).config.n_styles  # the manifest alone: bad arguments fail before loading
        items = collect_inputs(codes, output, suffixes=(".npy",), kind="codes")
        outputs = lambda item: [item.output(output, ".png")]  # noqa: E731
        check_before_work(items, output, outputs)
        options = BackendOptions(
            device=device.value, threads=threads, engines=engines, force_bf16=force_bf16, cache_dir=cache_dir, tf32=tf32
        )
        pipeline = open_pipeline(bundle, backend.value, precision.value, options)
        summary = run_batch(
            items,
            "synthesizing",
            out_dir=output,
            outputs=outputs,
            prepare=lambda item: read_codes(item.source, n_styles),
            compute=lambda batch: list(to_uint8(pipeline.synthesize(np.stack(batch))[1 if resize else 0])),
            write=lambda item, image: write_image_atomic(item.output(output, ".png"), image),
            overwrite=overwrite,
            batch_size=batch_size or pipeline.synthesis_net.record.batch or 4,
            settings={"command": "synthesize", "graphs": graph_settings(pipeline, ["synthesis"]), "resize": resize},
        )
    report(summary, output, "codes")
    raise typer.Exit(summary.exit_code)


def read_codes(path: Path, n_styles: int) -> np.ndarray:
    """W+ codes from a .npy file as float32 [n_styles, 512] (a leading axis of 1 is dropped), or an
    InputError saying what is wrong with them: not an array file, a wrong shape, not floats, or values
    that are not finite (in float32: what the synthesis runs), which would come out as plausible pixels."""
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"{path}: not a .npy array file ({err})") from None
    if not isinstance(codes, np.ndarray):  # an .npz archive
        codes.close()
        raise InputError(f"{path}: an .npz archive, not one .npy array")
    found = f"{codes.dtype} {list(codes.shape)}"
    if codes.ndim == 3 and len(codes) == 1:
        codes = codes[0]
    if codes.shape != (n_styles, STYLE_DIM) or not np.issubdtype(codes.dtype, np.floating):
        raise InputError(f"{path}: W+ codes for this bundle are floats [{n_styles}, {STYLE_DIM}], got {found}")
    with np.errstate(over="ignore"):  # counted below
        codes = codes.astype(np.float32)
    bad = int((~np.isfinite(codes)).sum())
    if bad:
        raise InputError(f"{path}: codes hold {bad} NaN or infinite values (in float32); W+ codes must be finite")
    return codes
