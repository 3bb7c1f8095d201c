"""torch → ONNX: encoder, mapping and synthesis graphs in a verified bundle."""

from .writer import export_bundle, export_net

__all__ = ["export_bundle", "export_net"]
