"""Video files for the `msc-runtime` command, with PyAV (the optional `video` extra).

Frames are RGB uint8 `(N, H, W, 3)`; runners read and write float videos `[B, 3, N, H, W]`
in [-1, 1] (`frames_to_video` / `video_to_frames`, as msc_cascade.video_file). Writing is
H.264 in MP4: yuv420p at `crf` (what every player shows; even sizes) or, `lossless=True`,
RGB H.264 at crf 0 (libx264rgb: the frames read back are exactly the frames written).
Every failure is a `VideoFileError` (a ValueError) naming the file.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import numpy as np


class VideoFileError(ValueError):
    """A video file cannot be read or written; the message names the file and the reason."""


def require_av() -> Any:
    try:
        import av
    except ImportError as err:
        raise ModuleNotFoundError(
            f"reading and writing video files needs PyAV: pip install 'msc-runtime[video]' ({err})"
        ) from None
    return av


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames of `path` as RGB uint8 `(N, H, W, 3)` and the frame rate (25 when unknown)."""
    path = Path(path)
    av = require_av()
    if not path.is_file():
        raise VideoFileError(f"{path}: no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoFileError(f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else 25.0
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except VideoFileError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise VideoFileError(f"{path}: cannot be decoded as a video ({reason})") from None
    if not frames:
        raise VideoFileError(f"{path}: the video stream holds no frames")
    return np.stack(frames), fps


def write_video(path: str | Path, frames: np.ndarray | Iterable[np.ndarray], fps: float, crf: int = 18,
                lossless: bool = False) -> Path:
    """Write RGB uint8 frames `(N, H, W, 3)` (an array or an iterable of `(n, H, W, 3)` blocks,
    e.g. a streaming decode) as H.264 MP4."""
    path = Path(path)
    av = require_av()
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    blocks = [frames] if isinstance(frames, np.ndarray) else frames
    container, stream, written = None, None, 0
    try:
        for block in blocks:
            if block.dtype != np.uint8 or block.ndim != 4 or block.shape[-1] != 3:
                raise ValueError(f"frames must be uint8 (N, H, W, 3) arrays, got {block.dtype} {block.shape}")
            if stream is None:
                _, height, width, _ = block.shape
                if not lossless and (height % 2 or width % 2):
                    raise ValueError(f"H.264 yuv420p needs even frame sizes, got {height}x{width} (or write lossless)")
                container = av.open(str(path), mode="w", format="mp4")
                stream = container.add_stream("libx264rgb" if lossless else "libx264",
                                              rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height = width, height
                stream.pix_fmt = "rgb24" if lossless else "yuv420p"
                stream.options = {"crf": "0" if lossless else str(crf)}
            for rgb in block:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                    container.mux(packet)
                written += 1
        if stream is None or not written:
            raise ValueError("no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    except (av.error.FFmpegError, OSError) as err:
        raise VideoFileError(f"{path}: cannot be written ({getattr(err, 'strerror', None) or err})") from None
    finally:
        if container is not None:
            container.close()
    return path


def frames_to_video(frames: np.ndarray) -> np.ndarray:
    """uint8 `(N, H, W, 3)` -> float32 `[1, 3, N, H, W]` in [-1, 1]."""
    video = frames.transpose(3, 0, 1, 2).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.ascontiguousarray(video[None])


def video_to_frames(video: np.ndarray) -> np.ndarray:
    """float `[3, N, H, W]` in [-1, 1] -> uint8 `(N, H, W, 3)` (rounded half to even, clamped)."""
    x = np.round((np.clip(np.asarray(video, np.float32), -1, 1) + np.float32(1.0)) * np.float32(127.5))
    return np.ascontiguousarray(x.astype(np.uint8).transpose(1, 2, 3, 0))


def conform_frames(frames: np.ndarray, temporal_compression: int, spatial_compression: int,
                   causal_first_frame: bool = True) -> tuple[np.ndarray, list[str]]:
    """Trim to the VAE's frame rule (`1 + tc k`) and center-crop to multiples of `s`; returns
    notes of what changed (as `msc cascade upscale`)."""
    notes = []
    n, h, w = frames.shape[:3]
    tc, s = temporal_compression, spatial_compression
    keep = 1 + (n - 1) // tc * tc if causal_first_frame else n // tc * tc
    if keep < 1:
        raise ValueError(f"the video has {n} frames; the VAE needs at least {tc}")
    if keep != n:
        rule = f"1 + {tc}k" if causal_first_frame else f"{tc}k"
        notes.append(f"dropped the last {n - keep} frame(s): the VAE needs {rule} frames ({keep} kept)")
    H, W = h // s * s, w // s * s
    if H == 0 or W == 0:
        raise ValueError(f"frames are {h}x{w}; the VAE needs at least {s}x{s} pixels")
    if (H, W) != (h, w):
        notes.append(f"center-cropped {h}x{w} to {H}x{W} (multiples of {s})")
    top, left = (h - H) // 2, (w - W) // 2
    return frames[:keep, top:top + H, left:left + W], notes
