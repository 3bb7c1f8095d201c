"""What every command shares: the app, the console, error handling, progress and option types.

Every message that shows text from outside (paths, errors, install hints such as
``psp-deploy[trt]``) goes through ``escape``: rich would read its brackets as markup.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.columns import Columns
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from ..errors import PspDeployError
from ..runtime.backends.registry import DEVICES, PRECISIONS, REGISTRY

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130

app = typer.Typer(
    name="psp-deploy",
    help="Deploy pSp (pixel2style2pixel) face encoders and StyleGAN2 decoders: official checkpoint → "
    "ONNX bundle → calibrated FP16/INT8 graphs and engines → a lean runtime (photo → aligned face → "
    "W+ codes → image).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    add_completion=False,
)


class _Console(Console):
    """A console whose live displays (spinners, progress bars) leave nothing behind when an exception
    ends them, so the error line that follows stands alone, not under a frozen "⠋ loading checkpoint
    0/7". Every command's bars and spinners draw on this console, so this one place covers them all:
    on a terminal the last frame is erased; in logs and pipes, where a bar prints its last frame and a
    blank line when it stops, neither is printed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (live display, the exception being handled when it started), innermost last
        self._lives: list[tuple[Any, BaseException | None]] = []
        self._drop_blank = False

    def set_live(self, live: Any) -> Any:  # rich's Live; what rich returns (nothing before rich 14)
        self._lives.append((live, sys.exc_info()[1]))
        try:
            return super().set_live(live)
        except Exception:
            self._lives.pop()
            raise

    def clear_live(self) -> None:  # Live.stop calls this first, before it draws its last frame
        live, handling = self._lives.pop() if self._lives else (None, None)
        if live is not None and sys.exc_info()[1] not in (None, handling):  # an exception on its way out
            live.transient = True
            self._drop_blank = not self.is_interactive  # rich's Progress then prints a blank line
        super().clear_live()

    def print(self, *objects: Any, **kwargs: Any) -> None:
        drop, self._drop_blank = self._drop_blank, False
        if drop and not objects:
            return
        super().print(*objects, **kwargs)


console = _Console(stderr=True, soft_wrap=True)  # messages stay one line: greppable in logs


class _Folded:
    """A renderable drawn with words too long for its width folded onto the next line, never cut
    with "…" (what rich's tables do to them)."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console_: Console, options: ConsoleOptions) -> RenderResult:
        yield from console_.render(self.renderable, options.update(overflow="fold"))

    def __rich_measure__(self, console_: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console_, options, self.renderable)


class _FoldingTable(Table):
    """typer's options and commands tables, whose cells fold what does not fit instead of cutting it."""

    def add_row(self, *renderables: RenderableType | None, **kwargs: Any) -> None:
        super().add_row(*renderables, **kwargs)
        for column in self.columns:
            column.overflow = "fold"


def _help_that_wraps() -> None:
    """Typer's help as a narrow terminal needs it: every cell of its tables wraps, and a word wider than
    its column folds onto the next line ("OUTPUT/psp-deploy.json" or "--optimization-level" are never
    cut to "OUTPUT/psp-depl…", "--optimization-l…"); a flag (--help, --version, --resize/--no-resize)
    shows no "<bool>" value placeholder, since it takes no value. Typer draws these in private helpers,
    so each change is made only where the helper exists as expected; typer's drawing is kept otherwise."""
    from typer import core, rich_utils

    option = getattr(core, "TyperOption", None)
    display = getattr(option, "display_type_rich", None)
    if display is not None and not getattr(display, "_psp_deploy", False):

        def display_type_rich(self: Any, ctx: Any) -> str | None:
            return None if getattr(self, "is_flag", False) and not getattr(self, "count", False) else display(self, ctx)

        display_type_rich._psp_deploy = True
        option.display_type_rich = display_type_rich

    if getattr(rich_utils, "Table", None) is Table:
        rich_utils.Table = _FoldingTable
    for name in ("_get_parameter_help", "_make_command_help"):  # a help cell: Columns of texts, or one text
        helper = getattr(rich_utils, name, None)
        if helper is None or getattr(helper, "_psp_deploy", False):
            continue

        def folded(*args: Any, _helper: Any = helper, **kwargs: Any) -> RenderableType:
            drawn = _helper(*args, **kwargs)
            if isinstance(drawn, Columns):  # its own grid would cut each text: fold them one by one
                drawn.renderables = [_Folded(item) for item in drawn.renderables]
                return drawn
            return _Folded(drawn)

        folded._psp_deploy = True
        setattr(rich_utils, name, folded)


_help_that_wraps()


def say(text: str, style: str = "") -> None:
    """One line of plain text (escaped), optionally styled as a whole."""
    console.print(f"[{style}]{escape(text)}[/]" if style else escape(text), highlight=False)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Turn the package's errors into one red line and exit code 2; a second Ctrl-C into 130."""
    try:
        yield
    except PspDeployError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None


@contextlib.contextmanager
def progress(title: str) -> Iterator[Callable[[str], None]]:
    """A step reporter: a spinner on a terminal; one line per step in logs and pipes, where a
    spinner shows nothing."""
    if not console.is_terminal:
        yield lambda message: console.print(f"{title}: {message}", markup=False, highlight=False)
        return
    with console.status(title) as status:
        yield lambda message: status.update(escape(message))


class FacePolicy(str, Enum):
    largest = "largest"
    best = "best"
    last = "last"


class FaceChoice(str, Enum):
    """`run` and `video`: every face, or one as FacePolicy picks it."""

    all = "all"
    largest = "largest"
    best = "best"
    last = "last"


class Mask(str, Enum):
    face = "face"
    square = "square"


MaskOpt = Annotated[
    Mask,
    typer.Option(help="How a face goes back into its photo: a soft face-shaped mask, or its whole crop square."),
]


class Modconv(str, Enum):
    grouped = "grouped"
    scaled = "scaled"


class UpsampleForm(str, Enum):
    transpose = "transpose"
    phase = "phase"
    folded = "folded"


def _choices(name: str, values: Iterable[str]) -> Any:
    """A str Enum of ``values`` for typer's --help and parsing: the choices come from the backend registry
    (runtime/backends/registry.py), never copied by hand."""
    return Enum(name, {value: value for value in values}, type=str)


BackendName = _choices("BackendName", ["auto", *REGISTRY])
CalibrationBackend = _choices("CalibrationBackend", [spec.name for spec in REGISTRY.values() if spec.calibrates])
Precision = _choices("Precision", PRECISIONS)
Device = _choices("Device", DEVICES)


BundleArg = Annotated[Path, typer.Argument(help="Bundle directory made by `psp-deploy export`.")]
InputsArg = Annotated[list[str], typer.Argument(help="Photos (or sketches / label maps), folders or glob patterns.")]
OutputDir = Annotated[Path, typer.Option("--output", "-o", help="Directory for the outputs.")]
BackendOpt = Annotated[
    BackendName,
    typer.Option(
        help="auto: on CPU, openvino when installed and it runs the precision asked (measured faster), else "
        "onnxruntime. Never changes the precision."
    ),
]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        help="fp32; fp16 (onnxruntime, tensorrt) and int8 run graphs made by `psp-deploy calibrate`; bf16 "
        "(openvino, CPUs with native BF16)."
    ),
]
DeviceOpt = Annotated[Device, typer.Option(help="onnxruntime device.")]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="CPU threads per graph (default: all cores).")]
ForceBf16Opt = Annotated[bool, typer.Option(help="openvino: allow bf16 on a CPU without native BF16.")]
EnginesOpt = Annotated[
    bool,
    typer.Option(
        help="Use what `psp-deploy build` made (onnxruntime: optimized models, measured CUDA settings; openvino: "
        "compiled models); one made for another machine is refused. --no-engines runs the ONNX graphs."
    ),
]
Tf32Opt = Annotated[
    bool,
    typer.Option(
        help="onnxruntime on cuda: let FP32 convolutions and matmuls run in TF32 on tensor cores (faster, 10-bit "
        "mantissa). Default: IEEE FP32."
    ),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="openvino: where compiled-model caches go (default: $PSP_DEPLOY_CACHE_DIR, else the user cache "
        "folder ~/.cache/psp-deploy). Running never writes into the bundle."
    ),
]
FaceOpt = Annotated[
    FacePolicy,
    typer.Option(
        help="Which face when a photo has several: the largest box, the best detector score, or the last "
        "detection (the official script)."
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        help="Redo inputs whose outputs already exist, also when the folder was made with other settings "
        "(OUTPUT/psp-deploy.json)."
    ),
]
AlignOpt = Annotated[
    bool | None,
    typer.Option(
        "--align/--no-align",
        help="Align faces first (default: yes for photos; sketches and label maps are never aligned).",
    ),
]
ResizeOpt = Annotated[bool, typer.Option(help="Write 256×256 outputs (the official face_pool) instead of full size.")]
LatentMaskOpt = Annotated[
    str | None,
    typer.Option(
        help="Style mixing: style indices to take from a random face, e.g. 8-17 at 1024² (fine styles: colours, "
        "texture; a 256² model has 14 styles, 0-13)."
    ),
]
MixAlphaOpt = Annotated[
    float | None,
    typer.Option(min=0.0, max=1.0, help="Blend factor of the injected styles, 0 to 1 (default: replace)."),
]
SeedOpt = Annotated[
    int, typer.Option(min=0, max=2**32 - 1, help="Seed of the injected styles: output k uses z from seed + k.")
]
SaveLatentsOpt = Annotated[bool, typer.Option(help="Also write each input's W+ codes as NAME.npy.")]
