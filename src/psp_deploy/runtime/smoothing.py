"""Faces followed over a video's frames, their crop squares and landmarks smoothed in time.

Per frame the detector moves the crop by 1-3 % of the inter-ocular distance between near-identical
frames (align.py), which makes a generated video shimmer. FaceTracker links each frame's faces to
the previous frame's (nearest crop centre, similar size) and filters each track's crop square and
landmarks:

- "centred", for files: at each frame a Gaussian-weighted local quadratic fit over the frames within
  2.5 sigma on either side (Savitzky-Golay with Gaussian weights, on the frames' own timestamps);
  no lag, a delay of that many frames, ends handled by the one-sided fit.
- "causal", for streams: the One-Euro filter (Casiez et al., CHI 2012), an exponential filter whose
  cutoff rises with the face's speed: steady when still, little lag when moving.
- "none": each frame's detection as it is.

The crop square is filtered as its centre and half-side vector (quad corners are linear in them, so
the result stays a square) and the landmarks with the same weights. Memory is bounded: the tracker
holds the frames of its delay and a window of samples per track. No torch.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from .align import Box, LocatedFace, Points

SMOOTHING = ("centred", "causal", "none")
CENTRED_SIGMA = 0.1  # s: the Gaussian's width (2.5 frames at 25 fps)
CENTRED_REACH = 2.5  # the window's half-width, in sigmas
CENTRED_ORDER = 2  # local polynomial degree: follows acceleration without lag
MIN_CUTOFF = 0.5  # Hz: the One-Euro cutoff of a still face
BETA = 10.0  # Hz of cutoff per face size per second of speed
DERIVATIVE_CUTOFF = 1.0  # Hz: the cutoff of the speed estimate
MATCH_DISTANCE = 0.5  # a face continues a track when its crop centre moved less than this × the crop side
MATCH_SCALE = 1.5  # ... and its crop side changed less than this factor
PARAMS = 4  # a quad's state: centre (2) and half-side vector (2); the landmarks follow


def quad_state(quad: NDArray[Any]) -> NDArray[np.float64]:
    """[cx, cy, hx, hy]: the square's centre and half its top side (top-left → top-right)."""
    quad = np.asarray(quad, np.float64)
    return np.concatenate([quad.mean(0), (quad[3] - quad[0]) / 2])


def state_quad(state: NDArray[np.float64]) -> Points:
    """The square [4, 2] (top-left, bottom-left, bottom-right, top-right) of ``quad_state``'s vector."""
    c, x = state[:2], state[2:4]
    y = np.array([-x[1], x[0]])
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


class OneEuro:
    """One-Euro filter over a vector: one cutoff for all components (a linear blend of squares is a
    square), raised by the speed of ``state[:PARAMS]`` measured in face sizes per second."""

    def __init__(self, min_cutoff: float = MIN_CUTOFF, beta: float = BETA, d_cutoff: float = DERIVATIVE_CUTOFF):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._time: float | None = None
        self._value = self._speed = np.zeros(0)

    @staticmethod
    def _alpha(cutoff: float, dt: float) -> float:
        return 1.0 / (1.0 + 1.0 / (2 * math.pi * cutoff * dt))

    def __call__(self, time: float, value: NDArray[Any]) -> NDArray[np.float64]:
        value = np.asarray(value, np.float64)
        if self._time is None:  # the first sample passes as it is
            self._time, self._value, self._speed = time, value, np.zeros_like(value)
            return value
        if time <= self._time:  # a repeated timestamp: nothing new to learn from
            return self._value
        dt = time - self._time
        speed = (value - self._value) / dt
        self._speed = self._speed + self._alpha(self.d_cutoff, dt) * (speed - self._speed)
        size = 2 * float(np.hypot(*value[2:4]))  # the crop side: speed in face sizes per second
        cutoff = self.min_cutoff + self.beta * float(np.linalg.norm(self._speed[:PARAMS])) / max(size, 1e-9)
        self._value = self._value + self._alpha(cutoff, dt) * (value - self._value)
        self._time = time
        return self._value


def local_fit(
    times: NDArray[Any], values: NDArray[Any], at: float, sigma: float, order: int = CENTRED_ORDER
) -> NDArray[np.float64]:
    """The value at ``at`` of a Gaussian-weighted (``sigma`` s) least-squares polynomial fit of
    ``values`` [n, d] sampled at ``times`` [n]; the degree drops to what n samples determine."""
    tau = (np.asarray(times, np.float64) - at) / sigma
    degree = min(order, len(tau) - 1)
    root_w = np.exp(-0.25 * tau**2)[:, None]  # sqrt of the Gaussian weight
    design = tau[:, None] ** np.arange(degree + 1) * root_w
    coefficients, *_ = np.linalg.lstsq(design, np.asarray(values, np.float64) * root_w, rcond=None)
    value: NDArray[np.float64] = coefficients[0]
    return value


@dataclass(frozen=True)
class TrackedFace:
    """One face on one frame, smoothed: crop it with ``FaceAligner.crop(frame, landmarks, quad, box)``."""

    track: int  # the same number on every frame of one face's uninterrupted appearance
    landmarks: Points  # [68, 2] smoothed, photo pixels
    quad: Points  # [4, 2] the smoothed crop square
    box: Box  # this frame's detector box
    observed: LocatedFace  # this frame's detection, unsmoothed


@dataclass(frozen=True)
class TrackedFrame:
    payload: Any  # what was pushed with the frame (the frame itself, typically)
    time: float
    faces: list[TrackedFace]


@dataclass
class _Track:
    centre: NDArray[np.float64]
    size: float
    filter: OneEuro | None
    # (seq, time, state) for the centred fit
    samples: deque[tuple[int, float, NDArray[np.float64]]] = field(default_factory=deque)


@dataclass
class _Pending:
    seq: int
    time: float
    payload: Any
    faces: list[tuple[int, LocatedFace, NDArray[np.float64]]]  # track, detection, state (filtered when causal)


class FaceTracker:
    """Push every frame's located faces (``FaceAligner.locate``) in order; frames come back in the
    same order, each with its faces smoothed, ``delay`` frames later (0 unless centred). ``flush``
    returns the rest at the end. A face missing from a frame ends its track; a new one starts."""

    def __init__(
        self,
        fps: float,
        smoothing: str = "centred",
        *,
        sigma: float = CENTRED_SIGMA,
        min_cutoff: float = MIN_CUTOFF,
        beta: float = BETA,
    ) -> None:
        if smoothing not in SMOOTHING:
            raise InputError(f"smoothing must be one of {', '.join(SMOOTHING)}, got {smoothing!r}")
        if not fps > 0 or not sigma > 0 or not min_cutoff > 0 or beta < 0:
            raise InputError(
                f"fps, sigma and min_cutoff must be positive, beta not negative (fps {fps}, sigma {sigma})"
            )
        self.smoothing, self.sigma, self.min_cutoff, self.beta = smoothing, sigma, min_cutoff, beta
        self.delay = math.ceil(CENTRED_REACH * sigma * fps) if smoothing == "centred" else 0
        self._tracks: dict[int, _Track] = {}  # tracks a pending frame still needs
        self._active: list[int] = []  # tracks seen on the last frame pushed
        self._pending: deque[_Pending] = deque()
        self._seq = self._next_track = 0

    def push(self, time: float, faces: Sequence[LocatedFace], payload: Any = None) -> list[TrackedFrame]:
        """One frame's faces at ``time`` seconds; returns the frames now ready (oldest first)."""
        seq, self._seq = self._seq, self._seq + 1
        entries = []
        for track_id, face in zip(self._associate(faces), faces, strict=True):
            track = self._tracks[track_id]
            state = np.concatenate([quad_state(face.quad), face.landmarks.ravel()])
            track.centre, track.size = face.quad.mean(0), face.size
            if track.filter is not None:
                state = track.filter(time, state)
            track.samples.append((seq, time, state))
            while track.samples[0][0] < seq - 2 * self.delay:
                track.samples.popleft()
            entries.append((track_id, face, state))
        self._active = [track_id for track_id, _, _ in entries]
        self._pending.append(_Pending(seq, time, payload, entries))
        ready = []
        while self._pending and self._pending[0].seq <= seq - self.delay:
            ready.append(self._emit(self._pending.popleft()))
        return ready

    def flush(self) -> list[TrackedFrame]:
        """The frames still held (the last ``delay``), smoothed with what came before them."""
        ready = [self._emit(pending) for pending in self._pending]
        self._pending.clear()
        self._tracks = {i: t for i, t in self._tracks.items() if i in self._active}
        return ready

    def _associate(self, faces: Sequence[LocatedFace]) -> list[int]:
        """Each face's track: the last frame's nearest unclaimed one within reach, else a new one."""
        pairs = []
        for i, face in enumerate(faces):
            for track_id in self._active:
                track = self._tracks[track_id]
                distance = float(np.hypot(*(face.quad.mean(0) - track.centre)))
                ratio = face.size / track.size
                if distance < MATCH_DISTANCE * track.size and 1 / MATCH_SCALE < ratio < MATCH_SCALE:
                    pairs.append((distance, i, track_id))
        chosen: dict[int, int] = {}
        for _, i, track_id in sorted(pairs):
            if i not in chosen and track_id not in chosen.values():
                chosen[i] = track_id
        for i, face in enumerate(faces):
            if i not in chosen:
                chosen[i], self._next_track = self._next_track, self._next_track + 1
                one_euro = OneEuro(self.min_cutoff, self.beta) if self.smoothing == "causal" else None
                self._tracks[chosen[i]] = _Track(face.quad.mean(0), face.size, one_euro)
        return [chosen[i] for i in range(len(faces))]

    def _emit(self, pending: _Pending) -> TrackedFrame:
        faces = []
        for track_id, face, state in pending.faces:
            if self.smoothing == "centred":
                window = [(t, s) for q, t, s in self._tracks[track_id].samples if abs(q - pending.seq) <= self.delay]
                times, states = zip(*window, strict=True)
                state = local_fit(np.array(times), np.stack(states), pending.time, self.sigma)
            faces.append(TrackedFace(track_id, state[PARAMS:].reshape(-1, 2), state_quad(state), face.box, face))
        # a track no longer on screen is forgotten once no held frame needs it
        oldest = self._pending[0].seq if self._pending else self._seq
        self._tracks = {
            i: t for i, t in self._tracks.items() if i in self._active or (t.samples and t.samples[-1][0] >= oldest)
        }
        return TrackedFrame(pending.payload, pending.time, faces)
