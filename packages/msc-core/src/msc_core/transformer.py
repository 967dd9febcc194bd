"""MSCTransformer: a frame-causal diffusion transformer built on MSC attention (paper §3).

A stack of DiT blocks (Peebles & Xie, adaLN-Zero) whose self-attention is MSC attention
(§3.1-§3.3) or, for the baseline, dense frame-causal attention. What makes it a video
model for autoregressive diffusion:

- Conditioning is PER FRAME: every frame has its own timestep (AR-Diffusion, Diffusion
  Forcing), so each frame gets its own adaLN shift/scale/gate, broadcast over its
  tokens, and its own noise level drives the MSC noise gates (§3.3, Fig. 5).
- Everything is frame-causal: patch embedding, norms and MLPs act within a frame and
  attention only looks back, so the output at frame t never depends on frames > t.
  That is what lets a KV cache stream frames one at a time (`new_cache`,
  `update_cache=True`) with the same result as the full forward.
- Positions: a sinusoidal embedding of the ABSOLUTE frame index (`frame_offset` +
  position in `x`, so cached, streamed or sliding-window frames get their true index and
  the embedding is defined past the training length) plus the 2D sin-cos embedding of
  DiT over the patch grid.
- The Low-Res pooling factor r grows with depth (§3.1, Fig. 1b): shallow layers keep
  detail, deep layers see coarse, global structure. See `geometric_pool_schedule`.

Sections: pure functions (patchify, positions, pool schedule) / embedders / block /
final layer / config / model / named presets.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.utils.checkpoint import checkpoint

from msc_core.attention import MSCAttention, MSCAttentionConfig
from msc_core.attention.config import Backend
from msc_core.config import Config
from msc_core.diffusion import timestep_embedding
from msc_core.frame_causal_attention import FrameCausalAttention, FrameCausalAttentionConfig
from msc_core.interfaces import num_patches
from msc_core.validation import check_finite, check_tensor, check_timesteps, model_dtype, to_model_dtype, trusted_inputs

# -----------------------------------------------------------------------------
# pure functions


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`(B, C, T, H, W)` -> `(B, T, H/p, W/p, p*p*C)`: non-overlapping spatial patches per frame."""
    B, C, T, H, W = x.shape
    p = patch_size
    h, w = num_patches(H, p, "height"), num_patches(W, p, "width")
    x = x.reshape(B, C, T, h, p, w, p)
    return x.permute(0, 2, 3, 5, 4, 6, 1).reshape(B, T, h, w, p * p * C)  # (B, T, h, w, p*p*C)


def unpatchify(tokens: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """Inverse of `patchify`: `(B, T, h, w, p*p*C)` -> `(B, C, T, h*p, w*p)`."""
    B, T, h, w, _ = tokens.shape
    p = patch_size
    x = tokens.reshape(B, T, h, w, p, p, channels)
    return x.permute(0, 6, 1, 2, 4, 3, 5).reshape(B, channels, T, h * p, w * p)


def spatial_sincos_embedding(height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """DiT's 2D sin-cos position embedding `(height, width, dim)`: half rows, half columns."""
    rows = timestep_embedding(torch.arange(height, device=device), dim // 2)  # (h, dim/2)
    cols = timestep_embedding(torch.arange(width, device=device), dim - dim // 2)  # (w, dim - dim/2)
    return torch.cat(
        [rows[:, None, :].expand(height, width, -1), cols[None, :, :].expand(height, width, -1)], dim=-1
    )


def frame_index_embedding(frame_offset: int, num_frames: int, dim: int, device: torch.device) -> torch.Tensor:
    """Sinusoidal embedding `(num_frames, dim)` of absolute frame indices `offset .. offset+T-1`.

    Fixed, not learned: it is defined for every index, so a model can run past its
    training length and a streamed frame gets the same embedding as in the full forward.
    """
    return timestep_embedding(torch.arange(frame_offset, frame_offset + num_frames, device=device), dim)


def geometric_pool_schedule(depth: int, first: int, last: int) -> list[int]:
    """Low-Res pooling factor r per layer, doubling from `first` (layer 0) to `last` (layer L-1).

    §3.1: deeper layers learn lower-resolution features, so they get a larger r. The
    levels `first, 2*first, ..., last` are spread over the layers in near-equal stages:
    layer i sits at level `round(i * (levels - 1) / (depth - 1))`, e.g. depth 6 with
    r 2 -> 4 gives `[2, 2, 2, 4, 4, 4]`, depth 4 with r 1 -> 4 gives `[1, 2, 2, 4]`.
    """
    if first < 1 or last < first:
        raise ValueError(f"pool schedule needs 1 <= first <= last, got first={first}, last={last}")
    ratio = last // first
    if last % first or ratio & (ratio - 1):
        raise ValueError(f"last pool {last} must be first pool {first} times a power of 2 (e.g. {first * 2})")
    levels = ratio.bit_length()  # number of distinct r values
    if depth == 1:
        return [first]
    # round-half-up of i * (levels - 1) / (depth - 1) in integers
    return [first * 2 ** ((2 * i * (levels - 1) + depth - 1) // (2 * (depth - 1))) for i in range(depth)]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: `x` `(B, T, H, W, C)`, per-frame `shift`/`scale` `(B, T, C)` broadcast over H, W."""
    return x * (1 + scale[:, :, None, None, :]) + shift[:, :, None, None, :]


# -----------------------------------------------------------------------------
# embedders


class TimestepEmbedder(nn.Module):
    """Per-frame timesteps `(B, T)` -> `(B, T, dim)`: sinusoid then MLP (DiT)."""

    def __init__(self, dim: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.frequency_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# -----------------------------------------------------------------------------
# block


class MSCTransformerBlock(nn.Module):
    """DiT block with per-frame adaLN-Zero around (MSC or dense frame-causal) attention + MLP.

    `norm="pre"`: `x + gate * f(modulate(LN(x)))` (DiT). `norm="post"`:
    `modulate(LN(x + gate * f(x)))` (post-norm, as NOVA's blocks); the per-frame
    shift/scale then condition the normalised residual stream instead of the branch input.
    """

    def __init__(self, config: MSCTransformerConfig, layer: int) -> None:
        super().__init__()
        dim = config.dim
        self.norm_kind = config.norm
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        if config.attention == "msc":
            self.attn: nn.Module = MSCAttention(config.attention_config(layer))
        else:
            self.attn = FrameCausalAttention(config.attention_config(layer))
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        t: torch.Tensor,
        cache: Any = None,
        update_cache: bool = False,
    ) -> torch.Tensor:
        """`x` `(B, T, H, W, C)`, per-frame condition `c` `(B, T, C)`, timesteps `t` `(B, T)`."""
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c).chunk(6, dim=-1)  # 6 x (B, T, C)
        )
        gate_attn, gate_mlp = gate_attn[:, :, None, None, :], gate_mlp[:, :, None, None, :]
        # activations and the model's own checked timesteps: the attention layer skips its
        # value checks (one host sync each) here, also when a checkpointed block is recomputed
        if self.norm_kind == "pre":
            h = modulate(self.norm1(x), shift_attn, scale_attn)
            with trusted_inputs():
                h = self.attn(h, t, cache=cache, update_cache=update_cache)
            x = x + gate_attn * h
            x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        else:
            with trusted_inputs():
                h = self.attn(x, t, cache=cache, update_cache=update_cache)
            x = x + gate_attn * h
            x = modulate(self.norm1(x), shift_attn, scale_attn)
            x = x + gate_mlp * self.mlp(x)
            x = modulate(self.norm2(x), shift_mlp, scale_mlp)
        return x  # (B, T, H, W, C)


class FinalLayer(nn.Module):
    """Per-frame adaLN + linear to `p*p*out_channels` per token (zero-initialised, DiT)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # 2 x (B, T, C)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, T, h, w, p*p*C_out)


def initialize_dit_weights(model: nn.Module, keep: list[nn.Module] | tuple[nn.Module, ...] = ()) -> None:
    """DiT's init, in place: xavier linears, N(0, 0.02) timestep MLP, adaLN-Zero, zero output.

    `model` has `t_embedder` (a `TimestepEmbedder`), `blocks` (each with an
    `adaLN_modulation`) and `final_layer` (a `FinalLayer`); linears inside the modules of
    `keep` are left as their own constructors made them.
    """
    kept = {id(m) for module in keep for m in module.modules()}
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module) not in kept:
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for layer in (model.t_embedder.mlp[0], model.t_embedder.mlp[2]):
        nn.init.normal_(layer.weight, std=0.02)
    for blk in model.blocks:
        nn.init.zeros_(blk.adaLN_modulation[-1].weight)
        nn.init.zeros_(blk.adaLN_modulation[-1].bias)
    for layer in (model.final_layer.adaLN_modulation[-1], model.final_layer.linear):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


# -----------------------------------------------------------------------------
# config


class MSCTransformerConfig(Config):
    """Architecture of an `MSCTransformer`. MSC knobs apply when `attention="msc"`.

    Low-Res pooling per layer: `pool_schedule` (one r per layer) if given, else
    `geometric_pool_schedule(depth, pool, max_pool)` when `max_pool` is set (r doubles
    from `pool` to `max_pool` with depth, §3.1), else `pool` in every layer.
    """

    in_channels: int = Field(4, gt=0)
    out_channels: int | None = Field(None, gt=0, description="default: in_channels")
    patch_size: int = Field(2, gt=0, description="spatial patch p (no temporal patching)")
    dim: int = Field(384, gt=0)
    depth: int = Field(12, gt=0)
    num_heads: int = Field(6, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    cond_dim: int | None = Field(None, gt=0, description="size of the global condition vector, if any")
    timestep_frequency_dim: int = Field(256, ge=2)
    num_timesteps: int = Field(1000, ge=1, description="timesteps t must lie in [0, num_timesteps)")
    norm: Literal["pre", "post"] = "pre"
    attention: Literal["msc", "dense"] = "msc"
    gradient_checkpointing: bool = False
    # MSC attention (§3.1-§3.3)
    high_res_head_ratio: float = Field(0.5, ge=0.0, le=1.0, description="1.0 / 0.0: one branch alone")
    window: int = Field(7, gt=0, description="High-Res spatial window w, odd")
    temporal_window: int = Field(3, gt=0, description="High-Res causal window v in frames")
    temporal_stride: int = Field(4, gt=0, description="Low-Res temporal stride d")
    pool: int = Field(2, gt=0, description="Low-Res pooling r (of the first layer when max_pool is set)")
    max_pool: int | None = Field(None, gt=0, description="r of the last layer; r doubles with depth up to it")
    pool_schedule: tuple[int, ...] | None = Field(None, description="explicit r per layer (len == depth)")
    # paper options, off by default (MSCAttentionConfig; measured in docs/reproduction.md)
    light_cone_growth: int = Field(0, ge=0, description="High-Res window w + 2 * growth * frame lag")
    stride_anchor: Literal["query", "fixed"] = "query"
    gate_keys: bool = False
    backend: Backend = "auto"

    @model_validator(mode="after")
    def _check(self) -> MSCTransformerConfig:
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.pool_schedule is not None:
            if self.max_pool is not None:
                raise ValueError("give either pool_schedule or max_pool, not both")
            if len(self.pool_schedule) != self.depth or min(self.pool_schedule) < 1:
                raise ValueError(
                    f"pool_schedule {list(self.pool_schedule)} must hold one factor >= 1 per layer "
                    f"(depth={self.depth})"
                )
        if self.attention == "msc":
            for layer in range(self.depth):
                self.attention_config(layer)  # MSCAttentionConfig validates heads and window
        return self

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    def layer_pools(self) -> list[int]:
        """Low-Res pooling factor r of every layer."""
        if self.pool_schedule is not None:
            return list(self.pool_schedule)
        if self.max_pool is not None:
            return geometric_pool_schedule(self.depth, self.pool, self.max_pool)
        return [self.pool] * self.depth

    def attention_config(self, layer: int) -> MSCAttentionConfig | FrameCausalAttentionConfig:
        if self.attention == "dense":
            return FrameCausalAttentionConfig(dim=self.dim, num_heads=self.num_heads)
        return MSCAttentionConfig(
            dim=self.dim,
            num_heads=self.num_heads,
            high_res_head_ratio=self.high_res_head_ratio,
            window=self.window,
            temporal_window=self.temporal_window,
            pool=self.layer_pools()[layer],
            temporal_stride=self.temporal_stride,
            num_timesteps=self.num_timesteps,
            light_cone_growth=self.light_cone_growth,
            stride_anchor=self.stride_anchor,
            gate_keys=self.gate_keys,
            backend=self.backend,
        )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MSCTransformerConfig:
        """A named config (`PRESETS`), optionally with some fields changed."""
        if name not in PRESETS:
            raise ValueError(f"unknown MSCTransformer preset {name!r}; valid: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


# -----------------------------------------------------------------------------
# model


class MSCTransformer(nn.Module):
    """Frame-causal video DiT: `(B, C, T, H, W)` + per-frame timesteps -> `(B, C_out, T, H, W)`."""

    config_class = MSCTransformerConfig

    def __init__(self, config: MSCTransformerConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embed = nn.Linear(config.patch_size**2 * config.in_channels, dim)
        self.t_embedder = TimestepEmbedder(dim, config.timestep_frequency_dim)
        self.cond_embedder = nn.Linear(config.cond_dim, dim) if config.cond_dim is not None else None
        self.blocks = nn.ModuleList(MSCTransformerBlock(config, i) for i in range(config.depth))
        self.final_layer = FinalLayer(dim, config.patch_size, config.output_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Attention layers keep their own init (MSC's noise gates start at an exact 1:1 mix).
        initialize_dit_weights(self, keep=[blk.attn for blk in self.blocks])

    def new_cache(self) -> list[Any]:
        """One empty KV cache per layer, for streaming frames through `forward(..., cache=...)`."""
        return [blk.attn.new_cache() for blk in self.blocks]

    # -- stages ---------------------------------------------------------------

    def embed(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, frame_offset: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens `(B, T, h, w, C)` with positions, and per-frame condition `(B, T, C)`."""
        tokens = self.patch_embed(patchify(x, self.config.patch_size))  # (B, T, h, w, C)
        _, T, h, w, dim = tokens.shape
        frames = frame_index_embedding(frame_offset, T, dim, x.device)  # (T, C)
        space = spatial_sincos_embedding(h, w, dim, x.device)  # (h, w, C)
        tokens = tokens + (frames[:, None, None, :] + space[None]).to(tokens.dtype)
        c = self.t_embedder(t)  # (B, T, C)
        if cond is not None:
            c = c + self.cond_embedder(cond)[:, None, :]  # one global condition for every frame
        return tokens, c

    def forward_blocks(
        self, tokens: torch.Tensor, c: torch.Tensor, t: torch.Tensor, cache: list[Any] | None, update_cache: bool
    ) -> torch.Tensor:
        # Recomputing a block must not append to its cache twice, so checkpointing is for
        # cache-free (training) calls only.
        use_checkpoint = self.config.gradient_checkpointing and cache is None and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks):
            layer_cache = None if cache is None else cache[i]
            if use_checkpoint:
                tokens = checkpoint(blk, tokens, c, t, use_reentrant=False)
            else:
                tokens = blk(tokens, c, t, cache=layer_cache, update_cache=update_cache)
        return tokens

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cache: list[Any] | None = None,
        update_cache: bool = False,
        frame_offset: int | None = None,
    ) -> torch.Tensor:
        """Denoiser output for `x` `(B, C, T, H, W)` at per-frame timesteps `t` `(B, T)`.

        `cond` `(B, cond_dim)`: a global condition (class / text embedding) added to every
        frame's timestep embedding. With `cache` (from `new_cache()`) holding n frames, `x`
        holds frames n..n+T-1 and the result equals those frames of the full forward;
        `update_cache=True` then appends their keys/values (do it with the clean frames).
        `frame_offset` is the absolute index of the first frame of `x` (default: the
        number of cached frames, or 0); only the frame-index embedding reads it.
        `t` is integer or float, in `[0, config.num_timesteps)`. Floating `x` / `cond` of
        another dtype than the parameters are cast to theirs (`msc_core.validation`).
        Returns `(B, out_channels, T, H, W)`.
        """
        x, cond = self._check_inputs(x, t, cond, cache, update_cache, frame_offset)
        if frame_offset is None:
            frame_offset = 0 if cache is None else cache[0].num_frames
        t = t.to(torch.float32)  # integer or float timesteps; embedded sinusoidally
        tokens, c = self.embed(x, t, cond, frame_offset)
        tokens = self.forward_blocks(tokens, c, t, cache, update_cache)
        out = self.final_layer(tokens, c)  # (B, T, h, w, p*p*C_out)
        return unpatchify(out, self.config.patch_size, self.config.output_channels)

    def _check_inputs(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None,
        cache: list[Any] | None,
        update_cache: bool,
        frame_offset: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Shapes, dtypes and values of the inputs; returns `x` and `cond` in the parameters' dtype."""
        cfg = self.config
        check_tensor("x", x, floating=False, allow_empty=True)
        check_tensor("t", t, floating=False, allow_empty=True)
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"x must be (B, C={cfg.in_channels}, T, H, W), got shape {tuple(x.shape)}"
            )
        B, _, T, H, W = x.shape
        num_patches(H, cfg.patch_size, "height")
        num_patches(W, cfg.patch_size, "width")
        if t.shape != (B, T):
            raise ValueError(f"t must be per-frame timesteps (B, T)=({B}, {T}), got shape {tuple(t.shape)}")
        if cond is not None:
            if cfg.cond_dim is None:
                raise ValueError("cond was given but the model has cond_dim=None; set cond_dim in the config")
            check_tensor("cond", cond, allow_empty=True)
            if cond.shape != (B, cfg.cond_dim):
                raise ValueError(f"cond must be (B, cond_dim)=({B}, {cfg.cond_dim}), got shape {tuple(cond.shape)}")
        if update_cache and cache is None:
            raise ValueError("update_cache=True needs a cache from model.new_cache()")
        if cache is not None:
            if len(cache) != cfg.depth:
                raise ValueError(f"cache has {len(cache)} layers, the model has depth={cfg.depth}; use model.new_cache()")
            counts = {layer.num_frames for layer in cache}
            if len(counts) != 1:
                raise ValueError(f"cache layers hold different numbers of frames {sorted(counts)}; use a fresh cache")
        if frame_offset is not None and frame_offset < 0:
            raise ValueError(f"frame_offset must be >= 0, got {frame_offset}")
        check_tensor("x", x)  # floating, no zero-sized axis
        check_timesteps("t", t, cfg.num_timesteps, integer=False)
        dtype = model_dtype(self)
        x = to_model_dtype("x", x, dtype)
        check_finite("x", x)
        if cond is not None:
            cond = to_model_dtype("cond", cond, dtype)
            check_finite("cond", cond)
        return x, cond


# -----------------------------------------------------------------------------
# named presets (torchtitan-style debug flavours)

PRESETS: dict[str, dict[str, Any]] = {
    # tests: 8x8 inputs with p=2 give a 4x4 grid; r = 2 then 4 exercises the schedule
    "tiny": dict(
        in_channels=4, patch_size=2, dim=64, depth=2, num_heads=4, window=3,
        temporal_window=2, temporal_stride=2, pool=2, max_pool=4,
    ),
    # CPU demo on 32x32 moving digits (3-channel video): p=4 gives an 8x8 grid
    "demo": dict(
        in_channels=3, patch_size=4, dim=128, depth=6, num_heads=4, window=5,
        temporal_window=3, temporal_stride=4, pool=2, max_pool=4,
    ),
}
