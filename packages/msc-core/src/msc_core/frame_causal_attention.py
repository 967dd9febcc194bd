"""Dense frame-causal attention: the full-attention baseline for MSC (paper §3.3).

Every token attends to every token of its own frame and of all earlier frames
(`CausalAttention = f(x_tij, x_t'kl), t' <= t`), with one dense boolean block mask and
`scaled_dot_product_attention`. It has the same `forward(x, noise, cache,
update_cache)` / `new_cache()` signature as `MSCAttention`, so `MSCTransformer` can
swap one for the other and the same model is the baseline in comparisons. The
per-frame noise level is accepted and ignored: dense attention has no noise gates.

The KV cache keeps the keys and values of the frames already seen; a call with a
cache holding `n` frames takes frames `n .. n+k-1` and returns exactly what the full
forward over all `n+k` frames returns for those frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msc_core.attention.masks import low_res_mask
from msc_core.config import Config
from msc_core.validation import check_finite, check_tensor, model_dtype, to_model_dtype


class FrameCausalKVCache:
    """Keys and values of the frames seen so far, for one attention layer."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None  # (B, heads, num_frames * tokens_per_frame, head_dim)
        self.values: torch.Tensor | None = None
        self.num_frames = 0
        self.tokens_per_frame: int | None = None

    def check_compatible(self, batch: int, tokens_per_frame: int) -> None:
        if self.num_frames and (self.keys.shape[0] != batch or self.tokens_per_frame != tokens_per_frame):
            raise ValueError(
                f"cache holds batch {self.keys.shape[0]} with {self.tokens_per_frame} tokens per frame, "
                f"but x has batch {batch} with {tokens_per_frame} tokens per frame"
            )

    def append(self, keys: torch.Tensor, values: torch.Tensor, num_frames: int, tokens_per_frame: int) -> None:
        if self.keys is None:
            self.keys, self.values = keys, values
            self.tokens_per_frame = tokens_per_frame
        else:
            self.keys = torch.cat([self.keys, keys], dim=2)
            self.values = torch.cat([self.values, values], dim=2)
        self.num_frames += num_frames


class FrameCausalAttentionConfig(Config):
    dim: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    qkv_bias: bool = True

    @model_validator(mode="after")
    def _check_heads(self) -> "FrameCausalAttentionConfig":
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        return self


class FrameCausalAttention(nn.Module):
    """Multi-head self-attention over `[B, T, H, W, C]` tokens with a frame-causal mask."""

    def __init__(self, config: FrameCausalAttentionConfig) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_heads
        self.head_dim = config.dim // config.num_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=config.qkv_bias)
        self.proj = nn.Linear(config.dim, config.dim)

    def new_cache(self) -> FrameCausalKVCache:
        return FrameCausalKVCache()

    def forward(
        self,
        x: torch.Tensor,
        noise: torch.Tensor | None = None,
        cache: FrameCausalKVCache | None = None,
        update_cache: bool = False,
    ) -> torch.Tensor:
        """`x`: `(B, T, H, W, C)` new frames; `noise` is ignored (no noise gates here).

        Floating `x` of another dtype than the parameters is cast to theirs (`msc_core.validation`).
        """
        check_tensor("x", x, floating=False, allow_empty=True)
        if x.ndim != 5 or x.shape[-1] != self.config.dim:
            raise ValueError(
                f"x must be (B, T, H, W, C={self.config.dim}), got shape {tuple(x.shape)}"
            )
        check_tensor("x", x)  # floating, no zero-sized axis
        x = to_model_dtype("x", x, model_dtype(self))
        check_finite("x", x)
        if update_cache and cache is None:
            raise ValueError("update_cache=True needs a cache (attention.new_cache())")
        B, T, H, W, C = x.shape
        tokens = H * W
        qkv = self.qkv(x.reshape(B, T * tokens, C))  # (B, N, 3C)
        q, k, v = qkv.reshape(B, T * tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

        past = 0 if cache is None else cache.num_frames
        keys, values = k, v  # (B, heads, N, head_dim)
        if past:
            cache.check_compatible(B, tokens)
            keys = torch.cat([cache.keys, k], dim=2)
            values = torch.cat([cache.values, v], dim=2)
        # Frame causality is the Low-Res rule with stride d = 1 (every earlier frame).
        mask = low_res_mask(T, past + T, tokens, temporal_stride=1, device=x.device)  # (T*HW, (past+T)*HW)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, heads, N, head_dim)
        out = out.transpose(1, 2).reshape(B, T, H, W, C)
        if update_cache:
            # K/V of the new frames do not depend on the cache, so appending after is exact.
            cache.append(k, v, T, tokens)
        return self.proj(out)
