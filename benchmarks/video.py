"""Video frames/s end to end on this machine: a 10-second 720p clip made from scikit-image's astronaut
(moving, turning and zooming, with an audio track) through `run_video`, per backend and precision, with
the time split between decode + align, generate (encode + synthesize), paste and encode.

    .venv/bin/python benchmarks/video.py --size 256 --backend openvino --precision fp32

writes benchmarks/results/<machine>-video.{json,md}. The output is decoded back and checked against the
input: frame count, frame rate, size and audio duration.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
from common import RESULTS, WORK, bundle, checkpoint, save_json, say
from skimage import data

from psp_deploy.machine import cpu_info, library_versions, machine_slug
from psp_deploy.runtime import Pipeline
from psp_deploy.runtime.backends import resolve_backend
from psp_deploy.runtime.video import VideoInfo, VideoWriter, probe
from psp_deploy.runtime.video_job import VideoOptions, run_video

WIDTH, HEIGHT, FPS, SECONDS = 1280, 720, 25, 10


def clip(path: Path) -> Path:
    """The astronaut's face drifting, turning ±4° and zooming ±10% over a grey background, with a tone."""
    import av

    if path.exists():
        return path
    face = data.astronaut()
    frames = FPS * SECONDS
    tmp = path.with_suffix(".silent.mp4")
    with VideoWriter(tmp, VideoInfo.new(WIDTH, HEIGHT, FPS)) as writer:
        for i in range(frames):
            t = i / FPS
            matrix = cv2.getRotationMatrix2D((256, 256), 4 * np.sin(t), 1.0 + 0.1 * np.sin(0.7 * t))
            matrix[:, 2] += (WIDTH / 2 - 256 + 150 * np.sin(0.5 * t), HEIGHT / 2 - 256 + 40 * np.cos(0.9 * t))
            writer.write(cv2.warpAffine(face, matrix, (WIDTH, HEIGHT), borderValue=(90, 90, 90)))
    with av.open(str(tmp)) as source, av.open(str(path), "w") as out:  # the same frames plus 10 s of a tone
        video = out.add_stream_from_template(source.streams.video[0])
        sound = out.add_stream("aac", rate=44100, layout="stereo")
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = video
                out.mux(packet)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(44100 * SECONDS) / 44100)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            block = av.AudioFrame.from_ndarray(np.stack([tone[start : start + 1024]] * 2), "fltp", "stereo")
            block.sample_rate, block.pts = 44100, start
            out.mux(sound.encode(block))
        out.mux(sound.encode(None))
    tmp.unlink()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="synthetic checkpoint output size")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch", type=int, default=8, help="faces per synthesis batch")
    args = parser.parse_args()
    source = clip(WORK / "astronaut-720p.mp4")
    root = bundle(checkpoint(args.size), "scaled")
    backend = resolve_backend(args.backend, "cpu", args.precision)
    output = WORK / f"astronaut-720p.{backend}.{args.precision}.mp4"
    output.unlink(missing_ok=True)
    with Pipeline.from_bundle(root, backend, args.precision) as pipeline:
        say(f"{backend} {args.precision}: {WIDTH}x{HEIGHT}, {SECONDS} s at {FPS} fps, {args.size}² model")
        started = time.perf_counter()
        summary = run_video(pipeline, source, output, VideoOptions(batch=args.batch))
        wall = time.perf_counter() - started
    before, after = probe(source), probe(output)
    kept = {
        "frames": (before.frames, after.frames),
        "fps": (str(before.fps), str(after.fps)),
        "size": ((before.width, before.height), (after.width, after.height)),
        "audio_s": (before.audio.duration if before.audio else None, after.audio.duration if after.audio else None),
    }
    results = {
        "command": f"benchmarks/video.py --size {args.size} --backend {args.backend} --precision {args.precision}",
        "machine": {"cpu": cpu_info()["model"], "cores": len(os.sched_getaffinity(0))},
        "versions": library_versions(),
        "backend": backend,
        "precision": args.precision,
        "model": f"synthetic {args.size}² FFHQ encode, scaled",
        "frames": summary.frames,
        "faces": summary.faces,
        "frames_without_face": summary.frames_without_face,
        "seconds": wall,
        "frames_per_s": summary.frames / wall,
        "stage_seconds": summary.stage_seconds,
        "kept": kept,
        "load_average_after": os.getloadavg(),  # other work on the machine slows every stage: read it beside the rate
    }
    path = save_json(results, "-video")
    lines = [
        f"# Video end to end: {results['machine']['cpu']}, {results['machine']['cores']} cores",
        "",
        f"`{results['command']}`: {WIDTH}×{HEIGHT}, {SECONDS} s at {FPS} fps, {results['model']}, {backend} "
        f"{args.precision}.",
        "",
        f"- {summary.frames} frames in {wall:.1f} s: **{results['frames_per_s']:.2f} frames/s**; "
        f"{summary.faces} faces, {summary.frames_without_face} frames without a face",
        "- where the time went: "
        + ", ".join(f"{k} {v:.1f} s ({v / wall:.0%})" for k, v in summary.stage_seconds.items()),
        f"- kept (input, output): {kept}",
        f"- load average when it ended (1, 5, 15 min): {results['load_average_after']}",
    ]
    (RESULTS / f"{machine_slug()}-video.md").write_text("\n".join(lines) + "\n")
    say(f"wrote {path}")


if __name__ == "__main__":
    main()
