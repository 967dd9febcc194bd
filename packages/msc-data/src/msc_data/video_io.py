"""Video decoding and encoding with PyAV (no system ffmpeg), DESIGN.md "Data".

`iter_video_frames` turns any file FFmpeg can read into RGB uint8 frames at a target
frame rate, resized so the short side is `size` and center-cropped to `size x size`.
Every failure (not a video, unreadable, no video stream, broken stream) is raised as
`VideoDecodeError` naming the path, so callers can skip the file with a reason instead
of showing a PyAV traceback.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import av
import av.error
import numpy as np

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".webm", ".mkv", ".mpg", ".mpeg", ".ogv", ".flv", ".wmv", ".3gp", ".ts", ".gif"}
)

# Timestamps are compared with a small tolerance: container time bases (e.g. 1/12800)
# do not represent k/fps exactly.
_TIME_EPS = 1e-6


class VideoDecodeError(ValueError):
    """A video could not be decoded; the message names the file and the reason."""


def _describe(err: BaseException) -> str:
    if isinstance(err, av.error.FFmpegError):
        return f"FFmpeg error: {err.strerror or err}"
    if isinstance(err, OSError):
        return f"{type(err).__name__}: {err.strerror or err}"
    return f"{type(err).__name__}: {err}"


def resize_crop_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Scaled `(width, height)` with short side `size`, and the `(left, top)` of the center crop."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    scale = size / min(width, height)
    new_w = max(size, round(width * scale))
    new_h = max(size, round(height * scale))
    return new_w, new_h, (new_w - size) // 2, (new_h - size) // 2


def _frame_duration(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> float | None:
    """How long `frame` is shown, in seconds, when the container says so."""
    duration, time_base = getattr(frame, "duration", None), frame.time_base or stream.time_base
    if not duration or time_base is None:
        return None
    return float(duration * time_base)


def shortest_frame_duration(path: str | Path) -> float | None:
    """The shortest time any frame of `path` is shown, in seconds (None when unknown).

    For a GIF (whose writers merge repeated frames into one longer frame) `1 / this` is
    the frame rate at which `iter_video_frames` returns every original frame.
    """
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            durations = [d for d in (_frame_duration(f, stream) for f in container.decode(stream)) if d]
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoDecodeError(f"{path}: decoding failed ({_describe(err)})") from None
    return min(durations) if durations else None


def iter_video_frames(path: str | Path, fps: float | None, size: int | None) -> Iterator[np.ndarray]:
    """RGB uint8 frames `(size, size, 3)` of `path` resampled to `fps` frames per second.

    Resampling keeps, for each target time k/fps, the latest source frame shown at that
    time (frames are dropped when downsampling and repeated when upsampling);
    `fps=None` keeps every frame. `size=None` keeps the native resolution.
    Raises `VideoDecodeError` (a ValueError) naming `path` on any decoding problem.
    """
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive or None (keep native rate), got {fps}")
    if size is not None and size <= 0:
        raise ValueError(f"size must be positive or None (keep native size), got {size}")
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoDecodeError(f"{path}: cannot open as a video ({_describe(err)})") from None
    try:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        native_fps = float(stream.average_rate) if stream.average_rate else None
        geometry: tuple[int, int, int, int] | None = None

        def to_rgb(frame: av.VideoFrame) -> np.ndarray:
            nonlocal geometry
            if size is None:
                return frame.to_ndarray(format="rgb24")
            if geometry is None:
                geometry = resize_crop_geometry(frame.width, frame.height, size)
            new_w, new_h, left, top = geometry
            rgb = frame.to_ndarray(width=new_w, height=new_h, format="rgb24", interpolation="AREA")
            return np.ascontiguousarray(rgb[top : top + size, left : left + size])  # (size, size, 3)

        start: float | None = None
        next_index = 0  # index k of the next target time k / fps
        prev: av.VideoFrame | None = None
        prev_rgb: np.ndarray | None = None
        prev_time = 0.0
        prev_duration: float | None = None
        for i, frame in enumerate(container.decode(stream)):
            if fps is None:
                yield to_rgb(frame)
                continue
            t = frame.time if frame.time is not None else i / (native_fps or fps)
            if start is None:
                start = t
            t -= start
            # Target times before this frame's timestamp show the previous frame.
            while prev is not None and next_index / fps < t - _TIME_EPS:
                if prev_rgb is None:
                    prev_rgb = to_rgb(prev)
                yield prev_rgb
                next_index += 1
            prev, prev_rgb, prev_time = frame, None, t
            prev_duration = _frame_duration(frame, stream)
        if prev is not None and fps is not None:
            # The last frame is shown for its own duration (GIF writers merge repeated
            # frames into one longer frame), else for one native frame period.
            end = prev_time + (prev_duration or 1.0 / (native_fps or fps))
            while next_index / fps < end - _TIME_EPS:
                if prev_rgb is None:
                    prev_rgb = to_rgb(prev)
                yield prev_rgb
                next_index += 1
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as err:
        raise VideoDecodeError(f"{path}: decoding failed ({_describe(err)})") from None
    finally:
        container.close()


def native_frame_rate(path: str | Path) -> float | None:
    """Average frame rate of the first video stream of `path` (None when unknown)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: the file has no video stream")
            rate = container.streams.video[0].average_rate
            return float(rate) if rate else None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoDecodeError(f"{path}: cannot open as a video ({_describe(err)})") from None


def _as_rgb_frames(frames: np.ndarray) -> np.ndarray:
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)  # gray (T, H, W) -> (T, H, W, 3)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) or (T, H, W) uint8, got shape {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("cannot encode a video with zero frames")
    return frames


class VideoWriter:
    """An H.264 (libx264, yuv420p) MP4 written frame by frame: `write(frame)` encodes and muxes
    each uint8 `(H, W, 3)` frame as it comes (zerolatency: no lookahead), so a file grows
    while a generator is still producing; `close()` flushes. Also a context manager."""

    def __init__(self, target: str | Path | io.BytesIO, fps: float, crf: int = 18) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps, self.crf = fps, crf
        self.container = av.open(str(target) if isinstance(target, Path) else target, mode="w", format="mp4")
        self.stream: Any = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        rgb = _as_rgb_frames(rgb[None])[0]
        height, width, _ = rgb.shape
        if self.stream is None:
            if height % 2 or width % 2:
                raise ValueError(f"H.264 yuv420p needs even frame sizes, got {height}x{width}")
            self.stream = self.container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
            # zerolatency: no B-frame lookahead, so frames are written as they come and decode in order
            self.stream.options = {"crf": str(self.crf), "preset": "medium", "tune": "zerolatency"}
        elif (height, width) != (self.stream.height, self.stream.width):
            raise ValueError(f"frame {self.frames} is {height}x{width}, earlier frames {self.stream.height}x{self.stream.width}")
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.stream is None:
            self.container.close()
            raise ValueError("cannot encode a video with zero frames")
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:  # an error while writing: release the file, keep the error
            self.container.close()
            return
        self.close()


def encode_video(frames: np.ndarray, fps: float, crf: int = 18) -> bytes:
    """H.264 (libx264, yuv420p) MP4 bytes of uint8 frames `(T, H, W, 3)`; H and W must be even."""
    frames = _as_rgb_frames(frames)
    buffer = io.BytesIO()
    with VideoWriter(buffer, fps, crf) as writer:
        for rgb in frames:
            writer.write(rgb)
    return buffer.getvalue()


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18) -> Path:
    """Write uint8 frames `(T, H, W, 3)` (or gray `(T, H, W)`) as an H.264 MP4 file."""
    path = Path(path)
    path.write_bytes(encode_video(frames, fps, crf))
    return path


def decode_video_bytes(data: bytes) -> np.ndarray:
    """All frames of an in-memory video as uint8 `(T, H, W, 3)`; VideoDecodeError if unreadable."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise VideoDecodeError("encoded clip has no video stream")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    except (av.error.FFmpegError, OSError, ValueError) as err:
        if isinstance(err, VideoDecodeError):
            raise
        raise VideoDecodeError(f"encoded clip cannot be decoded ({_describe(err)})") from None
    if not frames:
        raise VideoDecodeError("encoded clip holds no frames")
    return np.stack(frames)  # (T, H, W, 3)
