"""`MSCKVCache`: keys and values of finished frames for streaming MSC attention.

The High-Res branch only ever looks `v - 1` frames back, so the cache keeps the last
`v - 1` frames of its K/V. The Low-Res branch looks back to frame 0 with stride `d`, so
the cache keeps the pooled K/V of every frame (r^2 times fewer tokens than the frames).
K/V of a frame depend only on that frame's tokens, so caching them is exact. With
`gate_keys`, the cache also keeps every frame's noise embedding (the gates of later frames
see their key frames' noise levels). A branch without heads caches nothing.
"""

from __future__ import annotations

import torch


def prepend_frames(cached: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """Cached frames followed by new frames along the frame axis (2), `new` alone without a cache."""
    return new if cached is None else torch.cat([cached, new], dim=2)


class MSCKVCache:
    """Per-layer cache; `num_frames` is the absolute index of the next frame to process."""

    def __init__(self) -> None:
        self.num_frames = 0
        self.frame_size: tuple[int, int] | None = None  # (H, W) of the cached frames
        self.high_res_keys: torch.Tensor | None = None  # (B, h_hi, <= v-1, H, W, D)
        self.high_res_values: torch.Tensor | None = None
        self.low_res_keys: torch.Tensor | None = None  # (B, h_lo, num_frames, P, D)
        self.low_res_values: torch.Tensor | None = None
        self.noise_embeddings: torch.Tensor | None = None  # (B, num_frames, E), with gate_keys only
        self.batch: int | None = None

    def check_compatible(self, batch: int, height: int, width: int) -> None:
        if self.num_frames == 0:
            return
        cached_batch = self.batch
        if cached_batch != batch or self.frame_size != (height, width):
            raise ValueError(
                f"cache holds batch {cached_batch} with frames {self.frame_size}, "
                f"but x has batch {batch} with frames {(height, width)}"
            )

    def append(
        self,
        high_res_keys: torch.Tensor | None,
        high_res_values: torch.Tensor | None,
        low_res_keys: torch.Tensor | None,
        low_res_values: torch.Tensor | None,
        temporal_window: int,
        frame_size: tuple[int, int],
        noise_embeddings: torch.Tensor | None = None,
    ) -> None:
        """Append new frames: High-Res K/V `(B, h, k, H, W, D)`, Low-Res `(B, h, k, P, D)` (None:
        the branch has no heads), noise embeddings `(B, k, E)` (with `gate_keys`)."""
        keep = temporal_window - 1
        if keep and high_res_keys is not None:
            self.high_res_keys = prepend_frames(self.high_res_keys, high_res_keys)[:, :, -keep:]
            self.high_res_values = prepend_frames(self.high_res_values, high_res_values)[:, :, -keep:]
        if low_res_keys is not None:
            self.low_res_keys = prepend_frames(self.low_res_keys, low_res_keys)
            self.low_res_values = prepend_frames(self.low_res_values, low_res_values)
        if noise_embeddings is not None:
            self.noise_embeddings = (
                noise_embeddings if self.noise_embeddings is None else torch.cat([self.noise_embeddings, noise_embeddings], 1)
            )
        new = (high_res_keys if high_res_keys is not None else low_res_keys)
        self.batch, self.frame_size = new.shape[0], frame_size
        self.num_frames += new.shape[2]
