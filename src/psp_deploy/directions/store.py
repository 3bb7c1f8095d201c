"""Directions into a bundle: BUNDLE/directions/NAME.npy written atomically, then its manifest record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..bundle import DIRECTIONS_DIR, Bundle, DirectionRecord
from ..errors import DirectionError
from ..files import atomic_file, require_writable, sha256_file
from ..runtime.edits import check_name


@dataclass
class NewDirection:
    """A direction about to enter a bundle: the array and what its record says besides the file and hash."""

    kind: str
    values: NDArray[np.float32]
    layers: list[int]
    source: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def check_free(bundle: Bundle, names: Sequence[str], force: bool) -> None:
    """Refuse, before any work, a malformed name or one the bundle has already (unless ``force``)."""
    for name in names:
        check_name(name)
    taken = [name for name in names if name in bundle.manifest.directions]
    if taken and not force:
        raise DirectionError(
            f"{bundle.root}: already has the direction(s) {', '.join(taken)}; pass --force (force=True) to replace"
        )
    require_writable(bundle.root / DIRECTIONS_DIR)


def store(bundle: Bundle, directions: dict[str, NewDirection]) -> dict[str, DirectionRecord]:
    """Write each direction's array (checked by whoever made it: shape, finite) into the bundle and record it;
    the manifest is saved once, at the end."""
    records = {}
    for name, new in directions.items():
        file = f"{DIRECTIONS_DIR}/{name}.npy"
        with atomic_file(bundle.root / file) as f:
            np.save(f, new.values.astype(np.float32), allow_pickle=False)
        records[name] = DirectionRecord(
            file, sha256_file(bundle.root / file), new.kind, new.layers, list(new.values.shape), new.source, new.params
        )
    bundle.manifest.directions.update(records)
    bundle.save_manifest()
    return records
