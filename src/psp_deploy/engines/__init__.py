"""Engines: `psp-deploy build` resolves which graph each engine is built from and records it in
the bundle's manifest; each backend module under runtime/backends/ builds and loads its own."""

from ..runtime.backends.options import BatchProfile, BuildOptions
from .build import BACKENDS, build_engines

__all__ = ["BACKENDS", "BatchProfile", "BuildOptions", "build_engines"]
