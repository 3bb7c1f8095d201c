"""The lean runtime: image I/O, FFHQ alignment, backends and the Pipeline. Never imports torch."""

from .pipeline import Pipeline, Result, parse_latent_mask

__all__ = ["Pipeline", "Result", "parse_latent_mask"]
