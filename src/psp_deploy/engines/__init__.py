"""Engines: TensorRT plans (strongly typed, from the precision-typed ONNX graphs) and ONNX
Runtime optimized models, recorded in the bundle's manifest with what they were built for."""

from .build import BACKENDS, build_engines

__all__ = ["BACKENDS", "build_engines"]
