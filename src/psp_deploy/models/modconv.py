"""The modulated convolution in its two equivalent forms.

``grouped`` is what the official code runs: per-sample weights, scaled by the style and
demodulated, applied by ONE grouped convolution with groups = batch. ``scaled`` keeps
the weights static: the input is scaled by the style and the output by the
demodulation factor. Both give the same numbers (up to float rounding); export picks
one per bundle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Blur, EqualLinear

MODCONV_FORMS = ("grouped", "scaled")
DEMOD_EPS = 1e-8


class ModulatedConv2d(nn.Module):
    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_taps: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        if upsample:
            # conv_transpose (stride 2, no padding) gives 2H+1; this blur trims it to 2H.
            p = (len(blur_taps) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_taps, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
        self.form = "grouped"

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.modulation(w)
        if self.form == "grouped":
            return self._grouped(x, style)
        return self._scaled(x, style)

    def _grouped(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        k, c_in, c_out = self.kernel_size, self.in_channel, self.out_channel
        weight = self.scale * self.weight * style.reshape(batch, 1, c_in, 1, 1)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + DEMOD_EPS)
            weight = weight * demod.reshape(batch, c_out, 1, 1, 1)
        x = x.reshape(1, batch * c_in, height, width)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(batch * c_in, c_out, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
            return self.blur(out.reshape(batch, c_out, out.shape[2], out.shape[3]))
        out = F.conv2d(x, weight.reshape(batch * c_out, c_in, k, k), padding=self.padding, groups=batch)
        return out.reshape(batch, c_out, height, width)

    def _scaled(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        weight = self.scale * self.weight[0]
        x = x * style[:, :, None, None]
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), padding=0, stride=2)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            out = out * self.demodulation(style)[:, :, None, None]
        return self.blur(out) if self.upsample else out

    def demodulation(self, style: torch.Tensor) -> torch.Tensor:
        """rsqrt(Σ_{i,kh,kw} (scale·W[o,i]·s[b,i])² + eps) as [B, out], from static weights."""
        energy = (self.scale * self.weight[0]).pow(2).sum([2, 3])  # [out, in]
        return torch.rsqrt(style.pow(2) @ energy.t() + DEMOD_EPS)
