"""MSC attention: multi-scale spatio-temporal causal attention (paper §3, Figs. 1, 3, 5).

The heads of one attention layer are split into two parallel branches (§3.1):

- High-Res: full-resolution tokens, `w x w` neighbourhood in space (NATTEN semantics:
  windows shifted inwards at the borders), causal window of `v` frames in time (§3.2).
- Low-Res: tokens average-pooled by `r` in H and W, frame-global in space, frames
  `t, t-d, t-2d, ...` in time (§3.2), upsampled back (nearest) to `H x W`.

Per-frame gates computed from each frame's noise-level embedding weight the two
branches (§3.3, Fig. 5) before their heads are concatenated and projected (with
`gate_keys`, from the query frame's embedding and the mean embeddings of each branch's
key frames). Options of the paper, off by default: the light-cone window, the anchored
stride (`masks.py`), key-aware gates; and one branch alone, for ablations. Output at
frame t never depends on input at frames > t. Masks: `masks.py`; backends: `reference`
(dense oracle), `tiled` (CPU / ONNX), `natten` (CUDA).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from msc_core.attention.cache import MSCKVCache, prepend_frames
from msc_core.attention.config import MSCAttentionConfig
from msc_core.attention.masks import high_res_frame_mask, low_res_frame_mask
from msc_core.attention.natten_backend import (
    _natten_ops,
    natten_import_error,
    natten_high_res_attention,
    natten_low_res_attention,
)
from msc_core.attention.pooling import average_pool_frames, upsample_nearest_frames
from msc_core.attention.reference import reference_high_res_attention, reference_low_res_attention
from msc_core.attention.tiled import tiled_high_res_attention, tiled_low_res_attention
from msc_core.diffusion import timestep_embedding
from msc_core.validation import check_finite, check_tensor, check_timesteps, check_values, model_dtype, to_model_dtype


logger = logging.getLogger("msc_core.attention")
_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def resolve_backend(requested: str, device: torch.device, has_past_frames: bool = False, needs_grad: bool = False) -> str:
    """The backend a call runs: `auto` is `natten` on CUDA when NATTEN imports, else `tiled`.

    On CPU `auto` is `tiled` by design (NATTEN's CPU path is forward-only and slower). On
    CUDA, `auto` falling back to `tiled` because NATTEN does not import logs one warning
    per process naming the reason. An explicit `natten` that cannot run raises, naming
    what is missing. With cached frames, `natten` serves the High-Res branch (queries
    padded) and the Low-Res branch runs `tiled` (see `natten_backend`).
    """
    if requested == "auto":
        if device.type != "cuda":
            return "tiled"
        error = natten_import_error()
        if error is None:
            return "natten"
        _warn_once(
            "auto-natten",
            f"MSCAttention backend='auto' on CUDA runs 'tiled' because NATTEN does not import ({error}); "
            "install msc-core[natten] for the fused kernels, or set backend='tiled' to silence this",
        )
        return "tiled"
    if requested == "natten":
        _natten_ops()  # raises ImportError naming the extra and the reason
        if needs_grad and device.type != "cuda":
            raise RuntimeError(
                f"MSCAttention backend='natten' cannot train on {device.type}: NATTEN's CPU path is "
                "forward-only; use backend='tiled' (or 'auto') for training off CUDA"
            )
    return requested


# -----------------------------------------------------------------------------
# noise gate (§3.3, Fig. 5)


class NoiseGate(nn.Module):
    """Per-frame relative weights `(B, T, 2)` of (High-Res, Low-Res) from the noise level.

    `2 * softmax` of an MLP of the noise embedding: the weights sum to 2 and start at
    exactly (1, 1) (last layer zero-initialised), i.e. a plain concatenation of the
    branches, and learn how the mix should move with the noise level.

    With `key_aware`, the MLP reads the query frame's embedding and the mean embeddings of
    the High-Res and of the Low-Res key frames, `(B, T, 3E)`: a frame can weigh a branch by
    how noisy the frames it reads are, not only by its own noise level.
    """

    def __init__(self, embed_dim: int, key_aware: bool = False) -> None:
        super().__init__()
        self.embed_dim, self.key_aware = embed_dim, key_aware
        width = 3 * embed_dim if key_aware else embed_dim
        self.mlp = nn.Sequential(nn.Linear(width, embed_dim), nn.SiLU(), nn.Linear(embed_dim, 2))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def embed(self, noise: torch.Tensor) -> torch.Tensor:
        """Timesteps `(B, T)` -> sinusoidal embeddings `(B, T, E)`; embeddings pass through."""
        return timestep_embedding(noise, self.embed_dim) if noise.ndim == 2 else noise

    def forward(self, noise: torch.Tensor, key_context: torch.Tensor | None = None) -> torch.Tensor:
        """`noise`: timesteps `(B, T)` or embeddings `(B, T, E)` -> weights `(B, T, 2)`;
        `key_context` `(B, T, 2E)` (key-aware gates only): the key frames' mean embeddings."""
        emb = self.embed(noise)
        if self.key_aware:
            if key_context is None:
                raise ValueError("a key-aware NoiseGate needs the key frames' mean noise embeddings (key_context)")
            emb = torch.cat([emb.to(key_context.dtype), key_context], dim=-1)
        return 2.0 * torch.softmax(self.mlp(emb.to(self.mlp[0].weight.dtype)), dim=-1)


# -----------------------------------------------------------------------------
# branches (§3.1, §3.2)


class HighResBranch(nn.Module):
    """Full-resolution neighbourhood attention: `w x w` in space, `v` causal frames in time."""

    def __init__(self, config: MSCAttentionConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = config.num_high_res_heads, config.head_dim
        self.window, self.temporal_window = config.window, config.temporal_window
        self.tile_size, self.growth = config.tile_size, config.light_cone_growth
        self.qkv = nn.Linear(config.dim, 3 * self.heads * self.head_dim, bias=config.qkv_bias)

    def forward(
        self,
        x: torch.Tensor,
        backend: str,
        past_keys: torch.Tensor | None = None,
        past_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`x` `(B, T, H, W, C)` -> output `(B, T, H, W, h*D)` and the new frames' K, V `(B, h, T, H, W, D)`."""
        B, T, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, T, H, W, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(4, 0, 5, 1, 2, 3, 6)  # 3 x (B, h, T, H, W, D)
        keys, values = prepend_frames(past_keys, k), prepend_frames(past_values, v)
        if backend == "reference":
            out = reference_high_res_attention(q, keys, values, self.window, self.temporal_window, self.growth)
        elif backend == "tiled":
            out = tiled_high_res_attention(
                q, keys, values, self.window, self.temporal_window, self.tile_size, self.growth
            )
        else:
            out = natten_high_res_attention(q, keys, values, self.window, self.temporal_window)
        out = out.permute(0, 2, 3, 4, 1, 5).reshape(B, T, H, W, self.heads * self.head_dim)
        return out, k, v


class LowResBranch(nn.Module):
    """Pooled, frame-global attention over frames `t, t-d, t-2d, ...`; output stays pooled."""

    def __init__(self, config: MSCAttentionConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = config.num_low_res_heads, config.head_dim
        self.pool, self.temporal_stride = config.pool, config.temporal_stride
        self.anchored = config.stride_anchor == "fixed"
        # Q, K and V are projected from the pooled tokens: r^2 fewer projections (§3.2)
        self.qkv = nn.Linear(config.dim, 3 * self.heads * self.head_dim, bias=config.qkv_bias)

    def forward(
        self,
        x: torch.Tensor,
        backend: str,
        past_keys: torch.Tensor | None = None,
        past_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`x` `(B, T, H, W, C)` -> output `(B, T, h', w', h*D)` and the new frames' K, V `(B, h, T, P, D)`."""
        pooled = average_pool_frames(x, self.pool)  # (B, T, h', w', C)
        B, T, ph, pw, _ = pooled.shape
        qkv = self.qkv(pooled).reshape(B, T, ph * pw, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5)  # 3 x (B, h, T, P, D)
        keys, values = prepend_frames(past_keys, k), prepend_frames(past_values, v)
        if backend == "reference":
            out = reference_low_res_attention(q, keys, values, self.temporal_stride, self.anchored)
        elif backend == "tiled" or past_keys is not None:  # cached Low-Res calls: tiled (natten_backend)
            out = tiled_low_res_attention(q, keys, values, self.temporal_stride, self.anchored)
        else:
            out = natten_low_res_attention(q, keys, values, ph, pw, self.temporal_stride)
        out = out.permute(0, 2, 3, 1, 4).reshape(B, T, ph, pw, self.heads * self.head_dim)
        return out, k, v


# -----------------------------------------------------------------------------
# the layer


class MSCAttention(nn.Module):
    """Multi-scale causal attention over `[B, T, H, W, C]` tokens with per-frame noise levels."""

    config_class = MSCAttentionConfig

    def __init__(self, config: MSCAttentionConfig) -> None:
        super().__init__()
        self.config = config
        # a branch without heads is absent (one-branch ablations); so is the gate then
        self.high_res = HighResBranch(config) if config.num_high_res_heads else None
        self.low_res = LowResBranch(config) if config.num_low_res_heads else None
        self.gate = None if config.single_branch else NoiseGate(config.noise_embed_dim, config.gate_keys)
        self.proj = nn.Linear(config.dim, config.dim)

    def new_cache(self) -> MSCKVCache:
        return MSCKVCache()

    def forward(
        self,
        x: torch.Tensor,
        noise: torch.Tensor,
        cache: MSCKVCache | None = None,
        update_cache: bool = False,
    ) -> torch.Tensor:
        """`x` `(B, T, H, W, C)`: frames n..n+T-1 after the n frames in `cache` (n = 0 without).

        `noise`: per-frame timesteps `(B, T)` in `[0, num_timesteps)` (integer or float,
        embedded sinusoidally) or noise embeddings `(B, T, noise_embed_dim)`. With
        `update_cache=True` the new frames' K/V are appended to `cache` after the output is
        computed. Returns `(B, T, H, W, C)` in the parameters' dtype (floating `x` of
        another dtype is cast to it, `msc_core.validation`).
        """
        x = self._check_inputs(x, noise, cache, update_cache)
        B, T, H, W, _ = x.shape
        past = cache is not None and cache.num_frames > 0
        needs_grad = self.config.backend == "natten" and torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        backend = resolve_backend(self.config.backend, x.device, past, needs_grad)
        if backend == "natten" and not self.config.natten_compatible:
            if self.config.backend == "natten":
                raise ValueError(
                    "MSCAttention backend='natten' runs neither light_cone_growth > 0 nor stride_anchor='fixed' "
                    f"(got {self.config.light_cone_growth}, {self.config.stride_anchor!r}); use backend='tiled' or 'auto'"
                )
            backend = "tiled"  # documented: the paper options run tiled

        hi = lo = hi_k = hi_v = lo_k = lo_v = None
        if self.high_res is not None:
            hi, hi_k, hi_v = self.high_res(
                x, backend, cache.high_res_keys if past else None, cache.high_res_values if past else None
            )  # (B, T, H, W, C_hi)
        if self.low_res is not None:
            lo, lo_k, lo_v = self.low_res(
                x, backend, cache.low_res_keys if past else None, cache.low_res_values if past else None
            )  # (B, T, h', w', C_lo)
            lo = upsample_nearest_frames(lo, self.config.pool, H, W)  # (B, T, H, W, C_lo)
        key_aware = self.gate is not None and self.gate.key_aware
        emb = self.gate.embed(noise) if key_aware else None  # (B, T, E)
        context = None
        if key_aware:  # the key frames' embeddings: the cached frames' then these
            keys = torch.cat([cache.noise_embeddings, emb], 1) if past else emb
            context = self._key_context(keys, T)
        if update_cache:
            cache.append(hi_k, hi_v, lo_k, lo_v, self.config.temporal_window, (H, W), emb)
        if self.gate is None:  # one branch alone
            return self.proj(hi if lo is None else lo)
        gates = self.gate(noise if emb is None else emb, context).to(x.dtype)[:, :, None, None, :]  # (B, T, 1, 1, 2)
        return self.proj(torch.cat([hi * gates[..., 0:1], lo * gates[..., 1:2]], dim=-1))

    def _key_context(self, key_embeddings: torch.Tensor, num_query_frames: int) -> torch.Tensor:
        """`(B, Tk, E)` embeddings of every key frame -> `(B, Tq, 2E)`: the mean embedding of
        each query frame's High-Res key frames, then of its Low-Res key frames."""
        cfg = self.config
        Tk = key_embeddings.shape[1]
        hi = high_res_frame_mask(num_query_frames, Tk, cfg.temporal_window, key_embeddings.device)
        lo = low_res_frame_mask(
            num_query_frames, Tk, cfg.temporal_stride, key_embeddings.device, cfg.stride_anchor == "fixed"
        )
        weights = torch.cat([hi, lo]).to(key_embeddings.dtype)
        weights = weights / weights.sum(-1, keepdim=True)  # (2 Tq, Tk): every query frame sees itself
        means = torch.einsum("qk,bke->bqe", weights, key_embeddings)
        return torch.cat([means[:, :num_query_frames], means[:, num_query_frames:]], dim=-1)

    def _check_inputs(
        self, x: torch.Tensor, noise: torch.Tensor | None, cache: MSCKVCache | None, update_cache: bool
    ) -> torch.Tensor:
        """Shapes, dtypes and values of the inputs; returns `x` in the parameters' dtype."""
        cfg = self.config
        check_tensor("x", x, floating=False, allow_empty=True)
        if x.ndim != 5 or x.shape[-1] != cfg.dim:
            raise ValueError(f"x must be (B, T, H, W, C={cfg.dim}), got shape {tuple(x.shape)}")
        B, T, H, W, _ = x.shape
        if min(B, T, H, W) < 1:
            raise ValueError(f"x must hold at least one frame of at least 1x1 tokens, got shape {tuple(x.shape)}")
        if noise is None:
            raise ValueError("MSCAttention needs per-frame noise levels (B, T) or embeddings (B, T, E) for its gates")
        check_tensor("noise", noise, floating=False)
        if noise.shape[:2] != (B, T) or noise.ndim not in (2, 3):
            raise ValueError(
                f"noise must be timesteps (B, T)=({B}, {T}) or embeddings (B, T, {cfg.noise_embed_dim}), "
                f"got shape {tuple(noise.shape)}"
            )
        if noise.ndim == 3 and noise.shape[-1] != cfg.noise_embed_dim:
            raise ValueError(
                f"noise embeddings must have noise_embed_dim={cfg.noise_embed_dim} channels, got {noise.shape[-1]}"
            )
        if cfg.pad_mode == "error" and (H % cfg.pool or W % cfg.pool):
            raise ValueError(
                f"frame size {H}x{W} is not divisible by pool={cfg.pool} and pad_mode='error'; "
                f"use sizes divisible by {cfg.pool} or pad_mode='partial'"
            )
        if update_cache and cache is None:
            raise ValueError("update_cache=True needs a cache (attention.new_cache())")
        if cache is not None:
            cache.check_compatible(B, H, W)
        if noise.ndim == 2:
            check_timesteps("noise", noise, cfg.num_timesteps, integer=False)
        else:
            check_values("noise", noise)
        x = to_model_dtype("x", x, model_dtype(self))
        check_finite("x", x)
        return x
