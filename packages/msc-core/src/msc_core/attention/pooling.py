"""Low-Res branch resampling (paper §3.1, §3.3): average-pool H and W by r, upsample back.

Average pooling keeps the signal and divides the noise variance by r^2 (§3.3), which is
why the Low-Res branch stays informative at high noise levels. When H or W is not a
multiple of r, the edge cells average only the pixels they hold ("partial" pooling).
Upsampling is nearest-neighbour: every pixel takes the value of the cell it was pooled
into, so pool-then-upsample is a per-cell projection and stays per-frame (causal).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msc_core.attention.tiled import shape_cached


def pooled_size(size: int, pool: int) -> int:
    return -(-size // pool)


def average_pool_frames(x: torch.Tensor, pool: int) -> torch.Tensor:
    """`(B, T, H, W, C)` -> `(B, T, ceil(H/r), ceil(W/r), C)`, edge cells averaged over real pixels."""
    if pool == 1:
        return x
    B, T, H, W, C = x.shape
    h, w = pooled_size(H, pool), pooled_size(W, pool)
    x = F.pad(x, (0, 0, 0, w * pool - W, 0, h * pool - H))  # zeros add nothing to the sums
    sums = x.reshape(B, T, h, pool, w, pool, C).sum(dim=(3, 5))  # (B, T, h, w, C)
    if H % pool == 0 and W % pool == 0:
        return sums / (pool * pool)

    def cell_sizes() -> torch.Tensor:
        # pixels per cell: r*r inside, fewer along the bottom/right edge (shape-derived constants)
        rows = torch.tensor([min(pool, H - i * pool) for i in range(h)], device=x.device, dtype=x.dtype)
        cols = torch.tensor([min(pool, W - j * pool) for j in range(w)], device=x.device, dtype=x.dtype)
        return rows[:, None, None] * cols[None, :, None]

    return sums / shape_cached(("pool_cells", H, W, pool, x.device, x.dtype), cell_sizes)


def upsample_nearest_frames(x: torch.Tensor, pool: int, height: int, width: int) -> torch.Tensor:
    """`(B, T, h, w, C)` -> `(B, T, height, width, C)`: each pixel copies its pooled cell."""
    if pool == 1:
        return x
    B, T, h, w, C = x.shape
    x = x[:, :, :, None, :, None, :].expand(B, T, h, pool, w, pool, C)
    return x.reshape(B, T, h * pool, w * pool, C)[:, :, :height, :width]
