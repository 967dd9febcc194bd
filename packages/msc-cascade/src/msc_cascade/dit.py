"""Cascade DiT: the first decoding stage of CascadeV's LDM-VAE (§3.1, §3.3, §3.4 ii).

The DiT takes the noisy target latent concatenated on channels with the **upsampled base
latent** and predicts the clean target latent, both in the 3D VAE's latent space
(`[B, C, T, H, W]`). There is no text cross-attention (§3.3: the base latent already
carries the semantics); conditioning is the diffusion timestep only. Attention is grid
3D attention, with a per-layer schedule of spatial / temporal / full groups.

Blocks reuse the MSC transformer's embedders and adaLN-Zero pieces (one source of
truth); the timestep is per sample, so every frame gets the same modulation.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msc_cascade.grid_attention import GRID_KINDS, GridAttention3D
from msc_core.config import Config
from msc_core.interfaces import num_patches
from msc_core.transformer import (
    FinalLayer,
    Mlp,
    TimestepEmbedder,
    frame_index_embedding,
    initialize_dit_weights,
    modulate,
    patchify,
    spatial_sincos_embedding,
    unpatchify,
)


def default_grid_schedule(depth: int, full_every: int = 4) -> tuple[str, ...]:
    """Alternate spatial / temporal layers with a full 3D layer every `full_every` layers."""
    kinds = []
    for i in range(depth):
        if full_every and (i + 1) % full_every == 0:
            kinds.append("full")
        else:
            kinds.append("spatial" if i % 2 == 0 else "temporal")
    return tuple(kinds)


class CascadeDiTConfig(Config):
    """Architecture of the cascade DiT; channels are the 3D VAE's latent channels."""

    latent_channels: int = Field(16, gt=0)
    patch_size: int = Field(1, gt=0)
    dim: int = Field(256, gt=0)
    depth: int = Field(8, gt=0)
    num_heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    window: int = Field(4, gt=0, description="spatial group: window x window tokens, all frames")
    chunk: int = Field(2, gt=0, description="temporal group: chunk frames, full resolution")
    grid_partitions: int | None = Field(
        None, gt=0, description="CascadeV's P^2 rule: spatial groups ceil(H/P) x ceil(W/P) over all frames, "
        "temporal groups ceil(T/P^2) frames, ~THW/P^2 tokens each whatever the size (window and chunk unused); "
        "not exportable to ONNX",
    )
    grid_schedule: tuple[Literal["spatial", "temporal", "full"], ...] | None = Field(
        None, description="one kind per layer; default alternates spatial/temporal with a full layer every 4"
    )
    timestep_frequency_dim: int = Field(256, ge=2)

    @model_validator(mode="after")
    def _check(self) -> "CascadeDiTConfig":
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.grid_schedule is not None and len(self.grid_schedule) != self.depth:
            raise ValueError(
                f"grid_schedule has {len(self.grid_schedule)} entries, depth={self.depth}: give one of "
                f"{GRID_KINDS} per layer"
            )
        return self

    def layer_kinds(self) -> tuple[str, ...]:
        return self.grid_schedule if self.grid_schedule is not None else default_grid_schedule(self.depth)


class CascadeBlock(nn.Module):
    """Pre-norm DiT block with adaLN-Zero around grid 3D attention and an MLP."""

    def __init__(self, config: CascadeDiTConfig, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.norm1 = nn.LayerNorm(config.dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(config.dim, elementwise_affine=False, eps=1e-6)
        self.attn = GridAttention3D(
            config.dim, config.num_heads, config.window, config.chunk, partitions=config.grid_partitions
        )
        self.mlp = Mlp(config.dim, int(config.dim * config.mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.dim, 6 * config.dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """`x` `(B, T, H, W, C)`, condition `c` `(B, T, C)`."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a[:, :, None, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a), self.kind)
        return x + gate_m[:, :, None, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class CascadeDiT(nn.Module):
    """`(noisy target, upsampled base)` latents + timestep -> clean target latent prediction."""

    config_class = CascadeDiTConfig

    def __init__(self, config: CascadeDiTConfig) -> None:
        super().__init__()
        self.config = config
        C, p = config.latent_channels, config.patch_size
        self.patch_embed = nn.Linear(p * p * 2 * C, config.dim)
        self.t_embedder = TimestepEmbedder(config.dim, config.timestep_frequency_dim)
        self.blocks = nn.ModuleList(CascadeBlock(config, kind) for kind in config.layer_kinds())
        self.final_layer = FinalLayer(config.dim, p, C)
        initialize_dit_weights(self)

    def forward(self, x_t: torch.Tensor, base: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """`x_t`, `base` `(B, C, T, H, W)` (base already upsampled to the target size), `t` `(B,)`."""
        cfg = self.config
        if x_t.ndim != 5 or x_t.shape[1] != cfg.latent_channels:
            raise ValueError(f"x_t must be (B, C={cfg.latent_channels}, T, H, W), got {tuple(x_t.shape)}")
        if base.shape != x_t.shape:
            raise ValueError(f"base latent {tuple(base.shape)} must be upsampled to the target shape {tuple(x_t.shape)}")
        B, _, T, H, W = x_t.shape
        if t.shape != (B,):
            raise ValueError(f"t must be one timestep per sample, shape ({B},), got {tuple(t.shape)}")
        num_patches(H, cfg.patch_size, "latent height")
        num_patches(W, cfg.patch_size, "latent width")
        tokens = self.patch_embed(patchify(torch.cat([x_t, base], dim=1), cfg.patch_size))  # (B, T, h, w, D)
        _, _, h, w, dim = tokens.shape
        pos = frame_index_embedding(0, T, dim, x_t.device)[:, None, None] + spatial_sincos_embedding(h, w, dim, x_t.device)
        tokens = tokens + pos.to(tokens.dtype)
        c = self.t_embedder(t.to(torch.float32)[:, None]).expand(B, T, dim)  # (B, T, D)
        for blk in self.blocks:
            tokens = blk(tokens, c)
        return unpatchify(self.final_layer(tokens, c), cfg.patch_size, cfg.latent_channels)


def upsample_base_latent(base: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Resize a base latent `(B, C, t, h, w)` to `(B, C, T, H, W)`.

    Space: bilinear per frame (super-resolution mode). Time: linear with the first and last
    latent frames aligned (frame-rate mode: a causal VAE's first latent frame is the first
    video frame and its last covers the end of the clip in both streams).
    """
    T, H, W = size
    B, C, t, h, w = base.shape
    x = base
    if (h, w) != (H, W):
        x = F.interpolate(x.transpose(1, 2).reshape(B * t, C, h, w), size=(H, W), mode="bilinear", align_corners=False)
        x = x.reshape(B, t, C, H, W).transpose(1, 2)
    if t != T:
        x = x.permute(0, 1, 3, 4, 2).reshape(B, C * H * W, t)
        x = F.interpolate(x, size=T, mode="linear", align_corners=True) if t > 1 else x.expand(-1, -1, T)
        x = x.reshape(B, C, H, W, T).permute(0, 1, 4, 2, 3)
    return x.contiguous()


