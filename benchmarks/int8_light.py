"""INT8 accuracy against how much of each graph stays in float: the study behind calibration's light nodes.

For each budget B, the lightest Conv/Gemm/MatMul nodes of each graph, together at most B of its
multiply-adds, stay in float and the rest is quantized (minmax, symmetric Q/DQ, no sensitivity rounds: the light-node
rule alone). Accuracy on held-back synthetic faces against FP32, all in ONNX Runtime on the CPU:
the encoder's worst codes cosine, the synthesis' mean PSNR on held-back codes, and end to end
(INT8 encoder → INT8 synthesis). Written to benchmarks/results/<cpu>-int8-<size>.{json,md}.

    .venv/bin/python benchmarks/int8_light.py [--size 256] [--budgets 0,0.001,0.01,0.05]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import RESULTS, bundle, checkpoint, save_json, say

from psp_deploy.bundle import Bundle
from psp_deploy.calibration.convert import sample_feeds
from psp_deploy.calibration.data import make_calibration_set
from psp_deploy.calibration.evaluate import open_graph, runner
from psp_deploy.calibration.int8 import light_nodes, quantize
from psp_deploy.calibration.report import code_accuracy, image_accuracy
from psp_deploy.files import atomic_file
from psp_deploy.machine import machine_slug
from psp_deploy.measure.flops import node_flops
from psp_deploy.runtime import Pipeline
from psp_deploy.runtime.backends.onnxruntime import OnnxRuntimeBackend

GRAPHS = ("encoder", "synthesis")


def study(root: Path, samples: int, budgets: list[float]) -> list[dict]:
    """One row per budget: the float share of each graph's work and the held-back accuracy."""
    bundle_ = Bundle.open(root)
    with Pipeline.from_bundle(root) as fp32:
        data = make_calibration_set(fp32, synthetic=samples, holdout=0.25, seed=0)
    images, codes = data.samples("encoder", True), data.samples("synthesis", True)
    with open_graph(bundle_, "encoder", "fp32") as e, open_graph(bundle_, "synthesis", "fp32") as s:
        ref_codes, synth = runner(e)(images), runner(s)
        ref_images, ref_e2e = synth(codes), synth(ref_codes)
    flops = {g: node_flops(bundle_.model_path(g), bundle_.record(g)) for g in GRAPHS}
    rows = []
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        for budget in budgets:
            say(f"budget {budget:g}: quantizing the encoder and the synthesis")
            row: dict = {"budget": budget}
            paths = {}
            for g in GRAPHS:
                light = light_nodes(flops[g], budget)
                row[f"{g}_float_share"] = sum(flops[g][n] for n in light) / sum(flops[g].values())
                row[f"{g}_float_nodes"] = len(light)
                src = bundle_.model_path(g)
                feeds = sample_feeds(data.samples(g), g, bundle_.record(g).batch)
                paths[g] = quantize(src, Path(tmp) / f"{g}-{budget:g}.onnx", feeds, "minmax", light)
            row.update(_accuracy(bundle_, paths, images, codes, ref_codes, ref_images, ref_e2e))
            rows.append(row)
    return rows


def _accuracy(bundle_: Bundle, paths: dict, images, codes, ref_codes, ref_images, ref_e2e) -> dict:
    opened = {g: OnnxRuntimeBackend(paths[g], bundle_.record(g), g) for g in GRAPHS}
    with opened["encoder"] as encoder, opened["synthesis"] as synthesis:
        test_codes = runner(encoder)(images)
        images_q, e2e_q = runner(synthesis)(codes), runner(synthesis)(test_codes)
    return {  # the calibration report's own measures
        "encoder_cosine_min": code_accuracy(ref_codes, test_codes, bundle_.latent_avg()).cosine_min,
        "synthesis_psnr_db": image_accuracy("synthesis", ref_images, images_q).psnr_db,
        "end_to_end_psnr_db": image_accuracy("end-to-end", ref_e2e, e2e_q).psnr_db,
    }


def markdown(rows: list[dict], size: int, samples: int, command: str) -> str:
    lines = [
        f"# INT8 accuracy against the work kept in float: FFHQ-encode {size}² (synthetic weights), {machine_slug()}",
        "",
        f"`{command}`. {samples} synthetic faces, a quarter held back; minmax, symmetric Q/DQ, no sensitivity "
        "rounds. Float share: the multiply-adds of the nodes left in float.",
        "",
        "| light budget | encoder float share (nodes) | synthesis float share (nodes) | encoder codes cosine (worst) "
        "| synthesis PSNR dB | end-to-end PSNR dB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['budget']:.1%} | {r['encoder_float_share']:.2%} ({r['encoder_float_nodes']}) "
            f"| {r['synthesis_float_share']:.2%} ({r['synthesis_float_nodes']}) | {r['encoder_cosine_min']:.4f} "
            f"| {r['synthesis_psnr_db']:.1f} | {r['end_to_end_psnr_db']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, choices=(256, 512, 1024))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--budgets", default="0,0.001,0.01,0.05", help="comma-separated shares of a graph's work")
    args = parser.parse_args()
    root = bundle(checkpoint(args.size), "scaled")
    rows = study(root, args.samples, [float(s) for s in args.budgets.split(",")])
    name = f"-int8-{args.size}"
    path = save_json({"size": args.size, "samples": args.samples, "rows": rows}, name)
    report = RESULTS / f"{machine_slug()}{name}.md"
    command = "python benchmarks/int8_light.py " + " ".join(sys.argv[1:])
    with atomic_file(report) as f:
        f.write(markdown(rows, args.size, args.samples, command.strip()).encode())
    say(f"results: {path}\nreport: {report}")


if __name__ == "__main__":
    main()
