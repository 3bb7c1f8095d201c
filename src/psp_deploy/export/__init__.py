"""torch → ONNX: encoder, mapping and synthesis graphs in a verified bundle.

``export_bundle``/``export_net`` load torch on first use, so the torch-free submodules
(checks, oplist) serve calibration and engine building without it.
"""

from typing import Any

__all__ = ["ExportOptionError", "ExportOptions", "check_target", "export_bundle", "export_net"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
