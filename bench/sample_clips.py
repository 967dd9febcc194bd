"""Random training crops of decoded videos, shared by the quality benches
(`bench/tokenizers.py`, `bench/cascade.py`; each runs as a script, so this directory is on
`sys.path`)."""

from __future__ import annotations

import numpy as np
import torch

from msc_data.video_tensor import frames_to_video


class RandomClips:
    """Random `num_frames x size x size` crops of uint8 videos `(T, H, W, 3)`, videos weighted
    by length, horizontally flipped half of the time."""

    def __init__(self, videos: list[np.ndarray], seed: int, size: int = 64) -> None:
        self.videos, self.size = videos, size
        self.rng = np.random.default_rng(seed)
        lengths = np.array([len(v) for v in videos], dtype=np.float64)
        self.weights = lengths / lengths.sum()

    def batch(self, batch_size: int, num_frames: int) -> torch.Tensor:
        """`(B, 3, num_frames, size, size)` in [-1, 1]."""
        s, clips = self.size, []
        for _ in range(batch_size):
            v = self.videos[self.rng.choice(len(self.videos), p=self.weights)]
            t0 = self.rng.integers(0, len(v) - num_frames + 1)
            y0 = self.rng.integers(0, v.shape[1] - s + 1)
            x0 = self.rng.integers(0, v.shape[2] - s + 1)
            clip = v[t0:t0 + num_frames, y0:y0 + s, x0:x0 + s]
            if self.rng.random() < 0.5:
                clip = clip[:, :, ::-1]
            clips.append(frames_to_video(np.ascontiguousarray(clip)))
        return torch.stack(clips)
