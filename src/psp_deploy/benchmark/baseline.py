"""The official path, as the official code runs on a CPU: the baseline every figure is compared with.

The torch reference with its default forms is that algorithm: grouped modulated conv,
conv_transpose + blur and ToRGB upsampling through the reference upfirdn2d (zero
insertion, pad, convolution with the flipped kernel), bias + leaky ReLU unfused, FP32,
fixed noise. Alignment is the official procedure too (full-size dlib detection
upsampled once, PIL Lanczos shrink, scipy blur, PIL QUAD transform).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .timing import Latency, measure


def official_stages(checkpoint: Path, photo: np.ndarray, batch: int, threads: int | None) -> dict[str, Callable]:
    """Callables for each stage at ``batch``, ready to be timed."""
    import torch

    from ..models import load_psp
    from ..runtime.align import predictor_path
    from .official_align import official_align, official_landmarks

    if threads:
        torch.set_num_threads(threads)
    net = load_psp(checkpoint)
    x = torch.rand(batch, net.config.input_nc, 256, 256) * 2 - 1
    with torch.no_grad():
        codes = net.encode(x)
    predictor = str(predictor_path())

    def align() -> list[np.ndarray]:
        return [official_align(photo, official_landmarks(photo, predictor)) for _ in range(batch)]

    def encode() -> object:
        with torch.no_grad():
            return net.encode(x)

    def synthesize() -> object:
        with torch.no_grad():
            return net.synthesize(codes)

    def e2e() -> object:
        faces = np.stack(align()).astype(np.float32) / 255.0
        tensor = torch.from_numpy((faces - 0.5) / 0.5).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            images = net.synthesize(net.encode(tensor))
        return ((images.clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)

    return {"align": align, "encode": encode, "synthesize": synthesize, "e2e": e2e}


def time_official(
    checkpoint: Path, photo: np.ndarray, batch: int, stages: list[str], warmup: int, runs: int, threads: int | None
) -> dict[str, Latency]:
    fns = official_stages(checkpoint, photo, batch, threads)
    return {stage: measure(fns[stage], warmup, runs) for stage in stages}
