"""The three exportable graphs, each with one spec that owns its I/O contract.

A GraphSpec feeds the ONNX export (names, dynamic axes, sample input), the parity
check (seeded inputs) and the manifest (shapes and dtypes the runtime and engines read).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..bundle import BATCH, TensorSpec
from ..config import ENCODER_INPUT_SIZE, POOLED_SIZE, STYLE_DIM
from ..graph_io import ENCODER, MAPPING, SYNTHESIS, GraphIO
from ..models.psp import Psp, pool_to_256


class GraphModule(nn.Module):
    """One exportable graph of the network: what export traces, and the inputs it is traced with."""

    def __init__(self, net: Psp) -> None:
        super().__init__()
        self.net = net

    def sample(self, shape: list[int], gen: torch.Generator) -> torch.Tensor:
        """A seeded input of ``shape``, of the kind the graph is fed."""
        raise NotImplementedError


class EncoderGraph(GraphModule):
    """image [B, C, 256, 256] → codes [B, n_styles, 512], latent_avg folded in."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net.encode(image)

    def sample(self, shape: list[int], gen: torch.Generator) -> torch.Tensor:
        """Images in [−1, 1]."""
        return torch.rand(*shape, generator=gen) * 2 - 1


class MappingGraph(GraphModule):
    """z [B, 512] → w [B, 512] (style mixing)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.mapping(z)

    def sample(self, shape: list[int], gen: torch.Generator) -> torch.Tensor:
        """z ~ N(0, 1)."""
        return torch.randn(*shape, generator=gen)


class SynthesisGraph(GraphModule):
    """codes [B, n_styles, 512] → (image [B, 3, R, R], image_256 [B, 3, 256, 256])."""

    def forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.net.synthesize(codes)
        return image, pool_to_256(image)

    def sample(self, shape: list[int], gen: torch.Generator) -> torch.Tensor:
        """Realistic, style-mixed W+ codes: every style from its own z, through the mapping."""
        batch, n_styles = shape[0], shape[1]
        with torch.no_grad():
            w = self.net.mapping(torch.randn(batch * n_styles, STYLE_DIM, generator=gen))
        return w.reshape(batch, n_styles, STYLE_DIM)


@dataclass(frozen=True)
class GraphSpec:
    name: str
    module: GraphModule
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch: int | None  # fixed batch, or None for a dynamic batch dimension

    def sample(self, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Seeded inputs of the kind the graph's module makes (images, z or W+ codes)."""
        gen = torch.Generator().manual_seed(seed)
        shapes = [[batch if d == BATCH else d for d in spec.shape] for spec in self.inputs]
        return tuple(self.module.sample(shape, gen) for shape in shapes)


def _spec(io: GraphIO, module: GraphModule, batch: int | None, inputs: list, outputs: list) -> GraphSpec:
    """The spec of graph ``io``: ``inputs``/``outputs`` are each tensor's shape without the batch
    axis, in the graph's order; the batch axis (fixed, or dynamic) goes where graph_io says."""
    dim: int | str = BATCH if batch is None else batch

    def tensors(names: tuple[str, ...], shapes: list) -> tuple[TensorSpec, ...]:
        batched = [(*s[: io.batch_axis], dim, *s[io.batch_axis :]) for s in shapes]
        return tuple(TensorSpec(name, shape) for name, shape in zip(names, batched, strict=True))

    return GraphSpec(io.graph, module, tensors(io.inputs, inputs), tensors(io.outputs, outputs), batch)


def graph_specs(net: Psp, synthesis_batch: int | None) -> list[GraphSpec]:
    """Encoder and mapping always take any batch; synthesis only when ``synthesis_batch`` is None."""
    c = net.config
    face, codes = (c.input_nc, ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE), (c.n_styles, STYLE_DIM)
    images = [(3, c.output_size, c.output_size), (3, POOLED_SIZE, POOLED_SIZE)]
    return [
        _spec(ENCODER, EncoderGraph(net), None, [face], [codes]),
        _spec(MAPPING, MappingGraph(net), None, [(STYLE_DIM,)], [(STYLE_DIM,)]),
        _spec(SYNTHESIS, SynthesisGraph(net), synthesis_batch, [codes], images),
    ]
