"""Writing generated videos: MP4 with PyAV (msc_data.video_io), GIF with Pillow.

Model outputs are `(C, T, H, W)` in [-1, 1] (msc_data.video_tensor converts them to
uint8 frames). Small demo frames (32x32) are enlarged by an integer `scale` with
nearest-neighbour so the pixels stay sharp when viewed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from msc_data.video_io import write_video
from msc_data.video_tensor import video_to_frames


def video_to_rgb_frames(video: torch.Tensor, scale: int = 1) -> np.ndarray:
    """`(C, T, H, W)` in [-1, 1] (C = 1 or 3) -> uint8 RGB frames `(T, H*scale, W*scale, 3)`."""
    if video.ndim != 4 or video.shape[0] not in (1, 3):
        raise ValueError(f"video must be (C, T, H, W) with C = 1 or 3, got {tuple(video.shape)}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    frames = video_to_frames(video)  # (T, H, W, C) uint8
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    return np.ascontiguousarray(frames)


def write_gif(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Looping GIF of uint8 RGB frames `(T, H, W, 3)`."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    # GIF stores whole centiseconds (and browsers slow anything under 2 cs down), and
    # Pillow merges identical consecutive frames into one frame shown longer: a frame
    # time in whole centiseconds keeps every merged duration an exact multiple of it, so
    # readers (msc_data.video_io.shortest_frame_duration) recover every frame.
    centiseconds = max(2, round(100 / fps))
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=10 * centiseconds, loop=0, optimize=False
    )
    return path


def write_mp4(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """H.264 MP4 of uint8 RGB frames `(T, H, W, 3)` (even H and W) through PyAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, frames, fps)


def write_video_file(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """`.gif` -> Pillow GIF, `.mp4` -> H.264 MP4; anything else is refused."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return write_gif(path, frames, fps)
    if suffix == ".mp4":
        return write_mp4(path, frames, fps)
    raise ValueError(f"unsupported video file {path}: use a .mp4 or .gif name")


def read_gif(path: str | Path, fps: float | None = None) -> np.ndarray:
    """All frames of a GIF as uint8 RGB `(T, H, W, 3)`; a frame shown k times longer than
    the shortest one (repeated frames a writer merged) is returned k times. With `fps`
    (the rate it was written at, `write_gif`), k counts frame times of that rate, which
    also recovers a video whose frames were all identical (merged into one)."""
    with Image.open(path) as image:
        frames, durations = [], []
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            frames.append(np.asarray(image.convert("RGB")))
            durations.append(image.info.get("duration") or 0)
    shortest = min((d for d in durations if d > 0), default=0)
    if fps is not None:
        shortest = 10 * max(2, round(100 / fps))  # write_gif's frame time in milliseconds
    repeats = [max(1, round(d / shortest)) if shortest else 1 for d in durations]
    return np.stack([frame for frame, k in zip(frames, repeats) for _ in range(k)])


def frame_grid(frames: np.ndarray, columns: int = 8, gap: int = 2) -> np.ndarray:
    """Frames `(T, H, W, 3)` tiled row-major into one image, for contact sheets."""
    t, h, w, c = frames.shape
    rows = -(-t // columns)
    grid = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, c), 255, dtype=np.uint8)
    for i, frame in enumerate(frames):
        r, col = divmod(i, columns)
        grid[r * (h + gap) : r * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = frame
    return grid
