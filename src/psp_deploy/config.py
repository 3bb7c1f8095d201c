"""The model configuration shared by every stage (torch-free: the runtime reads it too)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import BundleError

ENCODER_TYPES = (
    "GradualStyleEncoder",
    "Encoder4Editing",
    "BackboneEncoderUsingLastLayerIntoW",
    "BackboneEncoderUsingLastLayerIntoWPlus",
)
OUTPUT_SIZES = (64, 128, 256, 512, 1024)
STYLE_DIM = 512
ENCODER_INPUT_SIZE = 256
POOLED_SIZE = 256


@dataclass(frozen=True)
class PspConfig:
    """What a pSp checkpoint is: everything needed to rebuild it and to feed it.

    ``task`` is the official ``dataset_type``. ``channel_multiplier`` is always 2 in the
    released models; smaller values exist for fast synthetic test models.
    """

    task: str = "ffhq_encode"
    encoder_type: str = "GradualStyleEncoder"
    input_nc: int = 3
    label_nc: int = 0
    output_size: int = 1024
    learn_in_w: bool = False
    start_from_latent_avg: bool = True
    channel_multiplier: int = 2
    n_mlp: int = 8

    def __post_init__(self) -> None:
        if self.encoder_type not in ENCODER_TYPES:
            raise ValueError(f"unknown encoder_type {self.encoder_type!r}; expected one of {ENCODER_TYPES}")
        if self.output_size not in OUTPUT_SIZES:
            raise ValueError(f"output_size must be one of {OUTPUT_SIZES}, got {self.output_size}")
        if self.label_nc not in (0, self.input_nc):
            raise ValueError(f"label_nc ({self.label_nc}) must be 0 or equal input_nc ({self.input_nc})")
        if self.learn_in_w != (self.encoder_type == "BackboneEncoderUsingLastLayerIntoW"):
            raise ValueError("learn_in_w goes with BackboneEncoderUsingLastLayerIntoW, and only with it")

    @property
    def n_styles(self) -> int:
        """Number of W+ style vectors (the generator's n_latent): 18 at 1024."""
        return 2 * int(math.log2(self.output_size)) - 2

    @property
    def input_kind(self) -> str:
        """How an input image becomes the encoder's tensor: rgb, sketch or segmentation."""
        if self.label_nc == 0:
            return "rgb"
        return "sketch" if self.label_nc == 1 else "segmentation"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PspConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"n_styles", "input_kind"}
        if unknown:
            raise BundleError(f"config has unknown fields {sorted(unknown)}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as err:
            raise BundleError(f"invalid config: {err}") from err


def channels_for(resolution: int, channel_multiplier: int) -> int:
    """Feature channels of the StyleGAN2 generator at one resolution (rosinality's table)."""
    table = {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * channel_multiplier,
        128: 128 * channel_multiplier,
        256: 64 * channel_multiplier,
        512: 32 * channel_multiplier,
        1024: 16 * channel_multiplier,
    }
    return table[resolution]
