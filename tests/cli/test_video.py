"""`psp-deploy video` and run_video: a real clip through the real pipeline, what comes out, and refusals."""

import cv2
import numpy as np
import pytest
from skimage import data
from typer.testing import CliRunner

from psp_deploy.cli import app
from psp_deploy.errors import OutputError
from psp_deploy.runtime import Pipeline
from psp_deploy.runtime.video import probe, read_frames
from psp_deploy.runtime.video_job import VideoOptions, run_video
from tests.runtime import test_video as clips

pytest.importorskip("av")
pytestmark = pytest.mark.xdist_group("rgb")  # reads the RGB bundle (tests/conftest.py)
FRAMES, SIZE = 10, (320, 240)


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory):
    """The astronaut's face drifting right by 2 px a frame, 10 frames at 25 fps, with 0.6 s of audio."""
    photo = cv2.resize(data.astronaut()[:300, 100:400], (300, 300), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(FRAMES):
        shift = np.float32([[1, 0, 2 * i], [0, 1, 0]])
        frames.append(cv2.warpAffine(photo, shift, SIZE, borderMode=cv2.BORDER_REFLECT))
    return clips.encode(tmp_path_factory.mktemp("clip") / "face.mp4", frames, fps=25, audio_seconds=0.6)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_video_keeps_frames_rate_size_and_audio_and_changes_only_the_face(bundles, face_clip, tmp_path):
    root = bundles("rgb-scaled")[0].root
    out = tmp_path / "out.mp4"
    done = invoke("video", root, face_clip, "-o", out, "--backend", "onnxruntime", "--batch-size", "4")
    assert done.exit_code == 0, done.output
    assert f"done: {FRAMES} frames" in done.output and f"{FRAMES} faces" in done.output, done.output
    source, made = probe(face_clip), probe(out)
    assert (made.frames, made.fps, made.width, made.height) == (FRAMES, source.fps, *SIZE)
    assert made.audio is not None and made.audio.duration == pytest.approx(source.audio.duration, abs=0.05)
    before = [f.image.astype(int) for f in read_frames(face_clip)]
    after = [f.image.astype(int) for f in read_frames(out)]
    with Pipeline.from_bundle(root) as pipeline:
        face = pipeline.aligner.align(before[0].astype(np.uint8))
    x0, y0 = face.quad.min(0).astype(int)
    x1, y1 = face.quad.max(0).astype(int)
    inside = np.abs(after[0][y0:y1, x0:x1] - before[0][y0:y1, x0:x1]).mean()
    corner = np.abs(after[0][:40, -60:] - before[0][:40, -60:]).mean()  # far from the face: only re-encoding
    assert inside > 10 * corner and corner < 2, (inside, corner)


def test_frames_without_a_face_pass_through_and_are_counted(bundles, tmp_path):
    root = bundles("rgb-scaled")[0].root
    clip = clips.encode(tmp_path / "plain.mp4", [clips.pattern(i, 96, 128) for i in range(6)])
    with Pipeline.from_bundle(root) as pipeline:
        summary = run_video(pipeline, clip, tmp_path / "out.mkv")
    assert (summary.frames, summary.frames_without_face, summary.faces) == (6, 6, 0)
    assert probe(tmp_path / "out.mkv").frames in (6, None)  # Matroska states no count: decode to count
    assert len(list(read_frames(tmp_path / "out.mkv"))) == 6


def test_a_stop_keeps_a_playable_video_of_the_frames_done(bundles, face_clip, tmp_path):
    with Pipeline.from_bundle(bundles("rgb-scaled")[0].root) as pipeline:
        summary = run_video(pipeline, face_clip, tmp_path / "out.mp4", VideoOptions(batch=3), stop=lambda: True)
    assert summary.stopped and summary.frames == 3
    assert len(list(read_frames(tmp_path / "out.mp4"))) == 3


def test_video_refusals_name_the_problem_and_write_nothing(bundles, face_clip, tmp_path):
    root = bundles("rgb-scaled")[0].root
    (tmp_path / "taken.mp4").write_bytes(b"keep me")
    cases = {
        "exists; pass --resume to continue it or --overwrite": ("-o", tmp_path / "taken.mp4"),
        "is the input video": ("-o", face_clip),
    }
    for message, args in cases.items():
        done = invoke("video", root, face_clip, *args, "--backend", "onnxruntime")
        assert done.exit_code == 2 and message in done.output, done.output
    assert (tmp_path / "taken.mp4").read_bytes() == b"keep me"
    missing = invoke("video", root, tmp_path / "nope.mp4", "-o", tmp_path / "o.mp4", "--backend", "onnxruntime")
    assert missing.exit_code == 2 and "nope.mp4" in missing.output, missing.output
    sketch = invoke("video", bundles("sketch-scaled")[0].root, face_clip, "-o", tmp_path / "s.mp4")
    assert sketch.exit_code == 2 and "takes no photos" in sketch.output, sketch.output
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "s.mp4").exists()


def test_resume_continues_a_stopped_video_and_refuses_another_one(bundles, face_clip, tmp_path):
    root = bundles("rgb-scaled")[0].root
    whole, stopped = tmp_path / "whole.mp4", tmp_path / "stopped.mp4"
    with Pipeline.from_bundle(root) as pipeline:
        run_video(pipeline, face_clip, whole, VideoOptions(batch=3))
        first = run_video(pipeline, face_clip, stopped, VideoOptions(batch=3), stop=lambda: True)
        assert first.stopped and first.frames == 3
        with pytest.raises(OutputError, match=r"other settings.*options"):
            run_video(pipeline, face_clip, stopped, VideoOptions(batch=3, mask="square"), resume=True)
        with pytest.raises(OutputError, match="was not made by psp-deploy video"):
            run_video(pipeline, face_clip, face_clip, resume=True)
        done = run_video(pipeline, face_clip, stopped, VideoOptions(batch=3), resume=True)
    assert (done.resumed, done.frames, done.stopped) == (3, FRAMES, False)
    resumed, uninterrupted = list(read_frames(stopped)), list(read_frames(whole))
    assert len(resumed) == FRAMES
    for a, b in zip(resumed[3:], uninterrupted[3:], strict=True):  # made after the stop: a whole run's, to codec noise
        mse = np.mean((a.image.astype(float) - b.image) ** 2)
        assert 10 * np.log10(255**2 / mse) >= 35
    cli = invoke("video", root, face_clip, "-o", stopped, "--resume", "--overwrite")
    assert cli.exit_code == 2 and "choose one" in cli.output
