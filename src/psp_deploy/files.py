"""File helpers every stage shares: atomic writes, JSON files, sha256 of a file.

The bottom floor: imports only the package's errors, so any module (the torch-free runtime
included) may use it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import OutputError


@functools.cache
def new_file_mode() -> int:
    """The mode the user's umask gives any new file (read once: setting umask is process-wide)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def require_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove a file can be made in it, before any work starts:
    a read-only, immutable or full destination is refused here, naming it, instead of as a
    traceback after the work is done. Returns the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".psp-deploy-write-check."):
            pass
    except OSError as err:
        raise OutputError(f"cannot write to {folder}: {err.strerror or err}") from None
    return folder


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A file that appears at ``path`` complete or not at all (temp file + rename), with the mode
    any new file gets (mkstemp's private 0600 would hide outputs from the user's group)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), new_file_mode())
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any, default: Callable[[Any], Any] | None = None) -> None:
    """JSON (indented, one trailing newline), atomically; ``default`` as for json.dumps."""
    with atomic_file(path) as f:
        f.write((json.dumps(data, indent=2, default=default) + "\n").encode())


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
