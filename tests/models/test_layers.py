"""Layer math against references written here, independently of the package's code."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from psp_deploy.models.encoders import AdaptiveAvgPoolMatrix, upsample_add
from psp_deploy.models.forms import official_forms, set_forms
from psp_deploy.models.layers import Blur, EqualLinear, FusedLeakyReLU, PixelNorm, Upsample, make_kernel, upfirdn2d
from psp_deploy.models.modconv import ModulatedConv2d, phase_conv_transpose
from psp_deploy.models.psp import pool_to_256
from psp_deploy.models.stylegan2 import StyledConv, ToRGB


def upfirdn2d_by_definition(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
    """Loops over the defining formula: zero-insert, pad (negative crops), convolve, keep every down-th."""
    h, w = x.shape
    upped = np.zeros((h * up, w * up))
    upped[::up, ::up] = x
    p0, p1 = pad
    padded = np.pad(upped, ((max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0))))
    padded = padded[max(-p0, 0) : padded.shape[0] - max(-p1, 0), max(-p0, 0) : padded.shape[1] - max(-p1, 0)]
    kh, kw = k.shape
    out_h = (padded.shape[0] - kh) // down + 1
    out_w = (padded.shape[1] - kw) // down + 1
    out = np.zeros((out_h, out_w))
    for oy in range(out_h):
        for ox in range(out_w):
            y, x0 = oy * down, ox * down
            for i in range(kh):  # true convolution: the kernel index runs backwards
                for j in range(kw):
                    out[oy, ox] += padded[y + i, x0 + j] * k[kh - 1 - i, kw - 1 - j]
    return out


@pytest.mark.parametrize(
    "up,down,pad", [(1, 1, (1, 1)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (0, 0)), (1, 1, (-1, 2)), (2, 1, (1, -1))]
)
def test_upfirdn2d_matches_its_definition(up, down, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 5))
    k = rng.standard_normal((4, 3))  # asymmetric: catches a missing flip
    k = np.pad(k, ((0, 0), (0, 1)))  # square kernel, still asymmetric
    got = upfirdn2d(torch.tensor(x, dtype=torch.float64), torch.tensor(k), up=up, down=down, pad=pad).numpy()
    for b in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[b, c], upfirdn2d_by_definition(x[b, c], k, up, down, pad), atol=1e-12)


def test_make_kernel_is_normalised_outer_product():
    k = make_kernel([1, 3, 3, 1])
    expected = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    np.testing.assert_allclose(k.numpy(), expected)


def test_equal_linear_hand_computed():
    layer = EqualLinear(2, 1, lr_mul=0.5)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, -4.0]]))
        layer.bias.copy_(torch.tensor([6.0]))
    # y = x·(W·0.5/√2)ᵀ + b·0.5 = (1·2 + 1·(−4))·0.5/√2 + 3
    y = layer(torch.tensor([[1.0, 1.0]]))
    assert y.item() == pytest.approx(-1.0 / math.sqrt(2) + 3.0, abs=1e-6)


def test_equal_linear_with_activation_hand_computed():
    layer = EqualLinear(1, 2, lr_mul=0.01, activate=True)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[100.0], [100.0]]))  # effective weight 100·0.01/1 = 1
        layer.bias.copy_(torch.tensor([100.0, -300.0]))  # effective bias 1 and −3
    y = layer(torch.tensor([[1.0]])).detach()
    # lrelu(1 + 1)·√2 = 2√2 ; lrelu(1 − 3)·√2 = −0.4·√2
    np.testing.assert_allclose(y.numpy(), [[2 * math.sqrt(2), -0.4 * math.sqrt(2)]], rtol=1e-6)


def test_pixel_norm_hand_computed():
    x = torch.tensor([[3.0, 4.0]])  # mean of squares 12.5
    np.testing.assert_allclose(PixelNorm()(x).numpy(), [[3 / math.sqrt(12.5), 4 / math.sqrt(12.5)]], rtol=1e-6)


def test_fused_leaky_relu_hand_computed():
    act = FusedLeakyReLU(2)
    with torch.no_grad():
        act.bias.copy_(torch.tensor([1.0, -1.0]))
    x = torch.tensor([[[[-2.0]], [[3.0]]]])  # channel 0: −2+1 = −1 ; channel 1: 3−1 = 2
    np.testing.assert_allclose(act(x).detach().flatten().numpy(), [-0.2 * math.sqrt(2), 2 * math.sqrt(2)], rtol=1e-6)


def _modulated_weights(conv: ModulatedConv2d, w: torch.Tensor) -> torch.Tensor:
    """Per-sample weights straight from the formula: Ŵ = W·s/√fan_in, demodulated."""
    s = conv.modulation(w)  # [B, in]
    fan_in = conv.in_channel * conv.kernel_size**2
    weights = []
    for b in range(w.shape[0]):
        wb = conv.weight[0] * s[b][None, :, None, None] / math.sqrt(fan_in)
        if conv.demodulate:
            wb = wb / torch.sqrt((wb**2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        weights.append(wb)
    return torch.stack(weights)


@pytest.mark.parametrize("demodulate,k", [(True, 3), (False, 1)])
def test_grouped_modconv_equals_per_sample_convs(demodulate, k):
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, k, 8, demodulate=demodulate).double()
    x, w = torch.randn(3, 6, 7, 7, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    with torch.no_grad():
        weights = _modulated_weights(conv, w)
        expected = torch.cat([F.conv2d(x[b : b + 1], weights[b], padding=k // 2) for b in range(3)])
        torch.testing.assert_close(conv(x, w), expected, atol=1e-10, rtol=1e-10)


def test_upsampling_modconv_equals_transpose_then_blur():
    torch.manual_seed(1)
    conv = ModulatedConv2d(4, 3, 3, 8, upsample=True).double()
    x, w = torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    blur = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0 * 4
    with torch.no_grad():
        actual = conv(x, w).numpy()
        weights = _modulated_weights(conv, w)
        for b in range(2):
            # conv_transpose2d wants [in, out, k, k]; stride 2 without padding gives 2H+1
            up = F.conv_transpose2d(x[b : b + 1], weights[b].transpose(0, 1), stride=2)[0].numpy()
            assert up.shape[-1] == 11
            for c in range(3):
                expected = upfirdn2d_by_definition(up[c], blur, 1, 1, (1, 1))
                np.testing.assert_allclose(actual[b, c], expected, atol=1e-10)
    assert actual.shape == (2, 3, 10, 10)


@pytest.mark.parametrize("upsample,demodulate,k", [(False, True, 3), (True, True, 3), (False, False, 1)])
def test_scaled_form_equals_grouped_form(upsample, demodulate, k):
    torch.manual_seed(2)
    conv = ModulatedConv2d(8, 6, k, 16, demodulate=demodulate, upsample=upsample).double()
    x, w = torch.randn(3, 8, 6, 6, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    with torch.no_grad():
        grouped = conv(x, w)
        set_forms(conv, modconv="scaled")
        scaled = conv(x, w)
    torch.testing.assert_close(scaled, grouped, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("groups", [1, 3])
def test_phase_conv_transpose_equals_conv_transpose(groups):
    """Four sub-kernel convs, interleaved = the stride-2 transposed conv, with one zero row and
    column after it; a non-square input catches swapped axes, random kernels a flipped tap."""
    x = torch.randn(1, 4 * groups, 5, 7, dtype=torch.float64)
    weight = torch.randn(6 * groups, 4, 3, 3, dtype=torch.float64)  # conv2d layout [out, in / groups, k, k]
    transposed = weight.reshape(groups, 6, 4, 3, 3).transpose(1, 2).reshape(4 * groups, 6, 3, 3)
    expected = F.pad(F.conv_transpose2d(x, transposed, stride=2, groups=groups), [0, 1, 0, 1])
    torch.testing.assert_close(phase_conv_transpose(x, weight, groups), expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("modconv", ["grouped", "scaled"])
@pytest.mark.parametrize("fir", ["reference", "depthwise"])
def test_phase_upsampling_equals_transposed_upsampling(modconv, fir):
    torch.manual_seed(3)
    conv = ModulatedConv2d(8, 6, 3, 16, upsample=True).double()
    x, w = torch.randn(2, 8, 5, 5, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    with torch.no_grad():
        set_forms(conv, modconv=modconv, fir=fir)
        transposed = conv(x, w)
        set_forms(conv, upsample="phase")
        phased = conv(x, w)
    assert phased.shape == (2, 6, 10, 10)
    torch.testing.assert_close(phased, transposed, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("modconv", ["grouped", "scaled"])
def test_folded_upsampling_equals_transpose_then_blur(modconv):
    """The blur folded into the transposed conv's kernel against the official computation written out here:
    conv_transpose2d stride 2 (2H + 1), then upfirdn2d by its definition with pad (1, 1). An asymmetric blur
    kernel catches a flipped fold, a non-square input swapped axes, the bias one added before the blur."""
    torch.manual_seed(4)
    conv = ModulatedConv2d(4, 3, 3, 8, upsample=True).double()
    blur = torch.arange(1.0, 17.0, dtype=torch.float64).reshape(4, 4) / 34
    bias = torch.randn(3, dtype=torch.float64)
    with torch.no_grad():
        conv.blur.kernel.copy_(blur)
    x, w = torch.randn(2, 4, 5, 7, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    set_forms(conv, modconv=modconv, fir="depthwise", upsample="folded")
    with torch.no_grad():
        actual = conv(x, w, bias=bias).numpy()
        weights = _modulated_weights(conv, w)
        for b in range(2):
            up = F.conv_transpose2d(x[b : b + 1], weights[b].transpose(0, 1), stride=2)[0].numpy()
            for c in range(3):
                expected = upfirdn2d_by_definition(up[c], blur.numpy(), 1, 1, (1, 1)) + bias[c].item()
                np.testing.assert_allclose(actual[b, c], expected, atol=1e-10)
    assert actual.shape == (2, 3, 10, 14)


def _random_constants(module: torch.nn.Module) -> None:
    """Biases and noise strengths are zero in a fresh model: random ones, so that misplacing them shows."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias") and "modulation" not in name or name == "noise.weight":
                parameter.copy_(torch.randn_like(parameter))


@pytest.mark.parametrize("modconv", ["grouped", "scaled"])
@pytest.mark.parametrize("upsample", [False, "transpose", "phase", "folded"])
def test_folded_constants_equal_the_official_layers(modconv, upsample):
    """The activation's √2 and the biases folded (into the demodulation factor, the noise, the convs) against
    the official forms: a styled conv, and a ToRGB (whose bias the 1×1 conv adds)."""
    torch.manual_seed(5)
    layer = StyledConv(8, 6, upsample=bool(upsample)).double()
    to_rgb = ToRGB(6).double()
    _random_constants(layer), _random_constants(to_rgb)
    size = 12 if upsample else 6  # the styled conv's output
    x, w = torch.randn(2, 8, 6, 6, dtype=torch.float64), torch.randn(2, 512, dtype=torch.float64)
    noise = torch.randn(1, 1, size, size, dtype=torch.float64)
    skip = torch.randn(2, 3, size // 2, size // 2, dtype=torch.float64)

    def run() -> torch.Tensor:
        out = layer(x, w, noise)
        return torch.cat([out.flatten(), to_rgb(out, w, skip).flatten()])

    with torch.no_grad():
        with official_forms(layer), official_forms(to_rgb):
            official = run()
        for module in (layer, to_rgb):
            set_forms(module, modconv=modconv, fir="depthwise", upsample=upsample or None, constants="folded")
        torch.testing.assert_close(run(), official, atol=1e-10, rtol=1e-10)


def test_a_gain_needs_demodulation():
    with pytest.raises(ValueError, match="does not demodulate"):
        ModulatedConv2d(2, 3, 1, 4, demodulate=False)(torch.ones(1, 2, 2, 2), torch.ones(1, 4), gain=2.0)


def test_unknown_forms_are_refused():
    with pytest.raises(ValueError, match="grouped"):
        set_forms(ModulatedConv2d(2, 2, 3, 4), modconv="fused")
    with pytest.raises(ValueError, match="depthwise"):
        set_forms(ModulatedConv2d(2, 2, 3, 4), fir="fft")
    with pytest.raises(ValueError, match="phase"):
        set_forms(ModulatedConv2d(2, 2, 3, 4), upsample="subpixel")
    with pytest.raises(ValueError, match="apart"):
        set_forms(StyledConv(2, 2), constants="fused")


@pytest.mark.parametrize("module", [Blur([1, 3, 3, 1], pad=(1, 1), upsample_factor=2), Upsample([1, 3, 3, 1])])
def test_depthwise_fir_forms_equal_reference_upfirdn2d(module):
    module = module.double()
    with torch.no_grad():
        module.kernel.copy_(torch.arange(16, dtype=torch.float64).reshape(4, 4))  # asymmetric: catches flips
    x = torch.randn(2, 5, 7, 7, dtype=torch.float64)
    reference = module(x)
    set_forms(module, fir="depthwise")
    torch.testing.assert_close(module(x), reference, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("size", [64, 128, 256, 512, 1024])
def test_pool_to_256_equals_official_face_pool(size):
    image = torch.randn(1, 3, size, size)
    torch.testing.assert_close(pool_to_256(image), torch.nn.AdaptiveAvgPool2d((256, 256))(image))


def test_adaptive_pool_matrix_equals_adaptive_avg_pool():
    x = torch.randn(2, 5, 16, 16, dtype=torch.float64)
    pool = AdaptiveAvgPoolMatrix(16, 7).double()
    torch.testing.assert_close(pool(x), torch.nn.AdaptiveAvgPool2d((7, 7))(x))


@pytest.mark.parametrize("size", [16, 32])
def test_upsample_add_equals_the_official_resize_to_y_s_size(size):
    """upsample_add resizes at a constant scale of 2 (no shapes in the exported graph); the official code
    resizes to y's size: with corners aligned both read the same source positions, to the bit."""
    x, y = torch.randn(2, 8, size, size), torch.randn(2, 8, 2 * size, 2 * size)
    official = F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=True) + y
    assert torch.equal(upsample_add(x, y), official)
