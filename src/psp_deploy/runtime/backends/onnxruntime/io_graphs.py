"""The runtime's own small graphs: pre- and post-processing that run beside the bundle's graphs, on
the same device, so a face goes up as uint8 and an image comes down as uint8.

They are built at load time, not shipped in the bundle (the bundle contract is unchanged), and
compute exactly what runtime/preprocess.py computes on the host, bit for bit:

- ``normalise``: uint8 faces [N, 256, 256, C] (NHWC, already resized) → encoder input
  float32 [N, C, 256, 256]: ``(x / 255 − 0.5) / 0.5`` for RGB faces (C = 3), ``x / 255`` for sketches (C = 1).
- ``to_uint8``: synthesis output float32 [N, 3, H, W] → uint8 [N, H, W, 3]:
  ``trunc(clip((x + 1) / 2, 0, 1) · 255)``.
- ``upload``: float32 encoder tensors (label maps' one-hot, or ``Pipeline.prepare``'s) → the same,
  an Identity: a host buffer's rows reach a device buffer through ONNX Runtime's copy.

Each step is one IEEE float32 operation, in the order numpy applies them; the truncation is a Floor
before the Cast (equal for values ≥ 0), so it does not depend on how a Cast rounds.
"""

from __future__ import annotations

from ....config import ENCODER_INPUT_SIZE
from ...preprocess import PIXEL_CHANNELS, check_pixel_kind
from .onnx_writer import FLOAT, UINT8, Node, Tensor, model

FACES, NORMALISED = "faces", "normalised"  # normalise: input, output
TENSORS, UPLOADED = "tensors", "uploaded"  # upload: input, output
FLOATS, PIXELS = "floats", "pixels"  # to_uint8: input, output
SIZE = ENCODER_INPUT_SIZE


def normalise_graph(kind: str) -> bytes:
    """uint8 [N, 256, 256, C] → float32 [N, C, 256, 256], as preprocess_rgb / preprocess_sketch after their resize."""
    check_pixel_kind(kind)
    nodes = [
        Node("Transpose", (FACES,), "nchw", lists={"perm": (0, 3, 1, 2)}),
        Node("Cast", ("nchw",), "float", ints={"to": FLOAT}),
        Node("Div", ("float", "c255"), "unit" if kind == "rgb" else NORMALISED),
    ]
    if kind == "rgb":  # mean = std = 0.5: [0, 1] → [−1, 1]
        nodes += [Node("Sub", ("unit", "c0_5"), "centred"), Node("Div", ("centred", "c0_5"), NORMALISED)]
    c = PIXEL_CHANNELS[kind]
    faces = Tensor(FACES, UINT8, ("batch", SIZE, SIZE, c))
    normalised = Tensor(NORMALISED, FLOAT, ("batch", c, SIZE, SIZE))
    constants = {"c255": 255.0, "c0_5": 0.5} if kind == "rgb" else {"c255": 255.0}
    return model(f"normalise_{kind}", nodes, constants, [faces], [normalised])


def upload_graph(channels: int) -> bytes:
    """float32 [N, C, 256, 256] → the same tensor, wherever the session runs."""
    shape = ("batch", channels, SIZE, SIZE)
    return model(
        "upload",
        [Node("Identity", (TENSORS,), UPLOADED)],
        {},
        [Tensor(TENSORS, FLOAT, shape)],
        [Tensor(UPLOADED, FLOAT, shape)],
    )


def to_uint8_graph() -> bytes:
    """float32 [N, 3, H, W] → uint8 [N, H, W, 3], as preprocess.to_uint8 (any H, W: one graph for both outputs)."""
    nodes = [
        Node("Add", (FLOATS, "c1"), "shifted"),
        Node("Div", ("shifted", "c2"), "halved"),
        Node("Clip", ("halved", "c0", "c1"), "clipped"),
        Node("Mul", ("clipped", "c255"), "scaled"),
        Node("Floor", ("scaled",), "whole"),
        Node("Cast", ("whole",), "nchw", ints={"to": UINT8}),
        Node("Transpose", ("nchw",), PIXELS, lists={"perm": (0, 2, 3, 1)}),
    ]
    floats = Tensor(FLOATS, FLOAT, ("batch", 3, "height", "width"))
    pixels = Tensor(PIXELS, UINT8, ("batch", "height", "width", 3))
    constants = {"c0": 0.0, "c1": 1.0, "c2": 2.0, "c255": 255.0}
    return model("to_uint8", nodes, constants, [floats], [pixels])
