"""Random training crops of decoded videos, shared by the quality benches
(`bench/tokenizers.py`, `bench/cascade.py`; each runs as a script, so this directory is on
`sys.path`)."""

from __future__ import annotations

import numpy as np
import torch

from msc_data.video_tensor import frames_to_video


class RandomClips:
    """Random `num_frames x size x size` crops of uint8 videos `(T, H, W, 3)`, videos weighted
    by length, horizontally flipped half of the time.

    `augment`: also played backwards half of the time, RGB channels shuffled, contrast scaled
    by U(0.7, 1.3) about the clip mean and brightness shifted by U(-0.2, 0.2) (in [-1, 1]
    units, then clamped), so a model sees more than the few bundled sources' colours.
    """

    def __init__(self, videos: list[np.ndarray], seed: int, size: int = 64, augment: bool = False) -> None:
        self.videos, self.size, self.augment = videos, size, augment
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
            if self.augment:
                clip = self._augment(clip)
            clips.append(frames_to_video(np.ascontiguousarray(clip)))
        return torch.stack(clips)

    def _augment(self, clip: np.ndarray) -> np.ndarray:
        if self.rng.random() < 0.5:
            clip = clip[::-1]
        clip = clip[..., self.rng.permutation(3)].astype(np.float64)
        mean = clip.mean()
        contrast, brightness = self.rng.uniform(0.7, 1.3), self.rng.uniform(-0.2, 0.2) * 127.5
        return np.clip((clip - mean) * contrast + mean + brightness, 0, 255).round().astype(np.uint8)
