"""Synthetic checkpoints in the exact official format, for tests and the demo.

No real weights can be downloaded here, so the project makes its own: seeded, in the
official file layout, with weights scaled so that activations stay finite and
informative through the whole network (random BatchNorm statistics or default conv
initialisations would make the encoder's codes collapse or explode).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ENCODER_INPUT_SIZE, PspConfig
from ..files import atomic_file
from .encoders import GradualStyleBlock
from .layers import FusedLeakyReLU, NoiseInjection
from .psp import Psp

CODE_DELTA_STD = 0.5  # spread of encoded codes around latent_avg, in units of w's own spread
IMAGE_STD = 0.5  # spread of synthesized pixels: mostly inside [-1, 1], as trained models are

TASKS = {0: "ffhq_encode", 1: "celebs_sketch_to_face", 19: "celebs_seg_to_face"}


def official_opts(config: PspConfig) -> dict:
    """Training options as the official coach saves them (vars(opts)), for this config."""
    opts = {
        "exp_dir": "experiments/synthetic",
        "dataset_type": config.task,
        "encoder_type": config.encoder_type,
        "input_nc": config.input_nc,
        "label_nc": config.label_nc,
        "output_size": config.output_size,
        "batch_size": 8,
        "test_batch_size": 8,
        "workers": 8,
        "test_workers": 8,
        "learning_rate": 0.0001,
        "optim_name": "ranger",
        "train_decoder": False,
        "start_from_latent_avg": config.start_from_latent_avg,
        "learn_in_w": config.learn_in_w,
        "lpips_lambda": 0.8,
        "id_lambda": 0.1,
        "l2_lambda": 1.0,
        "w_norm_lambda": 0.0,
        "lpips_lambda_crop": 0.0,
        "l2_lambda_crop": 0.0,
        "moco_lambda": 0.0,
        "stylegan_weights": "pretrained_models/stylegan2-ffhq-config-f.pt",
        "checkpoint_path": None,
        "max_steps": 500000,
        "image_interval": 100,
        "board_interval": 50,
        "val_interval": 1000,
        "save_interval": None,
        "resize_factors": None,
        "device": "cuda:0",
    }
    if config.encoder_type == "Encoder4Editing":  # e4e names the size differently and has no input_nc
        del opts["output_size"], opts["input_nc"], opts["label_nc"]
        opts["stylegan_size"] = config.output_size
    return opts


def _init_encoder(encoder: nn.Module) -> None:
    for m in encoder.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0.25, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.05)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.6, 1.0)
            nn.init.normal_(m.bias, std=0.1)
        elif isinstance(m, nn.PReLU):
            nn.init.uniform_(m.weight, 0.1, 0.3)


def _init_decoder(decoder: nn.Module) -> None:
    for m in decoder.modules():
        if isinstance(m, NoiseInjection):
            nn.init.uniform_(m.weight, 0.05, 0.2)
        elif isinstance(m, FusedLeakyReLU):
            nn.init.normal_(m.bias, std=0.1)


def _smooth_images(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.rand(n, channels, size // 8, size // 8, generator=generator) * 2 - 1
    return nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


@torch.no_grad()
def _calibrate_encoder(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Set every BN's running statistics to those of one pass over ``images``; return its codes.

    With momentum None the running statistics become exactly this batch's, so the
    pass in training mode computes what eval mode will compute afterwards.
    """
    bns = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    encoder.train()
    codes = encoder(images)
    encoder.eval()
    for bn in bns:
        bn.momentum = 0.1
    return codes


@torch.no_grad()
def _scale_heads(encoder: nn.Module, deltas: torch.Tensor, w_std: torch.Tensor) -> torch.Tensor:
    """Rescale the last linear layer(s) so code deltas spread like CODE_DELTA_STD·std(w)."""
    heads = [m.linear for m in encoder.modules() if isinstance(m, GradualStyleBlock)] or [encoder.linear]
    gain = CODE_DELTA_STD * w_std.mean() / deltas.std().clamp_min(1e-6)
    for linear in heads:
        linear.weight.mul_(gain)
        linear.bias.mul_(gain)
    return deltas * gain


@torch.no_grad()
def _scale_to_rgb(net: Psp, codes: torch.Tensor) -> None:
    """Scale the ToRGB layers so the image spreads like IMAGE_STD around zero.

    The image is a sum of ToRGB outputs (linear in their weights, biases still zero),
    so one synthesis tells the gain; the last bias then removes the per-channel mean.
    """
    to_rgbs = [net.decoder.to_rgb1, *net.decoder.to_rgbs]
    image = net.synthesize(codes)
    gain = IMAGE_STD / image.std().clamp_min(1e-6)
    for to_rgb in to_rgbs:
        to_rgb.conv.weight.mul_(gain)
    to_rgbs[-1].bias.copy_(-gain * image.mean(dim=(0, 2, 3)).reshape(1, 3, 1, 1))


def synthetic_psp(config: PspConfig, seed: int = 0) -> Psp:
    """A seeded network with realistic statistics; latent_avg = mean of mapping(z)."""
    torch.manual_seed(seed)
    net = Psp(config).eval()
    _init_encoder(net.encoder)
    _init_decoder(net.decoder)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        w = net.mapping(torch.randn(4096, 512, generator=gen))
        net.latent_avg.copy_(w.mean(0).expand_as(net.latent_avg))
    images = _smooth_images(2, config.input_nc, ENCODER_INPUT_SIZE, gen)
    deltas = _scale_heads(net.encoder, _calibrate_encoder(net.encoder, images), w.std(0))
    if deltas.ndim == 2:
        deltas = deltas[:, None, :]
    _scale_to_rgb(net, (net.latent_avg + deltas)[:1])
    return net


def make_checkpoint(path: str | Path, *, seed: int = 0, **config: Any) -> Path:
    """Write a synthetic checkpoint in the official format and return its path.

    ``config``: the PspConfig fields that differ from its defaults (output_size, encoder_type,
    input_nc, label_nc, channel_multiplier); the task follows label_nc, learn_in_w the encoder.
    Layout: {'state_dict': {'encoder.*', 'decoder.*'}, 'opts': {...}, 'latent_avg'}; e4e
    files also carry the training extras the real ones have (global_step, ...).
    """
    config.setdefault("task", TASKS.get(config.get("label_nc", 0), "celebs_seg_to_face"))
    config.setdefault("learn_in_w", config.get("encoder_type") == "BackboneEncoderUsingLastLayerIntoW")
    return save_checkpoint(synthetic_psp(PspConfig(**config), seed), path)


def save_checkpoint(net: Psp, path: str | Path) -> Path:
    """Write ``net`` as the official trainer does (atomically: no half-written file)."""
    config = net.config
    state = {f"{name}.{k}": v for name in ("encoder", "decoder") for k, v in getattr(net, name).state_dict().items()}
    latent_avg = net.latent_avg[:1].clone() if config.learn_in_w else net.latent_avg.clone()
    ckpt = {"state_dict": state, "opts": official_opts(config), "latent_avg": latent_avg}
    if config.encoder_type == "Encoder4Editing":
        ckpt.update(global_step=100000, best_val_loss=0.1, discriminator_state_dict=None, optimizer={})
    path = Path(path)
    with atomic_file(path) as f:
        torch.save(ckpt, f)
    return path
