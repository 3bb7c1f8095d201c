"""Each graph's inputs and outputs by name: the one description that export names its tensors
from, the runtime and calibration feed and read by, and docs/bundle.md states for other languages.

Bottom floor: no torch, no onnx, nothing from the package. Shapes and dtypes are per bundle
(they depend on the model's config) and live in the manifest; the names and the batch axis
are the same for every bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE = "image"  # encoder input (preprocessed face) and synthesis output (full resolution)
CODES = "codes"  # W+ codes: encoder output, synthesis input
Z = "z"  # mapping input
W = "w"  # mapping output
IMAGE_256 = "image_256"  # synthesis output, average-pooled to 256²
BATCH_AXIS = 0  # every input and output of every graph is batched along its first axis


@dataclass(frozen=True)
class GraphIO:
    """One graph's tensor names, in the graph's order."""

    graph: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    batch_axis: int = BATCH_AXIS

    @property
    def input(self) -> str:
        """The graph's input (each graph has one)."""
        return self.inputs[0]

    @property
    def output(self) -> str:
        """The graph's main output (synthesis also has ``image_256``)."""
        return self.outputs[0]


ENCODER = GraphIO("encoder", (IMAGE,), (CODES,))
MAPPING = GraphIO("mapping", (Z,), (W,))
SYNTHESIS = GraphIO("synthesis", (CODES,), (IMAGE, IMAGE_256))
GRAPH_IO = {io.graph: io for io in (ENCODER, MAPPING, SYNTHESIS)}  # in the flow's order
