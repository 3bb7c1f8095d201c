"""The official path, as the official code runs it: the baseline every figure is compared with.

The torch reference with its default forms is that algorithm: grouped modulated conv,
conv_transpose + blur and ToRGB upsampling through the reference upfirdn2d (zero
insertion, pad, convolution with the flipped kernel), bias + leaky ReLU unfused, FP32,
fixed noise. Alignment is the official procedure too (full-size dlib detection
upsampled once, PIL Lanczos shrink, scipy blur, PIL QUAD transform).

On a GPU it runs eager on the same device, in IEEE FP32 (TF32 only when asked) and under
FP16 autocast; alignment is CPU work there as in the official code, so its stages start
from an aligned face and a CPU bench times alignment.

The same algorithm under torch.compile is the peer a user would pick instead of an engine: inductor,
the default mode, static shapes (one graph per batch size, compiled at its first call); under FP16
autocast with channels-last weights and inputs, the layout cuDNN's FP16 tensor-core convolutions want.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError

EAGER, COMPILED = "torch-official", "torch-compile"  # the backend names of their result rows


def load_official(checkpoint: Path, device: str, threads: int | None) -> Any:
    import torch

    from ..models import load_psp

    if threads:
        torch.set_num_threads(threads)
    return load_psp(checkpoint, device)


@contextlib.contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """cuDNN convolutions and CUDA matmuls in TF32 or IEEE FP32 while inside; the previous modes after.

    torch 2.9 added per-backend ``fp32_precision`` settings, and refuses to read the older
    ``allow_tf32`` flags once they disagree: use the newer where it exists, never both."""
    import torch

    conv, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(conv, "conv") and hasattr(conv.conv, "fp32_precision"):
        targets, name, value = (conv.conv, matmul), "fp32_precision", "tf32" if enabled else "ieee"
    else:
        targets, name, value = (conv, matmul), "allow_tf32", enabled
    before = [getattr(target, name) for target in targets]
    for target in targets:
        setattr(target, name, value)
    try:
        yield
    finally:
        for target, old in zip(targets, before, strict=True):
            setattr(target, name, old)


@contextlib.contextmanager
def _inference(device_type: str, half: bool) -> Iterator[None]:
    import torch

    with torch.no_grad(), torch.autocast(device_type, dtype=torch.float16, enabled=half):
        yield


@dataclass(frozen=True)
class Graphs:
    """How the official net's two graphs are called: eagerly, or compiled for inputs in one memory layout."""

    encode: Callable[[Any], Any]
    synthesize: Callable[[Any], Any]
    channels_last: bool = False

    def laid_out(self, x: Any) -> Any:
        import torch

        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


def channels_last_copy(net: Any) -> Any:
    """A copy of the net whose 4-D weights and buffers are NHWC. Module.to(memory_format=...) refuses the
    modulated convolutions' 5-D weights, [1, out, in, k, k]: they stay as they are."""
    import torch

    net = copy.deepcopy(net)
    for tensor in itertools.chain(net.parameters(), net.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return net


def compiled_graphs(net: Any, channels_last: bool) -> Graphs:
    """The net's encode and synthesize under torch.compile, one static graph per input shape; with
    ``channels_last``, those of its channels-last copy, for channels-last inputs."""
    import torch

    net = channels_last_copy(net) if channels_last else net
    encode, synthesize = (torch.compile(graph, dynamic=False) for graph in (net.encode, net.synthesize))
    return Graphs(encode, synthesize, channels_last)


@contextlib.contextmanager
def compiling(graphs: int) -> Iterator[None]:
    """Room for ``graphs`` more static graphs per compiled function (past dynamo's limit it would run the rest
    eagerly without a word: here it fails instead), and torch.compile's failures, which appear at a graph's
    first call (no C++ compiler for the CPU, no Triton for CUDA), as the package's error naming the cause."""
    import torch
    from torch._dynamo.exc import BackendCompilerFailed, FailOnRecompileLimitHit

    limit = torch._dynamo.config.recompile_limit + graphs
    with torch._dynamo.config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True):
        try:
            yield
        except (BackendCompilerFailed, FailOnRecompileLimitHit) as err:
            cause = str(err).strip().splitlines()[0]
            raise BackendUnavailableError(f"torch.compile failed here: {cause}") from None


def _aligner(photo: np.ndarray, batch: int) -> Callable[[], list[np.ndarray]]:
    from ..runtime.align import predictor_path
    from .official_align import official_align, official_landmarks

    predictor = str(predictor_path())
    return lambda: [official_align(photo, official_landmarks(photo, predictor)) for _ in range(batch)]


def official_stages(
    net: Any, photo: np.ndarray, face: np.ndarray, batch: int, half: bool = False, graphs: Graphs | None = None
) -> dict[str, Any]:
    """Callables for each stage at ``batch`` on the net's device, ready to be timed, calling ``graphs`` (the
    net's own, eager, by default); ``half`` runs them under FP16 autocast. On the CPU e2e aligns ``photo``; on
    a GPU it starts from ``face`` (256² uint8)."""
    import torch

    run = graphs or Graphs(net.encode, net.synthesize)
    device = next(net.parameters()).device
    x = torch.rand(batch, net.config.input_nc, 256, 256, device=device) * 2 - 1
    with _inference(device.type, half):
        codes = net.encode(x)  # eager: a synthesize stage alone compiles no encoder
    x = run.laid_out(x)
    align = _aligner(photo, batch) if device.type == "cpu" else None
    faces = align or (lambda: [face] * batch)

    def encode() -> object:
        with _inference(device.type, half):
            return run.encode(x)

    def synthesize() -> object:
        with _inference(device.type, half):
            return run.synthesize(codes)

    def e2e() -> object:
        pixels = np.stack(faces()).astype(np.float32) / 255.0
        tensor = run.laid_out(torch.from_numpy((pixels - 0.5) / 0.5).permute(0, 3, 1, 2)).to(device)
        with _inference(device.type, half):
            images = run.synthesize(run.encode(tensor))
        return ((images.float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8).cpu()  # down to the host, as ours

    stages = {"encode": encode, "synthesize": synthesize, "e2e": e2e}
    return {"align": align, **stages} if align else stages
