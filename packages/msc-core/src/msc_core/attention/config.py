"""`MSCAttentionConfig`: the knobs of one MSC attention layer (paper §3.1-§3.3)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from msc_core.config import Config

Backend = Literal["auto", "reference", "tiled", "natten"]


class MSCAttentionConfig(Config):
    """One multi-scale causal attention layer.

    Heads are split between the High-Res branch (`round(num_heads * high_res_head_ratio)`
    heads, §3.2) and the Low-Res branch (the rest); both branches must get a head.
    """

    dim: int = Field(gt=0, description="channels C of the [B, T, H, W, C] tokens")
    num_heads: int = Field(gt=1, description="total heads, split between the two branches")
    high_res_head_ratio: float = Field(0.5, gt=0.0, lt=1.0)
    window: int = Field(7, gt=0, description="High-Res spatial window w (w x w), odd")
    temporal_window: int = Field(3, gt=0, description="High-Res temporal window v: frames t-v+1..t")
    pool: int = Field(2, gt=0, description="Low-Res average-pooling factor r over H and W")
    temporal_stride: int = Field(4, gt=0, description="Low-Res temporal stride d: frames t, t-d, ...")
    pad_mode: Literal["partial", "error"] = Field(
        "partial",
        description="H or W not divisible by pool: 'partial' averages the pixels an edge cell "
        "holds, 'error' raises ValueError",
    )
    noise_embed_dim: int = Field(
        256, ge=2, description="size E of the sinusoidal noise embedding, or of a given [B, T, E] one"
    )
    num_timesteps: int = Field(
        1000, ge=1, description="noise levels given as timesteps must lie in [0, num_timesteps)"
    )
    qkv_bias: bool = True
    backend: Backend = "auto"
    tile_size: int | tuple[int, int] = Field(
        8,
        description="query tile of the tiled backend: an edge (square tiles) or (rows, cols); each tile "
        "attends to the (rows + w - 1) x (cols + w - 1) halo of its windows, so the High-Res branch "
        "computes (rows + w - 1)(cols + w - 1) / w^2 times the window's FLOPs (8: 4.0x at w=7, "
        "(3, 4): 1.84x); on CPU 8 is the fastest (README, bench/attention.py)",
    )

    @model_validator(mode="after")
    def _check(self) -> "MSCAttentionConfig":
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        high = self.num_high_res_heads
        if not 1 <= high <= self.num_heads - 1:
            raise ValueError(
                f"high_res_head_ratio={self.high_res_head_ratio} gives {high} of num_heads="
                f"{self.num_heads} heads to the High-Res branch; each branch needs 1 to "
                f"{self.num_heads - 1} heads"
            )
        tile = (self.tile_size,) * 2 if isinstance(self.tile_size, int) else self.tile_size
        if min(tile) < 1:
            raise ValueError(f"tile_size={self.tile_size} must be positive (an edge or (rows, cols))")
        if self.window % 2 == 0:
            raise ValueError(f"window={self.window} must be odd (a centred w x w neighbourhood)")
        return self

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_high_res_heads(self) -> int:
        return round(self.num_heads * self.high_res_head_ratio)

    @property
    def num_low_res_heads(self) -> int:
        return self.num_heads - self.num_high_res_heads
