"""The lean runtime: image I/O, FFHQ alignment, backends and the Pipeline. Never imports torch."""

from .edits import Sweep
from .pipeline import Generated, Output, Pipeline, Result, RunOptions, parse_latent_mask

__all__ = ["Generated", "Output", "Pipeline", "Result", "RunOptions", "Sweep", "parse_latent_mask"]
