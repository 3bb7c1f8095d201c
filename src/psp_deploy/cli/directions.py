"""`psp-deploy directions`: the edits a bundle carries (add, sefa, list); `run --edit/--sweep` applies them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import BundleArg, app, console, handled, say

if TYPE_CHECKING:
    from ..bundle import DirectionRecord

directions = typer.Typer(
    name="directions",
    help="Directions in W+ stored in a bundle (InterFaceGAN, GANSpace, SeFa, offsets): add, sefa, list. Apply "
    "them with `psp-deploy run --edit NAME:STRENGTH` or `--sweep NAME:LOW:HIGH:STEPS`.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(directions)

ForceOpt = Annotated[bool, typer.Option(help="Replace directions of the same name(s).")]


@directions.command()
def add(
    bundle: BundleArg,
    name: Annotated[str, typer.Argument(help="The direction's name, e.g. age (letters, digits, _ . -).")],
    file: Annotated[
        Path,
        typer.Argument(
            help="InterFaceGAN boundary ([1, 512], .pt or .npy), an offset over W+ ([n_styles, 512]), or GANSpace "
            "components (e4e's ffhq_pca.pt, with --ganspace)."
        ),
    ],
    layers: Annotated[
        str | None,
        typer.Option(help="Style layers it moves, e.g. 0-7 or 0,2,8-17 (default: all, as e4e's editor)."),
    ] = None,
    ganspace: Annotated[
        str | None,
        typer.Option(
            help="For a GANSpace file: COMPONENT,START,END,STRENGTH as e4e's editor takes them (e.g. 46,4,5,-20: "
            "component 46 on layers 4 to 4, set to -20 standard deviations at strength 1)."
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Import a direction file into the bundle (BUNDLE/directions/NAME.npy and its manifest record with sha256).

    Read without running code: .npy with pickles refused, .pt weights-only (needs torch: the export extra).
    Refused: a file that asks to run code, a wrong shape, NaN or infinite values.

    Example: psp-deploy directions add bundles/e4e age editings/interfacegan_directions/age.pt
    """
    from ..directions import GanspaceEdit, add_direction

    with handled():
        edit = GanspaceEdit.parse(ganspace) if ganspace is not None else None
        record = add_direction(bundle, name, file, layers, edit, force)
    say(f"added {name}: {describe(record)}", "green")


@directions.command()
def sefa(
    bundle: BundleArg,
    layers: Annotated[str, typer.Option(help="W+ style layers to factorize and move, e.g. 0-5 (pose, shape).")],
    top: Annotated[int, typer.Option(min=1, max=512, help="How many directions, by decreasing eigenvalue.")] = 10,
    name: Annotated[str, typer.Option(help="Names are NAME0 … NAME{top-1}.")] = "sefa",
    force: ForceOpt = False,
) -> None:
    """Closed-form factorization (SeFa) of the synthesis' own style weights, read from its ONNX graph: no
    checkpoint, no download, no torch.

    Example: psp-deploy directions sefa bundles/ffhq --layers 0-5 --top 10
    """
    from ..directions import add_sefa

    with handled():
        records = add_sefa(bundle, layers, top, name, force)
    for added, record in records.items():
        say(f"added {added}: {describe(record)}", "green")


@directions.command(name="list")
def list_directions(bundle: BundleArg) -> None:
    """The bundle's directions: kind, layers, where each came from."""
    from rich.table import Table

    from ..bundle import Bundle

    with handled():
        found = Bundle.open(bundle).manifest.directions
    if not found:
        say("no directions (add some with `psp-deploy directions add` or `psp-deploy directions sefa`)")
        return
    table = Table("name", "kind", "layers", "source")
    for name, record in sorted(found.items()):
        table.add_row(name, record.kind, layer_text(record.layers), source_text(record))
    console.print(table)


def describe(record: DirectionRecord) -> str:
    return f"{record.kind} on layers {layer_text(record.layers)} ({source_text(record)})"


def layer_text(layers: list[int]) -> str:
    """[0, 1, 2, 5] → '0-2,5'."""
    runs: list[list[int]] = []
    for i in layers:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{lo}-{hi}" if hi > lo else str(lo) for lo, hi in runs)


def source_text(record: DirectionRecord) -> str:
    source, params = record.source, record.params
    if source.get("method") == "sefa":
        return f"SeFa #{source['rank']}, eigenvalue {params['eigenvalue']:.4g}"
    extra = f", component {params['component']} to {params['target']:g} std" if record.kind == "ganspace" else ""
    return f"{source.get('file')}{extra}"
