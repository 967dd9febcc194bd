"""`MSCKVCache`: keys and values of finished frames for streaming MSC attention.

The High-Res branch only ever looks `v - 1` frames back, so the cache keeps the last
`v - 1` frames of its K/V. The Low-Res branch looks back to frame 0 with stride `d`, so
the cache keeps the pooled K/V of every frame (r^2 times fewer tokens than the frames).
K/V of a frame depend only on that frame's tokens, so caching them is exact.
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

    def check_compatible(self, batch: int, height: int, width: int) -> None:
        if self.num_frames == 0:
            return
        cached_batch = self.low_res_keys.shape[0]
        if cached_batch != batch or self.frame_size != (height, width):
            raise ValueError(
                f"cache holds batch {cached_batch} with frames {self.frame_size}, "
                f"but x has batch {batch} with frames {(height, width)}"
            )

    def append(
        self,
        high_res_keys: torch.Tensor,
        high_res_values: torch.Tensor,
        low_res_keys: torch.Tensor,
        low_res_values: torch.Tensor,
        temporal_window: int,
    ) -> None:
        """Append the K/V of new frames: High-Res `(B, h, k, H, W, D)`, Low-Res `(B, h, k, P, D)`."""
        keep = temporal_window - 1
        if keep:
            self.high_res_keys = prepend_frames(self.high_res_keys, high_res_keys)[:, :, -keep:]
            self.high_res_values = prepend_frames(self.high_res_values, high_res_values)[:, :, -keep:]
        self.low_res_keys = prepend_frames(self.low_res_keys, low_res_keys)
        self.low_res_values = prepend_frames(self.low_res_values, low_res_values)
        self.frame_size = (high_res_keys.shape[3], high_res_keys.shape[4])
        self.num_frames += low_res_keys.shape[2]
