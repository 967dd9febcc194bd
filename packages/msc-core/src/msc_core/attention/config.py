"""`MSCAttentionConfig`: the knobs of one MSC attention layer (paper §3.1-§3.3)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from msc_core.config import Config

Backend = Literal["auto", "reference", "tiled", "natten"]


class MSCAttentionConfig(Config):
    """One multi-scale causal attention layer.

    Heads are split between the High-Res branch (`round(num_heads * high_res_head_ratio)`
    heads, §3.2) and the Low-Res branch (the rest). A ratio strictly between 0 and 1 must
    give each branch a head; exactly 1.0 is the High-Res branch alone and 0.0 the Low-Res
    branch alone (ablations: no noise gate then, there is nothing to weigh).

    Paper options, off by default (measured in docs/reproduction.md; none beat the
    default there): `light_cone_growth`, `stride_anchor`, `gate_keys`. The `natten`
    backend runs none of them (one window per call, strides relative to the query):
    `auto` runs `tiled` for a layer that uses them.
    """

    dim: int = Field(gt=0, description="channels C of the [B, T, H, W, C] tokens")
    num_heads: int = Field(gt=1, description="total heads, split between the two branches")
    high_res_head_ratio: float = Field(
        0.5, ge=0.0, le=1.0, description="share of the heads in the High-Res branch; 1.0 / 0.0: one branch only"
    )
    window: int = Field(7, gt=0, description="High-Res spatial window w (w x w), odd")
    temporal_window: int = Field(3, gt=0, description="High-Res temporal window v: frames t-v+1..t")
    pool: int = Field(2, gt=0, description="Low-Res average-pooling factor r over H and W")
    temporal_stride: int = Field(4, gt=0, description="Low-Res temporal stride d: frames t, t-d, ...")
    light_cone_growth: int = Field(
        0, ge=0, description="High-Res light cone (§3.2): spatial window w + 2 * growth * lag at frame lag "
        "0..v-1 (0: w x w in every frame)",
    )
    stride_anchor: Literal["query", "fixed"] = Field(
        "query", description="Low-Res key frames: 'query': t, t-d, t-2d, ...; 'fixed': t itself and the anchor "
        "frames t' < t with t' % d == 0 (I-frames at fixed positions, counted from the first frame the layer sees)",
    )
    gate_keys: bool = Field(
        False, description="noise gates also see the mean noise embedding of each branch's key frames, "
        "not only the query frame's (§3.3); the cache then keeps every frame's noise embedding",
    )
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
        if self.high_res_head_ratio not in (0.0, 1.0) and not 1 <= high <= self.num_heads - 1:
            raise ValueError(
                f"high_res_head_ratio={self.high_res_head_ratio} gives {high} of num_heads="
                f"{self.num_heads} heads to the High-Res branch; each branch needs 1 to "
                f"{self.num_heads - 1} heads (or give 1.0 / 0.0 for one branch alone)"
            )
        tile = (self.tile_size,) * 2 if isinstance(self.tile_size, int) else self.tile_size
        if min(tile) < 1:
            raise ValueError(f"tile_size={self.tile_size} must be positive (an edge or (rows, cols))")
        if self.window % 2 == 0:
            raise ValueError(f"window={self.window} must be odd (a centred w x w neighbourhood)")
        return self

    @property
    def natten_compatible(self) -> bool:
        """Whether the `natten` backend runs this layer (none of the paper options)."""
        return self.light_cone_growth == 0 and self.stride_anchor == "query"

    @property
    def single_branch(self) -> bool:
        return self.num_high_res_heads in (0, self.num_heads)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_high_res_heads(self) -> int:
        return round(self.num_heads * self.high_res_head_ratio)

    @property
    def num_low_res_heads(self) -> int:
        return self.num_heads - self.num_high_res_heads
