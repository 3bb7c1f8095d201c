"""One exception family for the whole package.

The CLI turns any ``PspDeployError`` into a one-line message and a non-zero exit code;
anything else is a bug and keeps its traceback.
"""


class PspDeployError(Exception):
    """Base of every error this package raises on purpose."""


class CheckpointError(PspDeployError):
    """A checkpoint file is unreadable, unsafe, or does not match the architecture."""


class BundleError(PspDeployError):
    """A bundle (manifest + model files) is missing, corrupt or inconsistent."""


class InputError(PspDeployError):
    """Input data has the wrong name, shape, dtype or value range."""


class OutputError(PspDeployError):
    """An output location cannot be written (permissions, a read-only or full file system)."""


class ImageDecodeError(InputError):
    """An image file could not be decoded."""


class ImageTooLargeError(ImageDecodeError):
    """An image over a size limit (pixels or bytes): refused before it is decoded."""


class DirectionError(InputError):
    """A direction file is unsafe (a pickle that asks to run code), of the wrong shape, or not finite."""


class NoFaceError(InputError):
    """No face was found in a photo."""


class MissingDependencyError(PspDeployError):
    """An optional library a feature needs is not installed (the message names the extra)."""


class BackendUnavailableError(PspDeployError):
    """A backend (TensorRT, OpenVINO, CUDA) cannot be used on this machine."""


class ExportError(PspDeployError):
    """Exporting a graph failed, or the exported graph does not match the reference."""


class EngineError(PspDeployError):
    """Building or loading an engine failed, or an engine does not match this machine."""


class CalibrationError(PspDeployError):
    """Calibration data or a precision conversion is unusable."""
