"""Directions in W+ as part of a bundle: imported from the official files (InterFaceGAN boundaries, GANSpace
components, offsets) without running any code they may hold, or computed by SeFa from the synthesis graph's
own style weights; each stored as BUNDLE/directions/NAME.npy with a manifest record and its sha256.

Torch-free, like the runtime that applies them (runtime/edits.py), except for reading .pt files, which
needs torch (the ``export`` extra) and loads them weights-only."""

from .importing import GanspaceEdit, add_direction
from .sefa import add_sefa, sefa_directions

__all__ = ["GanspaceEdit", "add_direction", "add_sefa", "sefa_directions"]
