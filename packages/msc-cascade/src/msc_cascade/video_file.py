"""Reading and writing video files with PyAV for the `msc-cascade` CLI.

Every decoding failure (missing file, not a video, no video stream, broken stream) is
raised as `VideoFileError` naming the file, so the CLI prints one line instead of a
PyAV traceback. (msc-data has a richer reader with frame-rate resampling and cropping;
msc-cascade does not depend on msc-data, and the CLI only needs every frame as is.)
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
import torch


class VideoFileError(ValueError):
    """A video file cannot be read or written; the message names the file and the reason."""


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames of `path` as RGB uint8 `(N, H, W, 3)` and the frame rate (25 when unknown)."""
    path = Path(path)
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


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18) -> Path:
    """Write RGB uint8 frames `(N, H, W, 3)` as H.264 (yuv420p) MP4; H and W must be even."""
    path = Path(path)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"frames must be a non-empty uint8 (N, H, W, 3) array, got {frames.dtype} {frames.shape}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even frame sizes, got {height}x{width}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    try:
        with av.open(str(path), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(crf)}
            for rgb in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    except (av.error.FFmpegError, OSError) as err:
        raise VideoFileError(f"{path}: cannot be written ({getattr(err, 'strerror', None) or err})") from None
    return path


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 `(N, H, W, 3)` -> float `[1, 3, N, H, W]` in [-1, 1]."""
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    return video[None]


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """float `[3, N, H, W]` in [-1, 1] -> uint8 `(N, H, W, 3)` (rounded, clamped)."""
    x = ((video.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().numpy()
