"""Videos in and out, one frame at a time, with PyAV (FFmpeg in its wheels; the `video` extra).

VideoReader decodes a file's first video track to upright RGB frames (its display rotation applied)
with their timestamps; VideoWriter encodes frames back with the source's frame rate, timestamps,
size, rotation (stored as the source stored it: turned back, same display matrix) and colour tags,
and copies its audio track packet for packet, interleaved as the frames arrive. Neither holds more
than a frame or two; ``prefetched`` decodes ahead in a thread through a bounded queue, and
``track_faces`` locates, follows and smooths every frame's faces (smoothing.py) with a delay of a
few frames. Bad input is an InputError naming the file: missing, not a video, no video track, a
track that does not decode, a frame size that changes mid-stream. No torch.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError, MissingDependencyError, OutputError
from ..files import new_file_mode, require_writable
from .align import AlignedFace, FaceAligner, LocatedFace
from .smoothing import FaceTracker

VIDEO_EXTRA_HINT = "install the video extra: pip install 'psp-deploy[video]' (PyAV)"
DEFAULT_CODEC = "libx264"
DEFAULT_CRF = 18  # x264's constant quality: visually lossless for most footage
DEFAULT_PRESET = "medium"
AUDIO_LEAD = 1.0  # s: audio is muxed up to this far past the last video frame written
FALLBACK_FPS = Fraction(25)  # a track that states no frame rate (rare: raw streams)

T = TypeVar("T")


def _av() -> Any:
    try:
        import av
    except ImportError as err:
        raise MissingDependencyError(f"video needs PyAV; {VIDEO_EXTRA_HINT}") from err
    return av


@dataclass(frozen=True)
class AudioInfo:
    codec: str
    sample_rate: int
    channels: int
    duration: float | None  # seconds, as the container states


@dataclass(frozen=True)
class VideoInfo:
    path: Path | None  # None: frames made from scratch (VideoInfo.new)
    width: int  # as displayed: the decoded frames' size after the rotation
    height: int
    rotation: int  # display rotation, degrees counter-clockwise: 0, 90, 180 or 270
    fps: Fraction  # the track's average frame rate
    time_base: Fraction  # the unit of Frame.pts
    frames: int | None  # as the container states; None when it does not
    duration: float | None  # the video track's, seconds
    codec: str
    pix_fmt: str
    colorspace: int  # FFmpeg's colour tags of the first frame, written back as they were
    color_range: int
    color_primaries: int
    color_trc: int
    audio: AudioInfo | None  # the first audio track, copied by VideoWriter
    comment: str | None = None  # the container's comment tag (VideoWriter's ``comment``: what made the file)

    @classmethod
    def new(cls, width: int, height: int, fps: Fraction | float, rotation: int = 0) -> VideoInfo:
        """A video made from scratch for VideoWriter: no source file, no audio, untagged colours;
        frame k is at pts k (the time base is one frame)."""
        fps = Fraction(fps).limit_denominator(1001)
        unspecified = 2  # FFmpeg's AVCOL_SPC/PRI/TRC_UNSPECIFIED
        return cls(
            path=None,
            width=width,
            height=height,
            rotation=rotation,
            fps=fps,
            time_base=1 / fps,
            frames=None,
            duration=None,
            codec="",
            pix_fmt="yuv420p",
            colorspace=unspecified,
            color_range=0,
            color_primaries=unspecified,
            color_trc=unspecified,
            audio=None,
        )


@dataclass(frozen=True)
class Frame:
    index: int  # 0, 1, ... in decoding (presentation) order
    pts: int  # presentation time in VideoInfo.time_base units
    time: float  # seconds (pts × time_base)
    image: NDArray[np.uint8]  # RGB [height, width, 3], upright


def _quarter_turns(rotation: float, path: Path) -> int:
    if rotation % 90:
        raise InputError(f"{path}: a display rotation of {rotation:g}° is not a multiple of 90°")
    return int(rotation // 90) % 4


class VideoReader:
    """A video file's frames, upright RGB with timestamps, decoded one at a time. Opening decodes the
    first frame (a file that is not a video fails here); iterate once; close (or use ``with``)."""

    def __init__(self, path: str | Path) -> None:
        av = _av()
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a directory, not a video")
        try:
            self._container = av.open(str(self.path))
        except (av.error.FFmpegError, ValueError) as err:
            raise InputError(f"{self.path}: not a video FFmpeg can read ({_reason(err)})") from None
        try:
            if not self._container.streams.video:
                raise InputError(f"{self.path}: has no video track")
            self._stream = self._container.streams.video[0]
            if self._stream.codec_context is None:
                raise InputError(f"{self.path}: its video codec is one FFmpeg cannot decode")
            self._stream.thread_type = "AUTO"
            self._decoded = self._decode()
            first = next(self._decoded, None)
            if first is None:
                raise InputError(f"{self.path}: its video track has no frame that decodes")
            self.info = self._describe(first)
            self._first: Any = first
        except BaseException:
            self._container.close()
            raise

    def _decode(self) -> Generator[Any, None, None]:
        av, count = _av(), 0
        try:
            for packet in self._container.demux(self._stream):
                for frame in packet.decode():
                    count += 1
                    yield frame
        except av.error.FFmpegError as err:
            raise InputError(f"{self.path}: cannot decode the video after frame {count}: {_reason(err)}") from None

    def _describe(self, first: Any) -> VideoInfo:
        stream, turns = self._stream, _quarter_turns(first.rotation, self.path)
        width, height = (first.height, first.width) if turns % 2 else (first.width, first.height)
        duration = stream.duration * stream.time_base if stream.duration else None
        audio = None
        if self._container.streams.audio:
            track = self._container.streams.audio[0]
            seconds = float(track.duration * track.time_base) if track.duration else None
            context = track.codec_context
            audio = AudioInfo(context.name, context.sample_rate, context.channels, seconds)
        return VideoInfo(
            path=self.path,
            width=width,
            height=height,
            rotation=turns * 90,
            fps=Fraction(stream.average_rate or stream.guessed_rate or FALLBACK_FPS),
            time_base=Fraction(stream.time_base),
            frames=stream.frames or None,
            duration=float(duration) if duration else None,
            codec=stream.codec_context.name,
            pix_fmt=first.format.name,
            colorspace=int(first.colorspace),
            color_range=int(first.color_range),
            color_primaries=int(first.color_primaries),
            color_trc=int(first.color_trc),
            audio=audio,
            comment={k.lower(): v for k, v in self._container.metadata.items()}.get("comment"),
        )

    def __iter__(self) -> Iterator[Frame]:
        info, index, last_pts = self.info, 0, None
        first, self._first = ([self._first] if self._first is not None else []), None
        for raw in _chain(first, self._decoded):
            image = raw.to_ndarray(format="rgb24")
            turns = _quarter_turns(raw.rotation, self.path)
            if turns:
                image = np.ascontiguousarray(np.rot90(image, turns))
            if image.shape[:2] != (info.height, info.width):
                raise InputError(
                    f"{self.path}: frame {index} is {image.shape[1]}×{image.shape[0]}, the video started at "
                    f"{info.width}×{info.height}; videos whose frame size changes are not supported"
                )
            pts = raw.pts
            if pts is None:  # no timestamp (a raw stream): the frame rate's
                pts = round(index / info.fps / info.time_base)
            if last_pts is not None and pts <= last_pts:
                pts = last_pts + 1  # keep time moving forward for the encoder
            last_pts = pts
            yield Frame(index, pts, float(pts * info.time_base), image)
            index += 1

    def close(self) -> None:
        self._decoded.close()
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chain(first: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from first
    yield from rest


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err)


def probe(path: str | Path) -> VideoInfo:
    """What VideoReader says of a file (size, rotation, rate, audio, ...), decoding one frame."""
    with VideoReader(path) as reader:
        return reader.info


def read_frames(path: str | Path) -> Iterator[Frame]:
    """A video file's frames, upright RGB with their timestamps; the file is closed at the end."""
    with VideoReader(path) as reader:
        yield from reader


def prefetched(items: Iterable[T], depth: int = 8) -> Iterator[T]:
    """``items`` produced in a background thread at most ``depth`` ahead of the consumer: decoding
    (which releases the GIL) overlaps the work on earlier frames, memory stays bounded. Errors
    arrive in order; stopping early stops the thread."""
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        slots.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(("end", None))
        except BaseException as err:  # handed to the consumer, raised there
            slots.put(("error", err))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="psp-deploy-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while worker.is_alive():
            try:
                slots.get(timeout=0.1)  # unblock a producer waiting on a full queue
            except queue.Empty:
                pass
        worker.join()


class VideoWriter:
    """Frames (upright RGB, the source's size) encoded into ``path`` as ``like`` was made: frame rate,
    timestamps, rotation, colour tags, and with ``audio`` its audio track copied as it is.

    The file is written beside ``path`` and renamed onto it by ``close``, which also ends (and so
    keeps, playable) a video interrupted part-way; ``abort`` throws it away. With ``with``, an error
    or Ctrl-C inside the block still keeps the frames written, unless there were none."""

    def __init__(
        self,
        path: str | Path,
        like: VideoInfo,
        *,
        audio: bool = True,
        codec: str = DEFAULT_CODEC,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        comment: str | None = None,
    ) -> None:
        """``comment``: the container's comment tag, read back as ``VideoInfo.comment``."""
        av = _av()
        self.path, self.like = Path(path), like
        if like.path is not None and self.path.exists() and self.path.samefile(like.path):
            raise OutputError(f"{self.path} is the input video; write the output to another file")
        require_writable(self.path.parent)
        self._partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.frames_written = 0
        self._last_pts: int | None = None
        self._turns = like.rotation // 90
        try:
            self._out = av.open(str(self._partial), "w")
        except ValueError:
            raise OutputError(
                f"{self.path}: FFmpeg knows no video format for {self.path.suffix!r} (use .mp4, .mov or .mkv)"
            ) from None
        except OSError as err:
            raise OutputError(f"cannot write {self.path}: {_reason(err)}") from None
        self._audio_in: Any = None
        if comment is not None:
            self._out.metadata["comment"] = comment
        try:
            self._video = self._add_video(codec, crf, preset)
            if audio and like.audio is not None and like.path is not None:
                self._audio_in = av.open(str(like.path))
                source = self._audio_in.streams.audio[0]
                self._audio = self._out.add_stream_from_template(source)
                self._audio_packets = self._audio_in.demux(source)
            self._out.start_encoding()  # writes the header: a codec the format cannot hold fails here
            os.chmod(self._partial, new_file_mode())
        except av.error.FFmpegError as err:
            self.abort()
            what = f"{like.audio.codec} audio, {codec} video" if audio and like.audio else f"{codec} video"
            raise OutputError(f"{self.path}: cannot write {what} in this format ({_reason(err)}); try .mkv") from None
        except BaseException:
            self.abort()
            raise

    def _add_video(self, codec: str, crf: int, preset: str) -> Any:
        av, like = _av(), self.like
        try:
            stream = self._out.add_stream(codec, rate=like.fps)
        except (av.error.FFmpegError, ValueError) as err:  # no such encoder in this FFmpeg
            raise OutputError(f"cannot encode video with {codec!r}: {_reason(err)}") from None
        width, height = (like.height, like.width) if self._turns % 2 else (like.width, like.height)
        stream.width, stream.height = width, height
        # 4:2:0 halves the chroma: an odd width or height needs full chroma
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        stream.codec_context.time_base = like.time_base
        stream.codec_context.colorspace, stream.codec_context.color_range = like.colorspace, like.color_range
        stream.codec_context.color_primaries, stream.codec_context.color_trc = like.color_primaries, like.color_trc
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": preset}
        if like.rotation:
            stream.set_display_rotation(like.rotation)  # the source's display matrix, as it stored its frames
        return stream

    def write(self, image: NDArray[Any], pts: int | None = None) -> None:
        """One upright RGB frame at ``pts`` (the source's Frame.pts; default: the next frame's time at
        the source's frame rate). Timestamps must increase; a repeat is moved one tick on."""
        av, like = _av(), self.like
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.shape != (like.height, like.width, 3):
            raise InputError(
                f"expected a uint8 RGB frame [{like.height}, {like.width}, 3], got {image.dtype} {image.shape}"
            )
        if pts is None:
            pts = round(self.frames_written / like.fps / like.time_base)
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        stored = np.ascontiguousarray(np.rot90(image, -self._turns)) if self._turns else image
        frame = av.VideoFrame.from_ndarray(stored, format="rgb24").reformat(
            format=self._video.pix_fmt, dst_colorspace=like.colorspace or None, dst_color_range=like.color_range or None
        )
        frame.pts, frame.time_base = pts, like.time_base
        try:
            for packet in self._video.encode(frame):
                self._out.mux(packet)
            self._mux_audio(float(pts * like.time_base) + AUDIO_LEAD)
        except OSError as err:
            raise OutputError(f"cannot write {self.path}: {_reason(err)}") from None
        self._last_pts = pts
        self.frames_written += 1

    def _mux_audio(self, until: float | None) -> None:
        """Copy the source's audio packets up to ``until`` seconds (None: all that are left)."""
        if self._audio_in is None:
            return
        for packet in self._audio_packets:
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = self._audio
            self._out.mux(packet)
            if until is not None and packet.pts is not None and packet.pts * packet.time_base > until:
                return

    def close(self) -> Path:
        """Finish the file (the encoder's last frames, the rest of the audio) and put it at ``path``."""
        if self._out is None:
            return self.path
        try:
            for packet in self._video.encode(None):
                self._out.mux(packet)
            self._mux_audio(None)
            self._out.close()
        except OSError as err:
            self.abort()
            raise OutputError(f"cannot write {self.path}: {_reason(err)}") from None
        finally:
            self._close_audio_source()
        self._out = None
        os.replace(self._partial, self.path)
        return self.path

    def abort(self) -> None:
        """Stop and throw the file away."""
        if self._out is not None:
            try:
                self._out.close()
            except Exception:  # noqa: BLE001 - the file goes anyway
                pass
            self._out = None
        self._close_audio_source()
        self._partial.unlink(missing_ok=True)

    def _close_audio_source(self) -> None:
        if self._audio_in is not None:
            self._audio_in.close()
            self._audio_in = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None and self.frames_written == 0:
            self.abort()
        else:
            self.close()


@dataclass(frozen=True)
class FrameFaces:
    frame: Frame
    faces: list[AlignedFace]  # cropped along the smoothed squares, left to right at detection
    tracks: list[int]  # each face's track (the same number while a face stays in view)
    skipped: list[LocatedFace]  # faces under the minimum size, left as they are


def track_faces(
    frames: Iterable[Frame],
    aligner: FaceAligner,
    fps: float,
    *,
    smoothing: str = "centred",
    every: bool = False,
    min_face: float = 0.0,
    **filter_options: float,
) -> Iterator[FrameFaces]:
    """Every frame with its faces aligned along squares smoothed over time (smoothing.FaceTracker:
    "centred", "causal" or "none"), in order, a few frames behind the input when centred. ``every``
    takes every face (else the one the aligner's policy picks); faces whose crop is under
    ``min_face`` px are skipped. A frame without a face comes with no faces."""
    tracker = FaceTracker(fps, smoothing, **filter_options)

    def crops(ready: list[Any]) -> Iterator[FrameFaces]:
        for tracked in ready:
            frame, skipped = tracked.payload
            found = len(tracked.faces) + len(skipped)
            faces = [aligner.crop(frame.image, f.landmarks, f.quad, f.box, found) for f in tracked.faces]
            yield FrameFaces(frame, faces, [f.track for f in tracked.faces], skipped)

    for frame in frames:
        kept, skipped = aligner.locate(frame.image, min_face, every)
        yield from crops(tracker.push(frame.time, kept, (frame, skipped)))
    yield from crops(tracker.flush())
