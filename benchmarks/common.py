"""Shared set-up for the benchmark scripts: the synthetic 1024 checkpoint and its bundles, cached."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from psp_deploy.bundle import reusable_bundle
from psp_deploy.files import write_json
from psp_deploy.machine import machine_slug

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
RESULTS = HERE / "results"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def checkpoint(output_size: int = 1024) -> Path:
    from psp_deploy.models.synthetic import make_checkpoint

    path = WORK / f"psp_ffhq_encode_{output_size}.pt"
    if not path.exists():
        say(f"making a synthetic {output_size}² FFHQ-encode checkpoint")
        make_checkpoint(path, output_size=output_size, seed=0)
    return path


def bundle(ckpt: Path, modconv: str, batch: int = 1, upsample: str = "transpose") -> Path:
    """An exported bundle of ``ckpt``, reused while it matches the checkpoint."""
    from psp_deploy.export import export_bundle

    batched = f"-b{batch}" if modconv == "grouped" else ""
    out = WORK / f"{ckpt.stem}-{modconv}{batched}{'' if upsample == 'transpose' else '-' + upsample}"
    if reusable_bundle(ckpt, out) is not None:
        return out
    say(f"exporting {out.name}")
    export_bundle(ckpt, out, modconv=modconv, batch=batch, upsample=upsample, force=True, progress=say)
    return out


def own_copy(shared: Path, ckpt: Path, suffix: str) -> Path:
    """A copy of the shared bundle that one script writes into (others reuse, and may export again, the shared
    one): files hard-linked, the manifest copied (replaced on save, never edited); reused while it matches."""
    root = shared.with_name(f"{shared.name}-{suffix}")
    if reusable_bundle(ckpt, root) is None:
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(shared, root, copy_function=os.link)
        (root / "manifest.json").unlink()
        shutil.copy(shared / "manifest.json", root / "manifest.json")
    return root


def save_json(data: dict, name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{machine_slug()}{name}.json"
    write_json(path, data)
    return path
