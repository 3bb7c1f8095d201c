"""The pSp encoder heads on top of IR-SE-50 (official class names, official keys)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import STYLE_DIM, PspConfig
from .irse import make_body, make_input_layer
from .layers import EqualLinear

COARSE_END, MIDDLE_END = 3, 7  # styles [0, 3) read c3, [3, 7) read p2, the rest p1
TAP_C1, TAP_C2, TAP_C3 = 6, 20, 23  # body units whose outputs feed the feature pyramid


class GradualStyleBlock(nn.Module):
    """Strided 3×3 convs (LeakyReLU 0.01) down to 1×1, then an EqualLinear: one style vector."""

    def __init__(self, in_c: int, out_c: int, spatial: int) -> None:
        super().__init__()
        self.out_c = out_c
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_c if i == 0 else out_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).reshape(-1, self.out_c))


def upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x resized to y's size (bilinear, corners aligned), plus y. Where y is exactly twice x (always, at
    the encoders' 256² input) a constant scale of 2 says the same, and the exported Resize then needs no
    sizes computed from the batch's shape. On an H200, ONNX Runtime's NHWC CUDA sessions added Memcpy
    nodes (two per such Resize, by their count) and refused CUDA graphs; that this lets them capture is
    expected, not yet measured."""
    if tuple(y.shape[2:]) == (2 * x.shape[2], 2 * x.shape[3]):
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True) + y
    return F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=True) + y


class _PyramidEncoder(nn.Module):
    """Shared trunk of GradualStyleEncoder and Encoder4Editing: backbone, taps, style heads."""

    def __init__(self, input_nc: int, n_styles: int) -> None:
        super().__init__()
        self.input_layer = make_input_layer(input_nc)
        self.body = make_body()
        self.styles = nn.ModuleList(
            GradualStyleBlock(STYLE_DIM, STYLE_DIM, 16 if i < COARSE_END else 32 if i < MIDDLE_END else 64)
            for i in range(n_styles)
        )
        self.latlayer1 = nn.Conv2d(256, 512, 1)
        self.latlayer2 = nn.Conv2d(128, 512, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c3, p2, p1): the coarse, middle and fine feature maps the style heads read."""
        x = self.input_layer(x)
        taps = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in (TAP_C1, TAP_C2, TAP_C3):
                taps[i] = x
        c3 = taps[TAP_C3]
        p2 = upsample_add(c3, self.latlayer1(taps[TAP_C2]))
        p1 = upsample_add(p2, self.latlayer2(taps[TAP_C1]))
        return c3, p2, p1

    @staticmethod
    def level(i: int) -> int:
        return 0 if i < COARSE_END else 1 if i < MIDDLE_END else 2


class GradualStyleEncoder(_PyramidEncoder):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        return torch.stack([head(feats[self.level(i)]) for i, head in enumerate(self.styles)], dim=1)


class Encoder4Editing(_PyramidEncoder):
    """e4e: one base code from the coarsest features, plus a delta for every later style."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        w0 = self.styles[0](feats[0])[:, None, :]
        deltas = torch.stack([head(feats[self.level(i)]) for i, head in enumerate(self.styles) if i > 0], dim=1)
        return torch.cat([w0, w0 + deltas], dim=1)  # the first style's delta is zero: no zeros_like (a Shape)


class BackboneEncoderUsingLastLayerIntoW(nn.Module):
    def __init__(self, input_nc: int) -> None:
        super().__init__()
        self.input_layer = make_input_layer(input_nc)
        self.output_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = EqualLinear(512, STYLE_DIM)
        self.body = make_body()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.output_pool(self.body(self.input_layer(x)))
        return self.linear(x.reshape(-1, 512))


class AdaptiveAvgPoolMatrix(nn.Module):
    """AdaptiveAvgPool2d for a fixed input size, as two matrix products.

    The bins of an adaptive pool overlap when sizes do not divide (16 → 7 here), which
    ONNX pooling cannot express; P·X·Pᵀ with the bin-averaging matrix P is exact.
    """

    def __init__(self, in_size: int, out_size: int) -> None:
        super().__init__()
        pool = torch.zeros(out_size, in_size)
        for i in range(out_size):
            start, end = (i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)
            pool[i, start:end] = 1.0 / (end - start)
        self.register_buffer("pool", pool, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool @ x @ self.pool.t()


class Flatten(nn.Module):
    """[B, C, H, W] → [B, C·H·W] for a known C·H·W: a constant Reshape (flatten(1) exports as shape arithmetic)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.features)


class BackboneEncoderUsingLastLayerIntoWPlus(nn.Module):
    def __init__(self, input_nc: int, n_styles: int) -> None:
        super().__init__()
        self.n_styles = n_styles
        self.input_layer = make_input_layer(input_nc)
        self.output_layer_2 = nn.Sequential(
            nn.BatchNorm2d(512), AdaptiveAvgPoolMatrix(16, 7), Flatten(512 * 7 * 7), nn.Linear(512 * 7 * 7, 512)
        )
        self.linear = EqualLinear(512, STYLE_DIM * n_styles)
        self.body = make_body()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.output_layer_2(self.body(self.input_layer(x)))
        return self.linear(x).reshape(-1, self.n_styles, STYLE_DIM)


def build_encoder(config: PspConfig) -> nn.Module:
    if config.encoder_type == "GradualStyleEncoder":
        return GradualStyleEncoder(config.input_nc, config.n_styles)
    if config.encoder_type == "Encoder4Editing":
        return Encoder4Editing(config.input_nc, config.n_styles)
    if config.encoder_type == "BackboneEncoderUsingLastLayerIntoW":
        return BackboneEncoderUsingLastLayerIntoW(config.input_nc)
    return BackboneEncoderUsingLastLayerIntoWPlus(config.input_nc, config.n_styles)
