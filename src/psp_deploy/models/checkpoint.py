"""Reading official pSp / e4e checkpoints safely and rebuilding the network they describe."""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ENCODER_TYPES, STYLE_DIM, PspConfig
from ..errors import CheckpointError, PspDeployError
from .psp import Psp

SUBNETS = ("encoder", "decoder")
DEFAULT_TASK_BY_LABEL_NC = {0: "ffhq_encode", 1: "celebs_sketch_to_face"}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without running any code it may contain (``load_weights_only``)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; give the checkpoint file (.pt) itself")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return _normalise(path, load_weights_only(path))


def load_weights_only(path: Path, what: str = "checkpoint", error: type[PspDeployError] = CheckpointError) -> Any:
    """What torch.save wrote at ``path``, loaded without running any code it may contain; refusals are
    ``error``s that call the file a ``what``.

    ``weights_only=True`` refuses every pickle global outside tensors and plain
    containers (argparse.Namespace is allowed: some trainers saved their options so).
    """
    _check_header(path, what, error)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise error(f"{path}: {_refusal(err, what)}") from err
    except Exception as err:  # noqa: BLE001 - garbage bytes can fail anywhere inside the unpickler
        raise error(f"{path}: not a readable PyTorch {what} (corrupt or truncated): {_first_line(err)}") from err


ZIP_MAGIC = b"PK\x03\x04"  # torch.save since 1.6
PICKLE_PROTO = b"\x80"  # the legacy format: a pickle of protocol 2 or later


def _check_header(path: Path, what: str, error: type[PspDeployError]) -> None:
    """Refuse files torch.save cannot have written before the unpickler reads them: it would
    take text for opcodes and call a notes file a pickle that asks to run code."""
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if not head.startswith((ZIP_MAGIC, PICKLE_PROTO)):
        raise error(
            f"{path}: not a PyTorch {what}: it starts with {head!r}, "
            "not with the zip archive or pickle header torch.save writes"
        )


def _refusal(err: pickle.UnpicklingError, what: str) -> str:
    """Why the safe unpickler stopped, in its own words only: torch's message also advises
    retrying with weights_only=False, which would run the very code refused here."""
    message = str(err)
    if found := re.search(r"GLOBAL (\S+?)\.?(?:\s|$)", message):
        return f"refused to load: the file asks to import {found.group(1)}, which no {what} needs (nothing was run)"
    if found := re.search(r"Unsupported operand (\d+)", message):
        opcode = bytes([int(found.group(1))])
        return f"refused to load: pickle opcode {opcode!r} is one torch.save never writes (corrupt, or it runs code)"
    detail = re.search(r"Can only [^\n]*|unsupported persistent id[^\n]*", message)
    reason = f" ({detail.group(0).strip()})" if detail else ""
    return f"refused to load: the file asks to build objects a {what} never needs{reason}"


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def _normalise(path: Path, ckpt: Any) -> dict[str, Any]:
    """→ {'state_dict': {...}, 'opts': {...}, 'latent_avg': Tensor | None}."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict with 'state_dict', found {type(ckpt).__name__}")
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not any(str(k).startswith("encoder.") for k in state):
        raise CheckpointError(f"{path}: not a pSp checkpoint (no 'state_dict' with encoder.* keys)")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entry {bad[0]!r} is not a tensor")
    opts = ckpt.get("opts", {})
    if isinstance(opts, argparse.Namespace):
        opts = vars(opts)
    if not isinstance(opts, dict):
        raise CheckpointError(f"{path}: 'opts' should be a dict of training options, found {type(opts).__name__}")
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(f"{path}: 'latent_avg' should be a tensor, found {type(latent_avg).__name__}")
    return {"state_dict": state, "opts": opts, "latent_avg": latent_avg}


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.fullmatch(k))})


def _required(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"state_dict has no {key!r}; is this a pSp checkpoint?")
    return state[key]


def _encoder_type_from_keys(state: dict[str, torch.Tensor]) -> str:
    if "encoder.styles.0.linear.weight" in state:
        return "GradualStyleEncoder"
    if "encoder.output_layer_2.3.weight" in state:
        return "BackboneEncoderUsingLastLayerIntoWPlus"
    return "BackboneEncoderUsingLastLayerIntoW"


def _declared(opts: dict[str, Any], found: int, *names: str) -> None:
    for name in names:
        if opts.get(name) is not None and int(opts[name]) != found:
            raise CheckpointError(f"opts[{name!r}] says {opts[name]} but the weights are for {found}")


def infer_config(ckpt: dict[str, Any]) -> PspConfig:
    """Read the configuration from ``opts``, cross-checked against the weights' shapes.

    Old files lack ``output_size`` (1024) and ``learn_in_w`` (False); e4e files name the
    output size ``stylegan_size``. Shapes win over absent options; contradictions fail.
    """
    state, opts = ckpt["state_dict"], ckpt["opts"]
    encoder_type = opts.get("encoder_type") or _encoder_type_from_keys(state)
    if encoder_type not in ENCODER_TYPES:
        raise CheckpointError(f"unsupported encoder_type {encoder_type!r}; supported: {', '.join(ENCODER_TYPES)}")
    input_nc = int(_required(state, "encoder.input_layer.0.weight").shape[1])
    _declared(opts, input_nc, "input_nc")
    n_rgb = _count(state, r"decoder\.to_rgbs\.(\d+)\.bias")
    output_size = 2 ** (n_rgb + 2)
    _declared(opts, output_size, "output_size", "stylegan_size")
    cm_key = "decoder.convs.6.conv.weight"
    channel_multiplier = int(state[cm_key].shape[1]) // 256 if cm_key in state else 2
    label_nc = int(opts.get("label_nc", 0 if input_nc == 3 else input_nc))
    task = opts.get("dataset_type") or DEFAULT_TASK_BY_LABEL_NC.get(label_nc, "celebs_seg_to_face")
    try:
        return PspConfig(
            task=str(task),
            encoder_type=encoder_type,
            input_nc=input_nc,
            label_nc=label_nc,
            output_size=output_size,
            learn_in_w=bool(opts.get("learn_in_w", False)),
            start_from_latent_avg=bool(opts.get("start_from_latent_avg", ckpt["latent_avg"] is not None)),
            channel_multiplier=channel_multiplier,
            n_mlp=_count(state, r"decoder\.style\.(\d+)\.weight"),
        )
    except ValueError as err:
        raise CheckpointError(f"inconsistent checkpoint: {err}") from err


def _latent_avg(config: PspConfig, latent_avg: torch.Tensor | None) -> torch.Tensor | None:
    if not config.start_from_latent_avg:
        return None
    if latent_avg is None:
        raise CheckpointError("opts say start_from_latent_avg but the file has no 'latent_avg'")
    rows = 1 if config.learn_in_w else config.n_styles
    ok = latent_avg.shape in (torch.Size([STYLE_DIM]), torch.Size([1, STYLE_DIM]), torch.Size([rows, STYLE_DIM]))
    if not ok:
        raise CheckpointError(
            f"latent_avg has shape {list(latent_avg.shape)}; expected [{rows}, {STYLE_DIM}], "
            f"[1, {STYLE_DIM}] or [{STYLE_DIM}]"
        )
    return latent_avg.float().reshape(-1, STYLE_DIM)


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], prefix: str) -> None:
    """load_state_dict(strict=True) with one error that lists every mismatch by key and shape."""
    expected = module.state_dict()
    problems = [
        f"missing key {prefix}{k} (expected shape {list(v.shape)})" for k, v in expected.items() if k not in state
    ]
    problems += [f"unexpected key {prefix}{k}" for k in state if k not in expected]
    problems += [
        f"{prefix}{k}: expected shape {list(v.shape)}, found {list(state[k].shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise CheckpointError("state_dict does not match the architecture: " + "; ".join(problems[:8]) + more)
    module.load_state_dict(state, strict=True)


def split_state(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The official get_keys: entries under ``name.`` with the prefix stripped."""
    return {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}


def build_psp(ckpt: dict[str, Any]) -> Psp:
    config = infer_config(ckpt)
    stray = sorted({k.split(".")[0] for k in ckpt["state_dict"]} - set(SUBNETS))
    if stray:
        raise CheckpointError(f"state_dict has keys outside encoder./decoder.: {stray}")
    net = Psp(config, _latent_avg(config, ckpt["latent_avg"]))
    for name in SUBNETS:
        load_strict(getattr(net, name), split_state(ckpt["state_dict"], name), name + ".")
    return net.eval()


def load_psp(path: str | Path, device: str | torch.device = "cpu") -> Psp:
    """An official pSp / e4e checkpoint → the network in eval mode, strictly loaded."""
    return build_psp(read_checkpoint(path)).to(device)
