"""The modulated convolution in its two equivalent forms.

``grouped`` is what the official code runs: per-sample weights, scaled by the style and
demodulated, applied by ONE grouped convolution with groups = batch. ``scaled`` keeps
the weights static: the input is scaled by the style and the output by the
demodulation factor. Both give the same numbers (up to float rounding); export picks
one per bundle.

The upsampling layers' stride-2 transposed convolution has two forms too: ``transpose``
(one ConvTranspose, as the official code) and ``phase``: the four output phases of a
3×3 stride-2 transposed conv are plain convolutions of the low-resolution input with
the kernel's 2×2, 2×1, 1×2 and 1×1 sub-kernels (the same multiply-adds), interleaved by
a one-hot depthwise transposed conv. ONNX Runtime's CPU ConvTranspose runs far below its
Conv rate; benchmarks/results/*-forms.md says where the phase form pays. ``folded`` folds the
blur that follows into the transposed conv's kernel: convT(x, W) then the blur K is
convT(x, W ⊛ K) with W ⊛ K the full 2-D convolution of the 3×3 taps with the 4×4 blur (6×6),
padding kh − 1 − (the blur's padding before) = 4 − 1 − 1 = 2. One pass instead of three (the
transposed conv, the pad, the depthwise blur), for four times the transposed conv's
multiply-adds (each output takes 3×3 taps per input channel, not 2.25 on average).

A caller may hand the conv a bias and a gain (``forward``): gain·modconv(x) + bias, the gain
riding on the [B, out] demodulation factor and the bias added by the last convolution where
no per-sample factor follows it (the blur, the grouped conv), so neither costs a pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Blur, EqualLinear

MODCONV_FORMS = ("grouped", "scaled")
UPSAMPLE_FORMS = ("transpose", "phase", "folded")
DEMOD_EPS = 1e-8
# Per axis, the taps of a 3×3 stride-2 transposed conv that reach even and odd outputs, as
# correlation taps (flipped), and the input padding that gives each phase H + 1 positions.
PHASE_TAPS = {0: ([2, 0], (1, 1)), 1: ([1], (0, 1))}


def phase_conv_transpose(x: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """conv_transpose2d(x, weight.transpose, stride=2) of a 3×3 kernel as four convolutions.

    ``weight`` is in conv2d layout [out, in / groups, 3, 3]. Returns [B, out, 2H + 2, 2W + 2]:
    the transposed conv's 2H + 1 rows and columns, then one row and column of zeros (the four
    phases must be equal in size to interleave)."""
    phases = []
    for row in (0, 1):
        for col in (0, 1):
            (rows, (top, bottom)), (cols, (left, right)) = PHASE_TAPS[row], PHASE_TAPS[col]
            # index_select exports as Gather (TensorRT parses it; advanced indexing would give GatherND)
            taps = lambda index: torch.tensor(index, device=weight.device)  # noqa: E731
            kernel = weight.index_select(2, taps(rows)).index_select(3, taps(cols))
            phases.append(F.conv2d(F.pad(x, [left, right, top, bottom]), kernel, groups=groups))
    return interleave(phases)


def transposed(
    x: torch.Tensor, weight: torch.Tensor, groups: int, bias: torch.Tensor | None = None, padding: int = 0
) -> torch.Tensor:
    """The stride-2 conv_transpose2d of ``weight`` in conv2d layout [out, in / groups, k, k]."""
    c_out, c_in, k = weight.shape[0] // groups, weight.shape[1], weight.shape[2]
    weight = weight.reshape(groups, c_out, c_in, k, k).transpose(1, 2).reshape(groups * c_in, c_out, k, k)
    return F.conv_transpose2d(x, weight, bias, stride=2, padding=padding, groups=groups)


def fold_blur(weight: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Each k×k tap grid of ``weight`` [out, in, k, k] fully convolved with ``kernel`` [kh, kw] (a true
    convolution, as upfirdn2d applies it): [out, in, k + kh − 1, k + kw − 1]."""
    c_out, c_in, k, _ = weight.shape
    kh, kw = kernel.shape
    # Σ_{a,b} W[a, b]·(the kernel placed at (a, b)) as one MatMul: export's constant folding evaluates a MatMul
    # with numpy, a ConvTranspose with ONNX's reference operators (Python loops, far slower at 512×512 channels)
    placed = torch.stack([F.pad(kernel, [b, k - 1 - b, a, k - 1 - a]) for a in range(k) for b in range(k)])
    grids = weight.reshape(c_out * c_in, k * k) @ placed.reshape(k * k, -1)
    return grids.reshape(c_out, c_in, k + kh - 1, k + kw - 1)


def interleave(phases: list[torch.Tensor]) -> torch.Tensor:
    """Four [B, C, h, w] phases (row parity, column parity: 00, 01, 10, 11) → [B, C, 2h, 2w].

    A depthwise stride-2 transposed conv with one-hot 2×2 kernels: each output takes exactly one
    input, so it is exact; unlike DepthToSpace it runs on the CPU backends' convolution kernels."""
    batch, channels, height, width = phases[0].shape
    stacked = torch.stack(phases, dim=2).reshape(batch, 4 * channels, height, width)
    one_hot = torch.eye(4, dtype=stacked.dtype, device=stacked.device).reshape(4, 1, 2, 2).repeat(channels, 1, 1, 1)
    return F.conv_transpose2d(stacked, one_hot, stride=2, groups=channels)


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
        self.upsample_form = "transpose"

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, gain: float = 1.0
    ) -> torch.Tensor:
        """gain · modconv(x, style(w)) + bias ([out]); a gain other than 1 needs demodulation (it scales the
        demodulation factor)."""
        if gain != 1 and not self.demodulate:
            raise ValueError("a gain rides on the demodulation factor: this conv does not demodulate")
        style = self.modulation(w)
        if self.form == "grouped":
            return self._grouped(x, style, bias, gain)
        return self._scaled(x, style, bias, gain)

    def _grouped(self, x: torch.Tensor, style: torch.Tensor, bias: torch.Tensor | None, gain: float) -> torch.Tensor:
        batch, _, height, width = x.shape
        k, c_in, c_out = self.kernel_size, self.in_channel, self.out_channel
        weight = self.scale * self.weight * style.reshape(batch, 1, c_in, 1, 1)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + DEMOD_EPS)
            weight = weight * (demod if gain == 1 else demod * gain).reshape(batch, c_out, 1, 1, 1)
        x = x.reshape(1, batch * c_in, height, width)
        biases = None if bias is None else bias.repeat(batch)  # channel b·out + o is sample b's channel o
        out = self._conv(x, weight.reshape(batch * c_out, c_in, k, k), batch, biases)
        return out.reshape(batch, c_out, out.shape[2], out.shape[3])

    def _scaled(self, x: torch.Tensor, style: torch.Tensor, bias: torch.Tensor | None, gain: float) -> torch.Tensor:
        weight = self.scale * self.weight[0]
        x = x * style[:, :, None, None]
        if not self.demodulate:
            return self._conv(x, weight, 1, bias)
        demod = self.demodulation(style, gain)[:, :, None, None]
        if self.upsample and self.upsample_form != "folded":
            # demodulated before the blur (both linear, per channel): the blur's conv then adds the bias
            return self._blurred(self._upsampled(x, weight, 1) * demod, bias)
        out = self._conv(x, weight, 1, None) * demod
        return out if bias is None else out + bias[:, None, None]

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, groups: int, bias: torch.Tensor | None) -> torch.Tensor:
        """The conv of ``weight`` (conv2d layout [out, in / groups, k, k]) in this layer's form, upsampling
        ones blurred, ``bias`` ([out]) added by the last convolution."""
        if not self.upsample:
            return F.conv2d(x, weight, bias, padding=self.padding, groups=groups)
        if self.upsample_form == "folded":
            return self._folded(x, weight, groups, bias)
        return self._blurred(self._upsampled(x, weight, groups), bias)

    def _upsampled(self, x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
        """The stride-2 transposed conv of ``weight`` (conv2d layout), before the blur."""
        if self.upsample_form == "phase":
            return phase_conv_transpose(x, weight, groups)
        return transposed(x, weight, groups)

    def _folded(self, x: torch.Tensor, weight: torch.Tensor, groups: int, bias: torch.Tensor | None) -> torch.Tensor:
        """The transposed conv and the blur after it as one transposed conv of the folded kernel: output o takes
        Σ_i x[i]·(W ⊛ K)[o + kh − 1 − pad0 − 2i], the transposed conv's padding (see the module's docstring)."""
        before, after = self.blur.pad
        if before != after:  # a transposed conv pads both sides alike
            raise ValueError(f"the folded form needs the blur padded alike on both sides, got {self.blur.pad}")
        padding = self.blur.kernel.shape[0] - 1 - before
        return transposed(x, fold_blur(weight, self.blur.kernel), groups, bias, padding)

    def _blurred(self, out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The blur that trims 2H + 1 to 2H, adding ``bias``; the phase form's trailing zero row and column
        stand in for the blur's last row and column of padding."""
        if self.upsample_form == "phase":
            return self.blur(out, pad=(self.blur.pad[0], self.blur.pad[1] - 1), bias=bias)
        return self.blur(out, bias=bias)

    def demodulation(self, style: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """gain · rsqrt(Σ_{i,kh,kw} (scale·W[o,i]·s[b,i])² + eps) as [B, out], from static weights; the gain
        as rsqrt((energy + eps) / gain²), folded into the constants."""
        energy = (self.scale * self.weight[0]).pow(2).sum([2, 3]) / gain**2  # [out, in]
        return torch.rsqrt(style.pow(2) @ energy.t() + DEMOD_EPS / gain**2)
