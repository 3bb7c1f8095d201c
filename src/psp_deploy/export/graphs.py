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
from ..models.psp import Psp, pool_to_256


class EncoderGraph(nn.Module):
    """image [B, C, 256, 256] → codes [B, n_styles, 512], latent_avg folded in."""

    def __init__(self, net: Psp) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net.encode(image)


class MappingGraph(nn.Module):
    """z [B, 512] → w [B, 512] (style mixing)."""

    def __init__(self, net: Psp) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.mapping(z)


class SynthesisGraph(nn.Module):
    """codes [B, n_styles, 512] → (image [B, 3, R, R], image_256 [B, 3, 256, 256])."""

    def __init__(self, net: Psp) -> None:
        super().__init__()
        self.net = net

    def forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.net.synthesize(codes)
        return image, pool_to_256(image)


@dataclass(frozen=True)
class GraphSpec:
    name: str
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch: int | None  # fixed batch, or None for a dynamic batch dimension

    def sample(self, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Seeded inputs of the right kind: images in [−1, 1], W+ codes from the mapping."""
        gen = torch.Generator().manual_seed(seed)
        shapes = [[batch if d == BATCH else d for d in spec.shape] for spec in self.inputs]
        if self.name == "encoder":
            return (torch.rand(*shapes[0], generator=gen) * 2 - 1,)
        if self.name == "mapping":
            return (torch.randn(*shapes[0], generator=gen),)
        net: Psp = self.module.net
        n_styles = shapes[0][1]
        with torch.no_grad():  # every style from its own z: realistic, style-mixed W+ codes
            w = net.mapping(torch.randn(batch * n_styles, STYLE_DIM, generator=gen))
        return (w.reshape(batch, n_styles, STYLE_DIM),)


def graph_specs(net: Psp, synthesis_batch: int | None) -> list[GraphSpec]:
    """Encoder and mapping always take any batch; synthesis only when ``synthesis_batch`` is None."""
    c = net.config
    b = BATCH
    sb: int | str = BATCH if synthesis_batch is None else synthesis_batch
    return [
        GraphSpec(
            "encoder",
            EncoderGraph(net),
            (TensorSpec("image", (b, c.input_nc, ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE)),),
            (TensorSpec("codes", (b, c.n_styles, STYLE_DIM)),),
            None,
        ),
        GraphSpec(
            "mapping", MappingGraph(net), (TensorSpec("z", (b, STYLE_DIM)),), (TensorSpec("w", (b, STYLE_DIM)),), None
        ),
        GraphSpec(
            "synthesis",
            SynthesisGraph(net),
            (TensorSpec("codes", (sb, c.n_styles, STYLE_DIM)),),
            (
                TensorSpec("image", (sb, 3, c.output_size, c.output_size)),
                TensorSpec("image_256", (sb, 3, POOLED_SIZE, POOLED_SIZE)),
            ),
            synthesis_batch,
        ),
    ]
