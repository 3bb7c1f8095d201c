"""`psp-deploy directions add`: a published direction file into a bundle, read without running code.

What it reads, in the layouts they are published in:

- InterFaceGAN boundaries: a [1, 512] array (e4e's ``editings/interfacegan_directions/*.pt``, InterFaceGAN's
  own ``*_boundary.npy``), or [512]: one vector, by default on every style layer (as e4e's editor adds it);
- offsets over W+: [n_styles, 512] (or [1, n_styles, 512]): a row per style layer;
- GANSpace components: a dict with ``comp`` [K, 1, 512], ``std`` [K] and ``mean`` [1, 512] (e4e's
  ``editings/ganspace_pca/ffhq_pca.pt``), with the (component, start, end, strength) of e4e's editor.

.npy files are read by numpy with pickles refused; anything else as torch.save wrote it, weights-only
(models/checkpoint.py): a file that asks to run code is refused, never executed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..bundle import Bundle, DirectionRecord
from ..config import STYLE_DIM
from ..errors import DirectionError, MissingDependencyError
from ..files import sha256_file
from ..runtime.pipeline import parse_latent_mask
from .store import NewDirection, check_free, store

GANSPACE_KEYS = ("comp", "std", "mean")


@dataclass(frozen=True)
class GanspaceEdit:
    """One edit of e4e's GANSpace editor: component ``component`` on style layers start … end − 1, its
    coordinate (in standard deviations) set to ``strength``; e.g. smile = (46, 4, 5, -20)."""

    component: int
    start: int
    end: int
    strength: float

    @classmethod
    def parse(cls, text: str) -> GanspaceEdit:
        """'46,4,5,-20' → GanspaceEdit(46, 4, 5, -20.0)."""
        parts = [p.strip() for p in text.split(",")]
        try:
            if len(parts) != 4:
                raise ValueError(text)
            return cls(int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3]))
        except ValueError:
            raise DirectionError(
                f"GANSpace edit {text!r}: write COMPONENT,START,END,STRENGTH as e4e's editor does, e.g. 46,4,5,-20"
            ) from None


def add_direction(
    bundle: str | Path,
    name: str,
    file: str | Path,
    layers: str | None = None,
    ganspace: GanspaceEdit | None = None,
    force: bool = False,
) -> DirectionRecord:
    """Import ``file`` into ``bundle`` as direction ``name``: checked (safe to read, its shape, finite), then
    stored as BUNDLE/directions/NAME.npy with its manifest record. ``layers`` ('0-7', '0,2,8-17'; default every
    style) applies to InterFaceGAN and offset files; a GANSpace file takes ``ganspace`` instead."""
    opened = Bundle.open(bundle)
    n_styles = opened.config.n_styles
    check_free(opened, [name], force)
    if ganspace is not None and layers is not None:
        raise DirectionError("a GANSpace edit names its layers (START to END − 1): leave --layers out")
    chosen = parse_latent_mask(layers, n_styles, "layers") if layers is not None else list(range(n_styles))
    path = Path(file)
    content = read_direction_file(path)
    source = {"file": path.name, "sha256": sha256_file(path)}
    if isinstance(content, dict):
        new = _ganspace(path, content, ganspace, n_styles)
    elif ganspace is not None:
        raise DirectionError(f"{path}: --ganspace takes a GANSpace file ({', '.join(GANSPACE_KEYS)}), not an array")
    else:
        new = _vector(path, content, chosen, n_styles)
    new.source = source
    return store(opened, {name: new})[name]


def read_direction_file(path: Path) -> Any:
    """An array (.npy, pickles refused) or what torch.save wrote (weights-only, tensors as numpy arrays)."""
    if not path.is_file():
        raise DirectionError(f"{path}: no such direction file")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as err:
            raise DirectionError(f"{path}: refused to load: {err} (a .npy direction holds plain numbers)") from None
        except (OSError, EOFError) as err:
            raise DirectionError(f"{path}: not a readable .npy array: {err}") from None
    try:
        import torch

        from ..models.checkpoint import load_weights_only
    except ImportError as err:
        raise MissingDependencyError(
            f"reading {path.name} (torch.save format) needs torch: pip install 'psp-deploy[export]', or give the "
            "direction as a .npy file"
        ) from err
    content = load_weights_only(path, "direction file", DirectionError)
    if isinstance(content, dict):
        return {key: _numpy(value, torch) for key, value in content.items()}
    return _numpy(content, torch)


def _numpy(value: Any, torch: Any) -> Any:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def _floats(path: Path, value: Any, what: str) -> NDArray[np.float32]:
    """``value`` as finite float32, or a DirectionError naming what is wrong with it."""
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
        found = f"{value.dtype} values" if isinstance(value, np.ndarray) else type(value).__name__
        raise DirectionError(f"{path}: {what} must hold floating-point numbers, found {found}")
    with np.errstate(over="ignore"):  # counted below
        floats = value.astype(np.float32)
    bad = int((~np.isfinite(floats)).sum())
    if bad:
        raise DirectionError(f"{path}: {what} holds {bad} NaN or infinite values (in float32)")
    return floats


def _vector(path: Path, value: Any, layers: list[int], n_styles: int) -> NewDirection:
    """An InterFaceGAN boundary ([1, 512] or [512]) or an offset over W+ ([n_styles, 512], [1, n_styles, 512])."""
    floats = _floats(path, value, "the direction")
    if floats.shape in ((1, STYLE_DIM), (STYLE_DIM,)):
        return NewDirection("interfacegan", floats.reshape(STYLE_DIM), layers)
    if floats.shape in ((1, n_styles, STYLE_DIM), (n_styles, STYLE_DIM)):
        return NewDirection("offset", floats.reshape(n_styles, STYLE_DIM), layers)
    raise DirectionError(
        f"{path}: a direction is [1, {STYLE_DIM}] or [{STYLE_DIM}] (InterFaceGAN: one vector) or "
        f"[{n_styles}, {STYLE_DIM}] (an offset per style layer of this bundle); got {list(floats.shape)}"
    )


def _ganspace(path: Path, content: dict[str, Any], edit: GanspaceEdit | None, n_styles: int) -> NewDirection:
    """e4e's GANSpace editor's component, mean, std and strength, for the layers the edit names."""
    missing = [key for key in GANSPACE_KEYS if key not in content]
    if missing:
        raise DirectionError(
            f"{path}: a dict, but not GANSpace components (keys {', '.join(GANSPACE_KEYS)}): it has "
            f"{', '.join(map(str, content)) or 'none'}, lacking {', '.join(missing)}"
        )
    if edit is None:
        raise DirectionError(
            f"{path} holds GANSpace components: say which with --ganspace COMPONENT,START,END,STRENGTH, as e4e's "
            "editor does (e.g. 46,4,5,-20)"
        )
    comp, std, mean = (_floats(path, content[key], f"'{key}'") for key in GANSPACE_KEYS)
    if comp.size % STYLE_DIM or std.size != comp.size // STYLE_DIM or mean.size != STYLE_DIM:
        raise DirectionError(
            f"{path}: GANSpace components are comp [K, 1, {STYLE_DIM}], std [K], mean [1, {STYLE_DIM}]; got "
            f"{list(comp.shape)}, {list(std.shape)}, {list(mean.shape)}"
        )
    comp, std = comp.reshape(-1, STYLE_DIM), std.reshape(-1)
    if not 0 <= edit.component < len(comp):
        raise DirectionError(f"{path}: component {edit.component} out of 0..{len(comp) - 1}")
    if not 0 <= edit.start < edit.end <= n_styles:
        raise DirectionError(
            f"GANSpace layers {edit.start} to {edit.end} (end excluded) must lie in 0..{n_styles} with start < end"
        )
    if not std[edit.component] > 0:
        raise DirectionError(f"{path}: std of component {edit.component} is {std[edit.component]}, not positive")
    params = {"component": edit.component, "std": float(std[edit.component]), "target": edit.strength}
    values = np.stack([comp[edit.component], mean.reshape(STYLE_DIM)])
    return NewDirection("ganspace", values, list(range(edit.start, edit.end)), params=params)
