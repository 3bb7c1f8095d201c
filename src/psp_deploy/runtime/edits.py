"""Edits in W+: a named direction of the bundle moved along by a strength. No torch.

One formula per direction kind (bundle.DirectionRecord; docs/bundle.md, "Directions"), on W+ codes
[N, n_styles, 512] as the synthesis takes them (latent_avg included), for s the strength:

- interfacegan, sefa (d [512]):  codes[:, l] += s · d                    for l in layers
- offset (D [n_styles, 512]):    codes[:, l] += s · D[l]                 for l in layers
- ganspace (u, μ [512]; σ, T):   c = ((codes[:, 0] − μ) · u) / σ,
                                 codes[:, l] += s · (T − c) · σ · u      for l in layers

GANSpace is the official e4e editor's (component, start, end, strength): at s = 1 the coordinate along
the component becomes T standard deviations, whatever it was. Every kind adds s times something finite,
so s = 0 leaves the codes bit for bit as they were.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..bundle import DirectionRecord
from ..errors import InputError

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # also a file name: directions/NAME.npy
Edit = tuple[str, float]  # (direction name, strength)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InputError(f"direction name {name!r}: use letters, digits, '_', '.' and '-' (not first), e.g. 'age'")
    return name


def check_edits(edits: Sequence[Edit]) -> tuple[Edit, ...]:
    """``edits`` as a tuple of (name, float strength), each name well formed and each strength finite."""
    checked = []
    for name, strength in edits:
        if not isinstance(strength, (int, float, np.number)) or not math.isfinite(strength):
            raise InputError(f"edit {name!r}: the strength must be a finite number, got {strength!r}")
        checked.append((check_name(name), float(strength)))
    return tuple(checked)


def _number(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"{spec!r}: {what} {text!r} is not a finite number")
    return value


def parse_edit(spec: str) -> Edit:
    """'age:-3' or 'smile:+1.5' → ('age', -3.0)."""
    name, colon, strength = spec.partition(":")
    if not colon:
        raise InputError(f"edit {spec!r}: write NAME:STRENGTH, e.g. age:-3")
    return check_name(name), _number(strength, "the strength", spec)


@dataclass(frozen=True)
class Sweep:
    """One direction at ``steps`` strengths evenly from ``low`` to ``high``: one output per step."""

    name: str
    low: float
    high: float
    steps: int

    def __post_init__(self) -> None:
        check_name(self.name)
        check_edits([(self.name, self.low), (self.name, self.high)])
        if self.steps < 2:
            raise InputError(f"a sweep needs at least 2 steps, got {self.steps}")

    @classmethod
    def parse(cls, spec: str) -> Sweep:
        """'age:-3:3:7' → Sweep('age', -3.0, 3.0, 7)."""
        parts = spec.split(":")
        if len(parts) != 4:
            raise InputError(f"sweep {spec!r}: write NAME:LOW:HIGH:STEPS, e.g. age:-3:3:7")
        steps = _number(parts[3], "the number of steps", spec)
        if steps != int(steps):
            raise InputError(f"sweep {spec!r}: the number of steps must be a whole number, got {parts[3]!r}")
        return cls(check_name(parts[0]), _number(parts[1], "LOW", spec), _number(parts[2], "HIGH", spec), int(steps))

    @property
    def strengths(self) -> list[float]:
        return [float(s) for s in np.linspace(self.low, self.high, self.steps)]


@dataclass(frozen=True)
class Direction:
    """A bundle's direction, loaded (``Bundle.direction``), and what it does to codes."""

    name: str
    record: DirectionRecord
    values: NDArray[np.float32]

    def apply(self, codes: NDArray[np.float32], strength: float) -> NDArray[np.float32]:
        """codes [N, n_styles, 512] → a copy moved by ``strength`` along this direction (the module's formulas)."""
        out = np.array(codes, np.float32)
        out[:, self.record.layers] += np.float32(strength) * self.step(out)
        return out

    def step(self, codes: NDArray[np.float32]) -> NDArray[np.float32]:
        """What strength 1 adds to codes[:, layers]: broadcastable to [N, len(layers), 512]."""
        kind, values = self.record.kind, self.values
        if kind == "offset":
            return values[self.record.layers]
        if kind != "ganspace":
            return values
        component, mean = values
        std, target = np.float32(self.record.params["std"]), np.float32(self.record.params["target"])
        coordinate = ((codes[:, 0] - mean) @ component) / std  # [N]
        moved: NDArray[np.float32] = ((target - coordinate) * std)[:, None, None] * component
        return moved
