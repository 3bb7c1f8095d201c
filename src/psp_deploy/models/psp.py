"""The pSp network: encoder → W+ codes (+ latent_avg) → StyleGAN2 decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import POOLED_SIZE, STYLE_DIM, PspConfig
from .encoders import build_encoder
from .stylegan2 import Generator


def pool_to_256(image: torch.Tensor) -> torch.Tensor:
    """The official face_pool (AdaptiveAvgPool2d((256, 256))) for power-of-two sizes.

    At or above 256 the bins tile the image exactly (a k×k mean); below, each output
    bin holds a single input pixel, i.e. nearest-neighbour repetition.
    """
    size = image.shape[-1]
    if size >= POOLED_SIZE:
        factor = size // POOLED_SIZE
        return F.avg_pool2d(image, factor) if factor > 1 else image
    factor = POOLED_SIZE // size
    return image.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def style_mix(
    codes: torch.Tensor, latent_mask: Sequence[int], inject: torch.Tensor | None, alpha: float | None
) -> torch.Tensor:
    """Official pSp mixing: codes[:, i] = α·inject[:, i] + (1−α)·codes[:, i] for i in the mask.

    Without ``alpha`` the injected code replaces the original; without ``inject`` the
    masked codes become zero (both as the official forward does).
    """
    codes = codes.clone()
    for i in latent_mask:
        if inject is None:
            codes[:, i] = 0
        elif alpha is None:
            codes[:, i] = inject[:, i]
        else:
            codes[:, i] = alpha * inject[:, i] + (1 - alpha) * codes[:, i]
    return codes


class Psp(nn.Module):
    def __init__(self, config: PspConfig, latent_avg: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config)
        self.decoder = Generator(config.output_size, config.n_mlp, config.channel_multiplier)
        if latent_avg is None:
            latent_avg = torch.zeros(config.n_styles, STYLE_DIM)
        # Not in state_dict: official checkpoints keep latent_avg at the top level.
        self.register_buffer("latent_avg", latent_avg.expand(config.n_styles, STYLE_DIM).clone(), persistent=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch → W+ codes [B, n_styles, 512], latent_avg already added."""
        codes = self._w_plus(self.encoder(x))  # a W encoder's codes: the decoder would repeat them, so now
        if self.config.start_from_latent_avg:
            codes = codes + self.latent_avg
        return codes

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, 512] → w [B, 512] through PixelNorm and the 8-layer MLP."""
        return self.decoder.mapping(z)

    def synthesize(self, codes: torch.Tensor) -> torch.Tensor:
        """W+ codes [B, n_styles, 512] (or W [B, 512], repeated) → image [B, 3, R, R]."""
        return self.decoder.synthesis(self._w_plus(codes))

    def _w_plus(self, codes: torch.Tensor) -> torch.Tensor:
        """W [B, 512] repeated to W+ [B, n_styles, 512]; W+ as it is. Constant repeats: no Shape in the graph."""
        return codes[:, None, :].repeat(1, self.config.n_styles, 1) if codes.ndim == 2 else codes

    def forward(
        self,
        x: torch.Tensor,
        resize: bool = False,
        latent_mask: Sequence[int] | None = None,
        inject_latent: torch.Tensor | None = None,
        alpha: float | None = None,
    ) -> torch.Tensor:
        """Official pSp.forward with fixed noise. ``resize`` pools the output to 256²."""
        codes = self.encode(x)
        if latent_mask is not None:
            if inject_latent is not None and inject_latent.ndim == 2:
                inject_latent = inject_latent[:, None, :].expand(-1, self.config.n_styles, -1)
            codes = style_mix(codes, latent_mask, inject_latent, alpha)
        image = self.synthesize(codes)
        return pool_to_256(image) if resize else image
