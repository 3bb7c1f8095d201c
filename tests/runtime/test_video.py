"""Video in and out (PyAV), faces followed and smoothed over frames, and bad video files."""

import subprocess
import sys
import threading
import time
from fractions import Fraction

import cv2
import numpy as np
import pytest
from skimage import data

from psp_deploy.errors import InputError, OutputError
from psp_deploy.runtime.align import FaceAligner
from psp_deploy.runtime.smoothing import FaceTracker, OneEuro, local_fit, quad_state, state_quad
from psp_deploy.runtime.video import VideoInfo, VideoReader, VideoWriter, prefetched, probe, read_frames, track_faces

av = pytest.importorskip("av")


def encode(path, frames, fps=25, rotation=0, audio_seconds=0.0, container_format=None):
    """A video as a camera or an editor would write it, made with PyAV directly: ``frames`` as
    stored, a display rotation, and ``audio_seconds`` of a 440 Hz tone in stereo AAC."""
    with av.open(str(path), "w", format=container_format) as out:
        video = out.add_stream("libx264", rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=44100, layout="stereo") if audio_seconds else None
        for frame in frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(video.encode(None))
        if sound is not None:
            tone = np.sin(2 * np.pi * 440 * np.arange(round(44100 * audio_seconds)) / 44100).astype(np.float32)
            for start in range(0, len(tone), 1024):
                block = av.AudioFrame.from_ndarray(np.stack([tone[start : start + 1024]] * 2) * 0.3, "fltp", "stereo")
                block.sample_rate, block.pts = 44100, start
                out.mux(sound.encode(block))
            out.mux(sound.encode(None))
    return path


def pattern(index: int, height: int = 64, width: int = 96) -> np.ndarray:
    """A frame whose content says which frame it is and which way is up: a red band on top."""
    frame = np.full((height, width, 3), 40, np.uint8)
    frame[:, : 8 + 2 * index] = 200
    frame[:8] = (255, 0, 0)
    return frame


@pytest.fixture(scope="module")
def phone_clip(tmp_path_factory):
    """45 frames at 30000/1001 fps stored sideways with a 90° display rotation, 1.5 s of audio."""
    frames = [pattern(i) for i in range(45)]
    path = tmp_path_factory.mktemp("video") / "phone.mp4"
    return encode(path, frames, Fraction(30000, 1001), rotation=90, audio_seconds=1.5)


def test_reader_gives_upright_frames_with_their_timestamps(phone_clip):
    info = probe(phone_clip)
    assert (info.width, info.height, info.rotation) == (64, 96, 90)  # stored 96×64, shown turned
    assert info.fps == Fraction(30000, 1001) and info.frames == 45 and info.audio.channels == 2
    frames = list(read_frames(phone_clip))
    assert len(frames) == 45 and [f.index for f in frames] == list(range(45))
    assert all(f.image.shape == (96, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    assert frames[0].image[:, :8, 0].mean() > 240 and frames[0].image[:, :8, 1].mean() < 15  # the band: left
    np.testing.assert_allclose([f.time for f in frames], np.arange(45) * 1001 / 30000, atol=1e-3)
    assert frames[1].time == float(frames[1].pts * info.time_base)


def test_round_trip_keeps_frames_rate_size_rotation_and_audio(phone_clip, tmp_path):
    info = probe(phone_clip)
    frames = list(read_frames(phone_clip))
    with VideoWriter(tmp_path / "out.mp4", info) as writer:
        for frame in frames:
            writer.write(frame.image, frame.pts)
    assert writer.frames_written == 45 and list(tmp_path.iterdir()) == [tmp_path / "out.mp4"]
    out = probe(tmp_path / "out.mp4")
    back = list(read_frames(tmp_path / "out.mp4"))
    assert len(back) == 45 and out.frames == 45
    assert (out.fps, out.width, out.height, out.rotation) == (info.fps, info.width, info.height, info.rotation)
    assert out.audio.codec == "aac" and out.audio.duration == pytest.approx(info.audio.duration, abs=1e-3)
    assert out.audio.duration == pytest.approx(1.5, abs=0.03)
    assert [b.pts * out.time_base for b in back] == [f.pts * info.time_base for f in frames]
    assert max(np.abs(a.image.astype(int) - b.image).mean() for a, b in zip(frames, back, strict=True)) < 3


@pytest.mark.parametrize("rotation,band", [(0, "top"), (90, "left"), (180, "bottom"), (270, "right")])
def test_every_quarter_turn_is_read_upright_and_written_back_as_stored(tmp_path, rotation, band):
    source = encode(tmp_path / "in.mp4", [pattern(i) for i in range(4)], rotation=rotation)
    info = probe(source)
    frames = list(read_frames(source))
    red = frames[0].image[..., 0].astype(int) - frames[0].image[..., 1]  # only the band is red
    edges = {"top": red[:6], "bottom": red[-6:], "left": red[:, :6], "right": red[:, -6:]}
    assert min(edges, key=lambda edge: -edges[edge].mean()) == band
    with VideoWriter(tmp_path / "out.mp4", info) as writer:
        for frame in frames:
            writer.write(frame.image, frame.pts)
    with av.open(str(tmp_path / "out.mp4")) as out:
        stored = out.streams.video[0].codec_context
        assert (stored.width, stored.height) == (96, 64)  # stored as the source stored it
    assert probe(tmp_path / "out.mp4").rotation == rotation


def test_frames_made_from_scratch_get_the_rate_s_timestamps(tmp_path):
    with VideoWriter(tmp_path / "new.mkv", VideoInfo.new(48, 32, 24)) as writer:
        for i in range(10):
            writer.write(pattern(i, 32, 48))
    info = probe(tmp_path / "new.mkv")
    assert (info.width, info.height, info.fps, info.audio) == (48, 32, 24, None)
    np.testing.assert_allclose([f.time for f in read_frames(tmp_path / "new.mkv")], np.arange(10) / 24, atol=1e-3)


def test_odd_sizes_are_written(tmp_path):
    with VideoWriter(tmp_path / "odd.mp4", VideoInfo.new(47, 33, 25)) as writer:
        writer.write(np.full((33, 47, 3), 90, np.uint8))
    assert next(read_frames(tmp_path / "odd.mp4")).image.shape == (33, 47, 3)


def test_an_interrupted_video_keeps_the_frames_done(tmp_path):
    with pytest.raises(KeyboardInterrupt), VideoWriter(tmp_path / "cut.mp4", VideoInfo.new(48, 32, 25)) as writer:
        for i in range(5):
            writer.write(pattern(i, 32, 48))
        raise KeyboardInterrupt
    assert len(list(read_frames(tmp_path / "cut.mp4"))) == 5 and list(tmp_path.iterdir()) == [tmp_path / "cut.mp4"]


def test_a_failure_before_any_frame_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "none.mp4", VideoInfo.new(48, 32, 25)):
        raise RuntimeError("no frames")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_the_input_as_output_and_unknown_formats(phone_clip, tmp_path):
    before = phone_clip.read_bytes()
    with pytest.raises(OutputError, match="is the input video"):
        VideoWriter(phone_clip, probe(phone_clip))
    assert phone_clip.read_bytes() == before
    with pytest.raises(OutputError, match="no video format for '.xyz'"):
        VideoWriter(tmp_path / "out.xyz", VideoInfo.new(48, 32, 25))
    with VideoWriter(tmp_path / "size.mp4", VideoInfo.new(48, 32, 25)) as writer:
        with pytest.raises(InputError, match=r"uint8 RGB frame \[32, 48, 3\]"):
            writer.write(np.zeros((48, 32, 3), np.uint8))
        writer.write(np.zeros((32, 48, 3), np.uint8))


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_a_full_disk_is_an_output_error_and_leaves_no_half_file(tmp_path):
    """The file size limit stands in for a full disk: writes fail with EFBIG as they would with ENOSPC."""
    code = (
        "import resource, signal, numpy as np\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "from psp_deploy.errors import OutputError\n"
        "from psp_deploy.runtime.video import VideoInfo, VideoWriter\n"
        "noise = np.random.default_rng(0).integers(0, 256, (50, 96, 128, 3), np.uint8)\n"
        "try:\n"
        "    with VideoWriter('full.mp4', VideoInfo.new(128, 96, 25)) as writer:\n"
        "        for frame in noise: writer.write(frame)\n"
        "except OutputError as err: print(err)\n"
    )
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cannot write full.mp4: File too large" and list(tmp_path.iterdir()) == []


def test_video_modules_need_neither_torch_nor_pyav_until_a_video_is_opened(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['av'] = None\n"
        "from psp_deploy.runtime import paste, smoothing, video\n"
        "from psp_deploy.errors import MissingDependencyError\n"
        "try: video.probe('clip.mp4')\n"
        "except MissingDependencyError as err: print(err)\n"
    )
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "video needs PyAV; install the video extra: pip install 'psp-deploy[video]' (PyAV)"


# --- bad input ----------------------------------------------------------------------------------------------------


def test_missing_and_directory_paths_are_named(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        probe(tmp_path / "nope.mp4")
    with pytest.raises(InputError, match="is a directory"):
        probe(tmp_path)


def test_corrupt_and_truncated_files_are_refused(phone_clip, tmp_path):
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
    with pytest.raises(InputError, match="noise.mp4: not a video FFmpeg can read"):
        probe(tmp_path / "noise.mp4")
    whole = phone_clip.read_bytes()
    (tmp_path / "half.mp4").write_bytes(whole[: len(whole) // 2])  # the index (moov) is at the end: lost
    with pytest.raises(InputError, match="half.mp4"):
        list(read_frames(tmp_path / "half.mp4"))


def test_audio_only_file_has_no_video_track(tmp_path):
    with av.open(str(tmp_path / "sound.m4a"), "w") as out:
        sound = out.add_stream("aac", rate=8000, layout="mono")
        block = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        block.sample_rate, block.pts = 8000, 0
        out.mux(sound.encode(block))
        out.mux(sound.encode(None))
    with pytest.raises(InputError, match="sound.m4a: has no video track"):
        probe(tmp_path / "sound.m4a")


def test_an_unknown_codec_is_named(tmp_path):
    with VideoWriter(tmp_path / "clip.mkv", VideoInfo.new(48, 32, 25)) as writer:
        writer.write(pattern(0, 32, 48))
    clip = (tmp_path / "clip.mkv").read_bytes()
    assert clip.count(b"V_MPEG4/ISO/AVC") == 1  # Matroska's codec ID, renamed to one no decoder knows
    (tmp_path / "odd.mkv").write_bytes(clip.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/AVC"))
    with pytest.raises(InputError, match="odd.mkv: its video codec is one FFmpeg cannot decode"):
        probe(tmp_path / "odd.mkv")


def test_a_frame_size_that_changes_is_refused(tmp_path):
    """Two raw H.264 streams of different sizes, one after the other (as a splice would make)."""
    for name, width in (("a", 64), ("b", 80)):
        encode(tmp_path / f"{name}.h264", [pattern(i, 48, width) for i in range(4)], container_format="h264")
    (tmp_path / "spliced.h264").write_bytes((tmp_path / "a.h264").read_bytes() + (tmp_path / "b.h264").read_bytes())
    with VideoReader(tmp_path / "spliced.h264") as reader:
        frames = iter(reader)
        assert [next(frames).index for _ in range(4)] == [0, 1, 2, 3]  # the frames before it are given
        with pytest.raises(InputError, match="frame 4 is 80×48, the video started at 64×48"):
            next(frames)


# --- prefetching ----------------------------------------------------------------------------------------------------


def test_prefetched_keeps_order_and_stays_bounded():
    made = []

    def produce():
        for i in range(50):
            made.append(i)
            yield i

    consumed = []
    for item in prefetched(produce(), depth=3):
        time.sleep(0.002)
        assert len(made) - len(consumed) <= 3 + 2  # the queue, one being put, one handed over
        consumed.append(item)
    assert consumed == list(range(50))


def test_prefetched_passes_errors_on_and_stops_its_thread():
    def failing():
        yield 1
        raise InputError("bad frame")

    with pytest.raises(InputError, match="bad frame"):
        list(prefetched(failing()))
    before = threading.active_count()
    stream = prefetched(iter(range(10_000)), depth=2)
    assert next(stream) == 0
    stream.close()  # the consumer stops early
    assert threading.active_count() <= before


# --- smoothing --------------------------------------------------------------------------------------------------------


def test_quad_state_round_trip_and_local_fit_follows_polynomials():
    quad = np.array([[10.0, 12.0], [8.0, 92.0], [88.0, 94.0], [90.0, 14.0]])
    np.testing.assert_allclose(state_quad(quad_state(quad)), quad)
    times = np.arange(9) / 25
    values = np.stack([3 + 2 * times - 5 * times**2, 7 - times], axis=1)
    for at in (0.0, 0.16, 0.32):  # the window's start, middle and end: no bias on a parabola
        np.testing.assert_allclose(local_fit(times, values, at, 0.1), [3 + 2 * at - 5 * at**2, 7 - at], atol=1e-9)


def test_one_euro_steadies_a_still_value_and_follows_a_moving_one():
    rng = np.random.default_rng(0)
    still, moving = OneEuro(), OneEuro()
    state = np.array([100.0, 100.0, 50.0, 0.0])
    out = [still(i / 25, state + rng.normal(0, 1, 4)) for i in range(100)]
    assert np.std(np.diff(np.array(out)[50:, 0])) < 0.3 * np.sqrt(2)  # raw: sqrt(2)
    track = [moving(i / 25, state + [4.0 * i, 0, 0, 0])[0] - 4.0 * i for i in range(100)]
    assert track[-1] > 100 - 4.0 * 2  # less than two frames behind a face moving 2 sizes per second


def test_tracker_refuses_bad_options():
    with pytest.raises(InputError, match="centred, causal, none"):
        FaceTracker(25, "kalman")
    with pytest.raises(InputError, match="positive"):
        FaceTracker(0)


# --- the acceptance check: a moving face, steadier smoothed ------------------------------------------------------

FRAMES, WIDTH, HEIGHT, FPS = 48, 320, 240, 25


def trajectory(t: float, centre: np.ndarray) -> np.ndarray:
    """The known smooth motion at frame t: zoom 0.95 → 1.07, a ±5° turn, 30 px across, 12 px up and down."""
    u = t / (FRAMES - 1)
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), 5.0 * np.sin(2 * np.pi * u), 0.95 + 0.12 * u)
    matrix[:, 2] += np.array([160 + 30 * np.sin(np.pi * u), 130 + 12 * np.sin(1.5 * np.pi * u)]) - centre
    return matrix


def moved(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner()


@pytest.fixture(scope="module")
def moving_clip(tmp_path_factory, aligner):
    """The astronaut moved along ``trajectory`` with sensor noise (σ 3 levels), encoded to H.264."""
    photo = data.astronaut()
    centre = aligner.align(photo).quad.mean(0)
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("moving") / "moving.mp4"
    with VideoWriter(path, VideoInfo.new(WIDTH, HEIGHT, FPS)) as writer:
        for i in range(FRAMES):
            frame = cv2.warpAffine(photo, trajectory(i, centre), (WIDTH, HEIGHT), borderMode=cv2.BORDER_REFLECT)
            writer.write(np.clip(frame + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8))
    return path, centre


@pytest.fixture(scope="module")
def located(moving_clip, aligner):
    """Each frame's detection, once: the filters are compared on the same detections."""
    frames = list(read_frames(moving_clip[0]))
    found = [aligner.locate(frame.image, every=False)[0] for frame in frames]
    assert [len(faces) for faces in found] == [1] * FRAMES
    return frames, found


def smoothed(found, smoothing):
    tracker = FaceTracker(FPS, smoothing)
    out = [t for i, faces in enumerate(found) for t in tracker.push(i / FPS, faces, i)] + tracker.flush()
    assert [t.payload for t in out] == list(range(FRAMES)) and {t.faces[0].track for t in out} == {0}
    return np.array([t.faces[0].quad for t in out]), tracker.delay


def test_smoothing_steadies_a_moving_face(moving_clip, located, record_property):
    """Jitter: the frame-to-frame change of (crop square − true square), RMS over frames of the mean
    corner move, in % of the square's side. The true square is the known motion applied to one
    square in the photo: the per-frame squares mapped back through the known motion, averaged."""
    _, centre = moving_clip
    raw = np.array([faces[0].quad for faces in located[1]])
    motion = [trajectory(i, centre) for i in range(FRAMES)]
    reference = np.mean([moved(q, cv2.invertAffineTransform(m)) for q, m in zip(raw, motion, strict=True)], axis=0)
    truth = np.array([moved(reference, m) for m in motion])
    side = np.hypot(*(raw[:, 3] - raw[:, 0]).T).mean()

    def jitter(quads):
        error = quads - truth
        step = np.linalg.norm(np.diff(error, axis=0), axis=2).mean(axis=1)
        return 100 * np.sqrt(np.mean(step**2)) / side

    def lag(quads):  # frames by which the squares trail the truth (best match of a delayed truth)
        settled = slice(8, None)
        shifts = np.arange(-3, 8, 0.05)
        misfit = [
            np.linalg.norm(
                quads[settled] - [moved(reference, trajectory(i - s, centre)) for i in range(8, FRAMES)], axis=2
            ).mean()
            for s in shifts
        ]
        return float(shifts[int(np.argmin(misfit))])

    centred, delay = smoothed(located[1], "centred")
    causal, _ = smoothed(located[1], "causal")
    numbers = {
        "per_frame_jitter_pct": jitter(raw),
        "centred_jitter_pct": jitter(centred),
        "causal_jitter_pct": jitter(causal),
        "centred_delay_frames": delay,
        "centred_lag_frames": lag(centred),
        "causal_lag_frames": lag(causal),
        "causal_lag_ms": 1000 * lag(causal) / FPS,
    }
    print("\nsteadiness on the moving clip:", {k: round(v, 3) for k, v in numbers.items()})
    for key, value in numbers.items():
        record_property(key, round(float(value), 3))  # xdist sends only Python numbers
    # measured: per frame 0.69 %; centred 0.085 % (8.1×, no lag, 7 frames held); causal 0.37 % (1.9×, 0.85 frames,
    # 34 ms, behind): on a moving face a causal filter trades steadiness for lag
    assert numbers["per_frame_jitter_pct"] >= 3 * numbers["centred_jitter_pct"]
    assert abs(numbers["centred_lag_frames"]) <= 0.25
    assert numbers["causal_jitter_pct"] < 0.75 * numbers["per_frame_jitter_pct"] and numbers["causal_lag_frames"] <= 1.5


def test_causal_smoothing_steadies_a_still_face(aligner, record_property):
    """A still face with fresh sensor noise each frame: what a stream filter is mostly for."""
    photo = data.astronaut()
    still = cv2.warpAffine(photo, trajectory(10, aligner.align(photo).quad.mean(0)), (WIDTH, HEIGHT))
    rng = np.random.default_rng(2)
    found = [
        aligner.locate(np.clip(still + rng.normal(0, 3, still.shape), 0, 255).astype(np.uint8), every=False)[0]
        for _ in range(FRAMES)
    ]
    raw = np.array([faces[0].quad for faces in found])

    def jitter(quads):
        return np.sqrt(np.mean(np.linalg.norm(np.diff(quads, axis=0), axis=2).mean(axis=1) ** 2))

    ratios = {mode: jitter(raw) / jitter(smoothed(found, mode)[0]) for mode in ("causal", "centred")}
    print("\nsteadiness on a still face (per-frame jitter ÷ smoothed):", {k: round(v, 1) for k, v in ratios.items()})
    record_property("still_causal_ratio", round(float(ratios["causal"]), 2))
    assert ratios["causal"] >= 3 and ratios["centred"] >= 3  # measured: 8.1× causal, 6.9× centred


def test_track_faces_crops_every_frame_along_the_smoothed_squares(moving_clip, located, aligner):
    frames, found = located
    centred, _ = smoothed(found, "centred")
    out = list(track_faces(read_frames(moving_clip[0]), aligner, FPS))
    assert [o.frame.index for o in out] == list(range(FRAMES))
    assert all(len(o.faces) == 1 and o.tracks == [0] and o.skipped == [] for o in out)
    np.testing.assert_allclose(np.array([o.faces[0].quad for o in out]), centred)
    assert out[5].faces[0].image.shape == (256, 256, 3)
    assert np.array_equal(out[5].frame.image, frames[5].image)
    none = list(track_faces(iter(frames[:3]), aligner, FPS, smoothing="none", min_face=10_000))
    assert [(len(o.faces), len(o.skipped)) for o in none] == [(0, 1)] * 3  # too small: skipped, named
