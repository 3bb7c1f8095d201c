"""The `psp-deploy` command: a thin face over the library calls; it parses and prints.

Exit codes: 0 success; 1 some inputs of a batch failed (see failures.json); 2 bad
arguments or unusable input (the message says which); 130 interrupted (Ctrl-C), 143
stopped by SIGTERM.

One module per family of commands: batch (align, run, infer), bundle (export, calibrate,
build, demo), directions (the `directions` group), service (serve, bench), video; common holds the
app, the console, error handling and the option types they share.
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import batch, bundle, directions, service, video  # noqa: F401 - each registers its commands on the app
from .common import app


def show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"psp-deploy {version('psp-deploy')}")  # stdout: v=$(psp-deploy --version) works
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Deploy pSp face encoders and StyleGAN2 decoders (see `psp-deploy COMMAND --help`)."""


def main() -> None:  # pragma: no cover - console-script entry
    app()


__all__ = ["app", "main"]
