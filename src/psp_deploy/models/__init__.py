"""PyTorch reference: loads official pSp checkpoints and runs them as the official code does."""

from ..config import PspConfig
from .checkpoint import load_psp, read_checkpoint
from .psp import Psp, pool_to_256, style_mix

__all__ = ["PspConfig", "Psp", "load_psp", "read_checkpoint", "pool_to_256", "style_mix"]
