"""A sweep's cost per image against plain synthesis, and the README's sweep strip.

`run --sweep NAME:LOW:HIGH:STEPS` encodes each face once and synthesizes STEPS images from it, so its time
per image should be close to synthesizing the same number of codes. On the synthetic 256² scaled bundle
(SeFa directions of its own style weights), for 4 faces cut from scikit-image's astronaut:

    .venv/bin/python benchmarks/sweep.py --backend onnxruntime --steps 7 --runs 5

times, interleaved run by run, `Pipeline.generate` with the sweep (4 encodes + 28 syntheses, batches of
the pipeline's max batch) and `Pipeline.synthesize` of the 28 edited codes it made (the same batches),
and writes benchmarks/results/<machine>-sweep.{json,md} and docs/sweep-strip.jpg (each face's steps,
one row per face).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from common import bundle, checkpoint, own_copy, save_json, say
from skimage import data

from psp_deploy.directions import add_sefa
from psp_deploy.machine import cpu_info, library_versions
from psp_deploy.runtime import Pipeline, RunOptions, Sweep
from psp_deploy.runtime.io import write_image_atomic

DOCS = Path(__file__).resolve().parents[1] / "docs"
FACES = 4


def with_sefa(ckpt: Path) -> Path:
    """The 256² scaled bundle's own copy, with SeFa direction sefa0 of styles 0-5."""
    root = own_copy(bundle(ckpt, "scaled"), ckpt, "sweep")
    add_sefa(root, "0-5", top=1, name="sefa", force=True)
    return root


def faces() -> np.ndarray:
    """FACES different 256² crops of the astronaut (uint8), run without alignment: the encoder's own input."""
    photo = data.astronaut()
    return np.stack([photo[16 * k : 16 * k + 256, 24 * k : 24 * k + 256] for k in range(FACES)])


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--strength", type=float, default=15.0, help="the sweep runs from -STRENGTH to +STRENGTH")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    ckpt = checkpoint(256)
    root = with_sefa(ckpt)
    x = faces()
    row = RunOptions(align=False, sweep=Sweep("sefa0", -args.strength, args.strength, args.steps))
    with Pipeline.from_bundle(root, args.backend) as pipeline:
        generated = pipeline.generate(x, [row] * FACES)  # warm-up, and the codes plain synthesis is given
        codes = np.concatenate([out.mixed for out in generated.outputs])
        batches = [codes[i : i + pipeline.max_batch] for i in range(0, len(codes), pipeline.max_batch)]
        pipeline.synthesize(batches[0])
        tensors = np.stack([pipeline.prepare(face, align=False)[0] for face in x])
        loads, sweep_s, plain_s, encode_s = [load_average()], [], [], []
        for _ in range(args.runs):  # interleaved: a change in the machine's load hits all three alike
            started = time.perf_counter()
            pipeline.generate(x, [row] * FACES)
            sweep_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            for batch in batches:
                pipeline.synthesize(batch)
            plain_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            pipeline.encode(tensors)
            encode_s.append(time.perf_counter() - started)
        loads.append(load_average())
    strip = np.concatenate([np.concatenate(list(out.images), axis=1) for out in generated.outputs], axis=0)
    write_image_atomic(DOCS / "sweep-strip.jpg", strip)
    images = len(codes)
    sweep, plain = statistics.median(sweep_s) / images, statistics.median(plain_s) / images
    encode = statistics.median(encode_s) / images  # the FACES encodes, spread over every image
    results = {
        "machine": cpu_info(),
        "versions": library_versions(),
        "command": f"benchmarks/sweep.py --backend {args.backend} --steps {args.steps} --runs {args.runs}",
        "bundle": root.name,
        "backend": args.backend,
        "faces": FACES,
        "images": images,
        "max_batch": pipeline.max_batch,
        "load_average_before_after": loads,
        "seconds": {"sweep": sweep_s, "plain_synthesize": plain_s, "encode": encode_s},
        "per_image_s": {"sweep": sweep, "plain_synthesize": plain, "encode_share": encode},
        "sweep_over_plain": sweep / plain,
        "sweep_over_plain_plus_encode": sweep / (plain + encode),
    }
    path = save_json(results, "-sweep")
    write_markdown(results, path.with_suffix(".md"))
    say(f"sweep {sweep:.4f} s per image, plain synthesize {plain:.4f} s: ×{sweep / plain:.3f} → {path}")


def write_markdown(results: dict, path: Path) -> None:
    per = results["per_image_s"]
    lines = [
        f"# A sweep's time per image against plain synthesis: {results['machine']['model']}",
        "",
        f"- Command: `.venv/bin/python {results['command']}`",
        f"- Machine: {results['machine']['model']}, {results['machine']['logical_cores']} logical cores; load "
        f"average (1, 5, 15 min) before and after: {' → '.join(results['load_average_before_after'])}",
        f"- Bundle: {results['bundle']} (synthetic 256², scaled), {results['backend']} FP32, max batch "
        f"{results['max_batch']}; {results['faces']} faces, {results['images'] // results['faces']} steps each",
        "",
        "| | median s per image |",
        "|---|---:|",
        f"| `generate` with the sweep (encode once per face, synthesize every step) | {per['sweep']:.4f} |",
        f"| `synthesize` of the same {results['images']} codes | {per['plain_synthesize']:.4f} |",
        f"| `encode` of the {results['faces']} faces, spread over the {results['images']} images | "
        f"{per['encode_share']:.4f} |",
        f"| sweep ÷ plain synthesis | {results['sweep_over_plain']:.3f} |",
        f"| sweep ÷ (plain synthesis + encoder's share) | {results['sweep_over_plain_plus_encode']:.3f} |",
        "",
        "A sweep costs plain synthesis plus one encode per face spread over its steps; at 256² the encoder (256² "
        "input at every output size) is heavy beside the synthesis, so its share is larger than at 1024².",
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
