"""StyleGAN2 generator in rosinality's layout (the decoder of every pSp checkpoint)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import STYLE_DIM, channels_for
from .layers import (
    LRELU_GAIN,
    LRELU_SLOPE,
    ConstantInput,
    EqualLinear,
    FusedLeakyReLU,
    NoiseInjection,
    PixelNorm,
    Upsample,
)
from .modconv import ModulatedConv2d

BLUR_TAPS = (1, 3, 3, 1)
# "apart": gains and biases as the official code applies them, each its own pass over the maps; "folded": into
# the convolutions, the demodulation factors and the constants beside them (the same sums, rounded differently)
CONSTANT_FORMS = ("apart", "folded")


class StyledConv(nn.Module):
    """Modulated conv → fixed noise → bias + leaky ReLU."""

    def __init__(self, in_channel: int, out_channel: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, 3, STYLE_DIM, upsample=upsample, blur_taps=BLUR_TAPS)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)
        self.constants = "apart"

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.constants == "apart":
            return self.activate(self.noise(self.conv(x, w), noise))
        # leaky ReLU is positively homogeneous, lrelu(z)·g = lrelu(g·z): the gain scales what sums to z instead,
        # the conv's output through its [B, out] demodulation factor, the bias and the noise (constants)
        out = self.conv(x, w, bias=LRELU_GAIN * self.activate.bias, gain=LRELU_GAIN)
        return F.leaky_relu(out + LRELU_GAIN * self.noise.weight * noise, LRELU_SLOPE)


class ToRGB(nn.Module):
    """1×1 modulated conv (not demodulated) to RGB, plus the upsampled running image."""

    def __init__(self, in_channel: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(BLUR_TAPS)
        self.conv = ModulatedConv2d(in_channel, 3, 1, STYLE_DIM, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.constants = "apart"

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.constants == "apart":
            out = self.conv(x, w) + self.bias
        else:  # the 1×1 conv adds the bias
            out = self.conv(x, w, bias=self.bias.flatten())
        return out if skip is None else out + self.upsample(skip)


class Generator(nn.Module):
    """``style`` is the mapping network (z → w); ``synthesis`` turns W+ codes into an image.

    Noise is always the fixed ``noises.noise_i`` buffers of the checkpoint (official
    inference with randomize_noise=False), so the output is a function of the codes.
    """

    def __init__(self, size: int, n_mlp: int = 8, channel_multiplier: int = 2) -> None:
        super().__init__()
        self.size = size
        self.log_size = int(math.log2(size))
        self.num_layers = 2 * self.log_size - 3
        self.n_latent = 2 * self.log_size - 2
        ch = lambda res: channels_for(res, channel_multiplier)  # noqa: E731

        self.style = nn.Sequential(
            PixelNorm(), *(EqualLinear(STYLE_DIM, STYLE_DIM, lr_mul=0.01, activate=True) for _ in range(n_mlp))
        )
        self.input = ConstantInput(ch(4))
        self.conv1 = StyledConv(ch(4), ch(4))
        self.to_rgb1 = ToRGB(ch(4), upsample=False)
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty in the official model too; kept for key parity
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        in_channel = ch(4)
        for log_res in range(3, self.log_size + 1):
            out_channel = ch(2**log_res)
            self.convs.append(StyledConv(in_channel, out_channel, upsample=True))
            self.convs.append(StyledConv(out_channel, out_channel))
            self.to_rgbs.append(ToRGB(out_channel))
            in_channel = out_channel

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        return self.style(z)

    def fixed_noise(self) -> list[torch.Tensor]:
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def synthesis(self, latent: torch.Tensor) -> torch.Tensor:
        """W+ codes [B, n_latent, 512] → image [B, 3, size, size], roughly in [−1, 1]."""
        noise = self.fixed_noise()
        # The scaled form multiplies the constant by each sample's style, which broadcasts it over the batch:
        # no repeat, whose count the graph would compute from the batch's shape. On an H200, ONNX Runtime's NHWC
        # CUDA sessions added Memcpy nodes (two per such node, by their count) and refused CUDA graphs; that this
        # lets them capture is expected, not yet measured.
        out = self.input(latent.shape[0] if self.conv1.conv.form == "grouped" else 1)
        out = self.conv1(out, latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        for j, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * j](out, latent[:, 2 * j + 1], noise[2 * j + 1])
            out = self.convs[2 * j + 1](out, latent[:, 2 * j + 2], noise[2 * j + 2])
            skip = to_rgb(out, latent[:, 2 * j + 3], skip)
        return skip
