"""Alignment speed per 1024² photo: the official procedure (PIL + scipy, full-size dlib detection
upsampled once) against psp-deploy's fast path, on the same photo.

    .venv/bin/python benchmarks/align.py [--runs 5]
"""

from __future__ import annotations

import argparse

from common import save_json, say

from psp_deploy.benchmark.harness import benchmark_photo
from psp_deploy.benchmark.official_align import official_align, official_landmarks
from psp_deploy.machine import cpu_info, library_versions
from psp_deploy.measure.timing import measure
from psp_deploy.runtime.align import FaceAligner, predictor_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    photo = benchmark_photo()
    predictor = str(predictor_path())
    aligner = FaceAligner()
    official = measure(lambda: official_align(photo, official_landmarks(photo, predictor)), 1, args.runs)
    fast = measure(lambda: aligner.align(photo), 1, args.runs)
    result = {
        "machine": cpu_info(),
        "versions": library_versions(),
        "photo": "astronaut upscaled to 1024x1024",
        "official_s": official.as_dict(),
        "fast_s": fast.as_dict(),
        "speedup_mean": official.mean / fast.mean,
    }
    say(f"official {official.mean:.3f}s  fast {fast.mean:.3f}s  speed-up {official.mean / fast.mean:.1f}x")
    say(f"written {save_json(result, '-align')}")


if __name__ == "__main__":
    main()
