"""Cutting a stream of frames into fixed-length clips with their motion score.

Clip k covers frames `[k * stride, k * stride + frames)`; only complete clips are made.
The motion score of a clip is the mean optical-flow magnitude over its adjacent frame
pairs (NOVA Sec. 3.2, `msc_data.motion`). Overlapping clips (stride < frames) share
frame pairs, so each pair's flow is computed once and reused; the score is still
exactly `motion_score(clip)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from msc_data.motion import FlowMagnitude, MotionMethod, to_gray


@dataclass(frozen=True)
class CutClip:
    index: int  # k: the clip starts at frame k * stride
    start_frame: int
    frames: np.ndarray  # (T, H, W, 3) uint8
    motion: float


class ClipCutter:
    """Cuts frames into clips; after a `cut` run, `num_frames` and `num_clips` count all of them."""

    def __init__(
        self,
        frames: int,
        stride: int,
        motion_method: MotionMethod = "farneback",
        max_clips: int | None = None,
    ) -> None:
        if frames < 2 or stride < 1:
            raise ValueError(f"need frames >= 2 and stride >= 1, got frames={frames}, stride={stride}")
        self.frames, self.stride, self.max_clips = frames, stride, max_clips
        self.flow = FlowMagnitude(motion_method)
        self.num_frames = self.num_clips = 0

    def cut(self, video_frames: Iterable[np.ndarray], first_clip: int = 0) -> Iterator[CutClip]:
        """Clips of `video_frames` (uint8 `(H, W, 3)` each) with index >= `first_clip`."""
        T, stride = self.frames, self.stride
        self.num_frames = self.num_clips = 0
        window: list[np.ndarray] = []  # the last T frames and their gray versions
        gray: list[np.ndarray] = []
        pair_motion: dict[int, float] = {}  # flow magnitude of the pair (n - 1, n), keyed by n
        for frame in video_frames:
            window.append(frame)
            gray.append(to_gray(frame[None])[0])
            if len(window) > T:
                window.pop(0)
                gray.pop(0)
            self.num_frames += 1
            start = self.num_frames - T
            if start < 0 or start % stride:
                continue
            index = start // stride
            self.num_clips += 1
            if index >= first_clip:
                for n in range(start + 1, start + T):
                    if n not in pair_motion:
                        pair_motion[n] = self.flow(gray[n - 1 - start], gray[n - start])
                motion = float(np.array([pair_motion[n] for n in range(start + 1, start + T)]).mean())
                for n in [n for n in pair_motion if n <= start + stride]:  # the next clip starts at start + stride
                    del pair_motion[n]
                yield CutClip(index, start, np.stack(window), motion)  # frames (T, H, W, 3)
            if self.max_clips is not None and self.num_clips >= self.max_clips:
                return
