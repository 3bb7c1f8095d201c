"""StyleGAN2 building blocks, written as the official code computes them on a CPU.

Attribute and buffer names match the official state-dict keys. Everything is plain
PyTorch (no compiled extensions): ``upfirdn2d`` follows its defining formula and the
fused bias + leaky ReLU is computed unfused, as the official code's CPU path does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable FIR taps → normalised 2-D kernel (sums to 1)."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative crops), convolve with ``kernel``, downsample.

    Every channel is filtered alike; the kernel is flipped because this is a true
    convolution. Output size: (H·up + pad0 + pad1 − kh) // down + 1.
    """
    _, c, h, w = x.shape
    kh, kw = kernel.shape
    p0, p1 = pad
    out = x.reshape(-1, 1, h, w)
    if up > 1:
        out = out.reshape(-1, 1, h, 1, w, 1)
        out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1])
        out = out.reshape(-1, 1, h * up, w * up)
    out = F.pad(out, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    out = out[:, :, max(-p0, 0) : out.shape[2] - max(-p1, 0), max(-p0, 0) : out.shape[3] - max(-p1, 0)]
    out = F.conv2d(out, torch.flip(kernel, [0, 1]).reshape(1, 1, kh, kw))
    out = out[:, :, ::down, ::down]
    return out.reshape(-1, c, out.shape[2], out.shape[3])


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """leaky_relu(x + bias, 0.2) · √2 with the bias broadcast over dim 1."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.reshape(shape), LRELU_SLOPE) * LRELU_GAIN


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: the scale is applied at run time."""

    def __init__(
        self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


FIR_FORMS = ("reference", "depthwise")


def _depthwise(kernel: torch.Tensor, channels: int) -> torch.Tensor:
    return kernel[None, None].expand(channels, 1, -1, -1)


class Blur(nn.Module):
    """FIR low-pass filter (no resampling) with the given padding.

    ``form`` "reference" runs upfirdn2d as the official code does; "depthwise" is the
    same filter as one depthwise convolution, the form graphs and engines prefer.
    """

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * upsample_factor**2)
        self.pad = pad
        self.form = "reference"

    def forward(
        self, x: torch.Tensor, pad: tuple[int, int] | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Filter ``x`` with this blur's padding, or with ``pad`` (before, after) on both axes; add ``bias``
        (one per channel), in the depthwise form by the convolution itself."""
        p0, p1 = pad or self.pad
        if self.form == "reference":
            out = upfirdn2d(x, self.kernel, pad=(p0, p1))
            return out if bias is None else out + bias.reshape(1, -1, 1, 1)
        weight = _depthwise(torch.flip(self.kernel, [0, 1]), x.shape[1])
        if p0 == p1 >= 0:  # the convolution pads: no pass of its own
            return F.conv2d(x, weight, bias, padding=p0, groups=x.shape[1])
        return F.conv2d(F.pad(x, [p0, p1, p0, p1]), weight, bias, groups=x.shape[1])


class Upsample(nn.Module):
    """2× upsampling by zero insertion and FIR filtering (the ToRGB skip path).

    The "depthwise" form is a stride-2 depthwise transposed convolution: with the
    official padding (2, 1) and a 4-tap kernel it computes exactly the same sums.
    """

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(taps) * factor**2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)
        self.form = "reference"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "reference":
            return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)
        # out[o] = Σ_i x[i]·k[o + (kh − 1 − pad0) − up·i]; conv_transpose pads by kh − 1 − pad0
        crop = self.kernel.shape[0] - 1 - self.pad[0]
        weight = _depthwise(self.kernel, x.shape[1])
        return F.conv_transpose2d(x, weight, stride=self.factor, padding=crop, groups=x.shape[1])


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise
