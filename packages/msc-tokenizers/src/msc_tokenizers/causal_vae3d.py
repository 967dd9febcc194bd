"""CausalVAE3D: a causal 3D convolutional video VAE (4x temporal, 8x8 spatial by default).

The latent space NOVA (§4.1: "4x compression in the temporal dimension and 8x8 in the
spatial dimension") and CascadeV (§3.3: the "standard VAE" under the LDM decoder)
build on; MSC §3.2 explains why 4x temporal compression is natural (it folds the
B-frames between P-frames). Design, chosen to train in minutes on a CPU:

- **Causal first frame.** The first frame is repeated `tc - 1` times in front, so the
  first latent frame encodes frame 0 alone and each further latent frame encodes the
  next `tc` frames: inputs have `1 + tc * k` frames (`LatentSpec.causal_first_frame`).
- **Space-time patchify.** The video is folded into `tc x p x p` patches at the input
  and unfolded at the output (pixel shuffle), so the network runs at the latent frame
  rate and `1/p` of the resolution; strided 2D convolutions do the remaining spatial
  compression, pixel-shuffle convolutions the expansion.
- **Causality.** Temporal convolutions are padded on the left only; norms act per pixel
  (RMS over channels, default) or per frame (GroupNorm over one frame), never across
  frames. Latent frame `j` therefore depends on frames `<= tc * j` only, and decoded
  frames of latent group `j` on latent frames `<= j` only.
- **Chunked (streaming) encode/decode.** Each causal convolution keeps the last
  `k_t - 1` input frames of the previous chunk; that state is an explicit list of
  tensors (`encode_chunk` / `decode_chunk` / `decode_step`), so chunked output equals
  whole-clip output up to float rounding, with memory independent of clip length, and
  an ONNX export can carry the cache as graph inputs/outputs.
- **Spatial tiling** with blended overlaps (`enable_tiling`) for large frames.
- Diagonal Gaussian posterior with a KL term; losses in `autoencoder_losses`.

Input contract (`msc_core.validation`): videos are floating tensors in [-1, 1] (a
1e-3 tolerance), latents floating; both finite, without zero-sized axes, and cast to
the parameters' dtype when of another float dtype; int / uint8 / bool are refused.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msc_core.config import Config
from msc_core.interfaces import LatentSpec
from msc_core.validation import (
    check_positive_int,
    check_tensor,
    check_values,
    check_video,
    model_dtype,
    to_model_dtype,
    trusted_inputs,
)
from msc_tokenizers.autoencoder_losses import AutoencoderLoss, AutoencoderLossConfig, sample_diagonal_gaussian
from msc_tokenizers.spatial_tiling import tiled_map

# -----------------------------------------------------------------------------
# config


class CausalVAE3DConfig(Config):
    """`spatial_compression = patch_size * 2 ** (len(channels) - 1)` is checked, not derived,
    so a YAML states the compression it expects."""

    kind: Literal["vae3d"] = "vae3d"
    in_channels: int = Field(default=3, gt=0)
    latent_channels: int = Field(default=16, gt=0)
    temporal_compression: int = Field(default=4, ge=1)
    spatial_compression: int = Field(default=8, ge=1)
    patch_size: int = Field(default=4, ge=1, description="space-to-depth factor at the input")
    channels: tuple[int, ...] = Field(default=(64, 128), min_length=1, description="width per resolution stage")
    blocks_per_stage: int = Field(default=2, ge=0)
    temporal_kernel: int = Field(default=3, ge=1, description="k_t of the causal temporal convolutions")
    norm: Literal["rms", "group"] = "rms"
    norm_groups: int = Field(default=8, ge=1, description="groups of the per-frame GroupNorm")
    linear_shortcut: bool = Field(
        default=True,
        description="learned linear paths patches -> latents -> patches beside the deep paths "
        "(a residual autoencoder in the spirit of DC-AE; it makes early training fast)",
    )
    losses: AutoencoderLossConfig = AutoencoderLossConfig()

    @model_validator(mode="after")
    def _check_compression(self) -> "CausalVAE3DConfig":
        stages = len(self.channels) - 1
        got = self.patch_size * 2**stages
        if got != self.spatial_compression:
            raise ValueError(
                f"spatial_compression={self.spatial_compression} but patch_size={self.patch_size} with "
                f"{len(self.channels)} channel stages gives {self.patch_size} * 2**{stages} = {got}; "
                f"use patch_size={self.spatial_compression // 2**stages} or change channels"
                if self.spatial_compression % 2**stages == 0
                else f"spatial_compression={self.spatial_compression} is not patch_size * 2**{stages} for any patch_size"
            )
        if self.norm == "group":
            bad = [c for c in self.channels if c % self.norm_groups]
            if bad:
                raise ValueError(f"channels {bad} are not divisible by norm_groups={self.norm_groups}")
        return self

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "CausalVAE3DConfig":
        """Named sizes: `tiny` (tests, a few thousand parameters per layer) and `small`
        (the CPU quality run: 4x8x8, 16 latent channels)."""
        presets: dict[str, dict[str, Any]] = {
            "tiny": dict(latent_channels=4, channels=(16, 32), blocks_per_stage=1),
            "small": dict(),
        }
        if name not in presets:
            raise ValueError(f"unknown CausalVAE3D preset {name!r}; valid: {sorted(presets)}")
        return cls.from_dict({**presets[name], **overrides})

    @property
    def latent_spec(self) -> LatentSpec:
        """What this VAE makes: grid latents `[B, latent_channels, 1 + (T - 1) / tc, H / s, W / s]`."""
        return LatentSpec(
            layout="grid",
            channels=self.latent_channels,
            temporal_compression=self.temporal_compression,
            spatial_compression=self.spatial_compression,
            causal_first_frame=True,
        )


# -----------------------------------------------------------------------------
# space-time folding (pure tensor maths)


def space_time_to_depth(x: torch.Tensor, tt: int, p: int) -> torch.Tensor:
    """`(B, C, T*tt, H*p, W*p)` -> `(B, C*tt*p*p, T, H, W)`; channel order (C, tt, p, p)."""
    B, C, T, H, W = x.shape
    x = x.view(B, C, T // tt, tt, H // p, p, W // p, p)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # (B, C, tt, p, p, T, H, W)
    return x.reshape(B, C * tt * p * p, T // tt, H // p, W // p)


def depth_to_space_time(x: torch.Tensor, tt: int, p: int) -> torch.Tensor:
    """Inverse of `space_time_to_depth`: `(B, C*tt*p*p, T, H, W)` -> `(B, C, T*tt, H*p, W*p)`."""
    B, D, T, H, W = x.shape
    C = D // (tt * p * p)
    x = x.view(B, C, tt, p, p, T, H, W)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, C, T, tt, H, p, W, p)
    return x.reshape(B, C, T * tt, H * p, W * p)


# -----------------------------------------------------------------------------
# causal building blocks


class CausalConvCache:
    """State of chunked processing: for every causal convolution, in call order, the last
    `k_t - 1` frames of its input so far. `states=None` is the start of a clip (zeros,
    exactly the left zero padding of a whole-clip pass)."""

    def __init__(self, states: Sequence[torch.Tensor] | None = None) -> None:
        self.states_in = None if states is None else list(states)
        self.states_out: list[torch.Tensor] = []

    def prepend_past(self, x: torch.Tensor, time_pad: int) -> torch.Tensor:
        """`x` `(B, C, T, H, W)` -> `(B, C, time_pad + T, H, W)` with the cached frames in front."""
        index = len(self.states_out)
        expected = (x.shape[0], x.shape[1], time_pad, *x.shape[3:])
        if self.states_in is None:
            past = x.new_zeros(expected)
        else:
            if index >= len(self.states_in):
                raise ValueError(f"cache has {len(self.states_in)} states but the network needs more; wrong cache?")
            past = self.states_in[index]
            if tuple(past.shape) != expected:
                raise ValueError(
                    f"cache state {index} has shape {tuple(past.shape)}, expected {expected}: "
                    "was the cache made for another batch size or frame size?"
                )
        full = torch.cat([past, x], dim=2)
        # clone: a view would keep the whole chunk's activation alive until the next chunk
        self.states_out.append(full[:, :, -time_pad:].clone())
        return full

    def finish(self) -> list[torch.Tensor]:
        if self.states_in is not None and len(self.states_in) != len(self.states_out):
            raise ValueError(f"cache has {len(self.states_in)} states, the network used {len(self.states_out)}")
        return self.states_out


class CausalConv3d(nn.Module):
    """3D convolution padded `k_t - 1` frames on the left only (zeros, or the cache)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int], stride: int = 1) -> None:
        super().__init__()
        kt, kh, kw = kernel
        self.time_pad = kt - 1
        self.conv = nn.Conv3d(cin, cout, kernel, stride=(1, stride, stride), padding=(0, kh // 2, kw // 2))

    def forward(self, x: torch.Tensor, cache: CausalConvCache | None = None) -> torch.Tensor:
        if self.time_pad:
            if cache is None:
                x = F.pad(x, (0, 0, 0, 0, self.time_pad, 0))
            else:
                x = cache.prepend_past(x, self.time_pad)
        return self.conv(x)


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at each (frame, pixel): no mixing across frames or pixels."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return x * self.weight.view(1, -1, 1, 1, 1)


class FrameGroupNorm(nn.Module):
    """GroupNorm with statistics over (channels of a group, H, W) of ONE frame."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)
        frames = F.group_norm(frames, self.groups, self.weight, self.bias, self.eps)
        return frames.view(B, T, C, H, W).transpose(1, 2)


def make_norm(config: CausalVAE3DConfig, channels: int) -> nn.Module:
    return ChannelRMSNorm(channels) if config.norm == "rms" else FrameGroupNorm(channels, config.norm_groups)


class CausalResBlock(nn.Module):
    """norm-SiLU-causal (k_t,3,3) conv, norm-SiLU-(1,3,3) conv, plus the skip: (2+1)D-cheap,
    one temporal conv per block."""

    def __init__(self, config: CausalVAE3DConfig, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = make_norm(config, cin)
        self.conv1 = CausalConv3d(cin, cout, (config.temporal_kernel, 3, 3))
        self.norm2 = make_norm(config, cout)
        self.conv2 = CausalConv3d(cout, cout, (1, 3, 3))
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalConvCache | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return self.skip(x) + h


class FrameDownsample(nn.Module):
    """Per-frame stride-2 3x3 convolution (halves H and W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(cin, cout, (1, 3, 3), stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FrameUpsample(nn.Module):
    """Per-frame 3x3 convolution to 4x channels then pixel shuffle (doubles H and W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(cin, 4 * cout, (1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space_time(self.conv(x), 1, 2)


# -----------------------------------------------------------------------------
# encoder / decoder


class CausalEncoder3D(nn.Module):
    """Patchified video `(B, C*tc*p*p, T', H/p, W/p)` -> moments `(B, 2*latent, T', H/s, W/s)`."""

    def __init__(self, config: CausalVAE3DConfig) -> None:
        super().__init__()
        ch = config.channels
        fold = config.in_channels * config.temporal_compression * config.patch_size**2
        kt = config.temporal_kernel
        self.conv_in = CausalConv3d(fold, ch[0], (kt, 3, 3))
        self.stages = nn.ModuleList(
            nn.ModuleList(CausalResBlock(config, ch[i], ch[i]) for _ in range(config.blocks_per_stage))
            for i in range(len(ch))
        )
        self.downsamples = nn.ModuleList(FrameDownsample(ch[i], ch[i + 1]) for i in range(len(ch) - 1))
        self.mid = CausalResBlock(config, ch[-1], ch[-1])
        self.norm_out = make_norm(config, ch[-1])
        self.conv_out = CausalConv3d(ch[-1], 2 * config.latent_channels, (kt, 3, 3))
        self.stride = 2 ** (len(ch) - 1)
        self.shortcut = (
            nn.Conv3d(fold * self.stride**2, 2 * config.latent_channels, 1) if config.linear_shortcut else None
        )

    def forward(self, x: torch.Tensor, cache: CausalConvCache | None = None) -> torch.Tensor:
        skip = None if self.shortcut is None else self.shortcut(space_time_to_depth(x, 1, self.stride))
        h = self.conv_in(x, cache)
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                h = block(h, cache)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
        h = self.mid(h, cache)
        h = self.conv_out(F.silu(self.norm_out(h)), cache)
        return h if skip is None else h + skip


class CausalDecoder3D(nn.Module):
    """Latents `(B, latent, T', h, w)` -> patchified video `(B, C*tc*p*p, T', h*s/p, w*s/p)`."""

    def __init__(self, config: CausalVAE3DConfig) -> None:
        super().__init__()
        ch = config.channels[::-1]
        fold = config.in_channels * config.temporal_compression * config.patch_size**2
        kt = config.temporal_kernel
        self.conv_in = CausalConv3d(config.latent_channels, ch[0], (kt, 3, 3))
        self.mid = CausalResBlock(config, ch[0], ch[0])
        self.stages = nn.ModuleList(
            nn.ModuleList(CausalResBlock(config, ch[i], ch[i]) for _ in range(config.blocks_per_stage))
            for i in range(len(ch))
        )
        self.upsamples = nn.ModuleList(FrameUpsample(ch[i], ch[i + 1]) for i in range(len(ch) - 1))
        self.norm_out = make_norm(config, ch[-1])
        self.conv_out = CausalConv3d(ch[-1], fold, (kt, 3, 3))
        self.stride = 2 ** (len(ch) - 1)
        self.shortcut = (
            nn.Conv3d(config.latent_channels, fold * self.stride**2, 1) if config.linear_shortcut else None
        )
        if self.shortcut is not None:
            # Zero at the start, so the decoder does not begin by amplifying the
            # posterior noise into the pixels (2.3 dB better after 400 CPU steps).
            nn.init.zeros_(self.shortcut.weight)
            nn.init.zeros_(self.shortcut.bias)

    def forward(self, z: torch.Tensor, cache: CausalConvCache | None = None) -> torch.Tensor:
        skip = None if self.shortcut is None else depth_to_space_time(self.shortcut(z), 1, self.stride)
        h = self.conv_in(z, cache)
        h = self.mid(h, cache)
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                h = block(h, cache)
            if i < len(self.upsamples):
                h = self.upsamples[i](h)
        h = self.conv_out(F.silu(self.norm_out(h)), cache)
        return h if skip is None else h + skip


# -----------------------------------------------------------------------------
# the model


class CausalVAE3D(nn.Module):
    """Causal video VAE: `encode` `[B, 3, 1+tc*k, H, W]` -> `[B, C, 1+k, H/s, W/s]`, `decode` back."""

    config_class = CausalVAE3DConfig

    def __init__(self, config: CausalVAE3DConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = CausalEncoder3D(config)
        self.decoder = CausalDecoder3D(config)
        self.loss = AutoencoderLoss(config.losses)
        self.tile_size: int | None = None  # pixels; None = tiling off
        self.tile_overlap = 0

    @property
    def latent_spec(self) -> LatentSpec:
        return self.config.latent_spec

    # --- input checks and folding ---------------------------------------------------

    def _check_video(self, video: torch.Tensor, first_chunk: bool = True) -> torch.Tensor:
        """The layout and frame rule, then the input contract; returns `video` in the parameters' dtype."""
        c = self.config
        check_tensor("video", video, floating=False, allow_empty=True)
        if video.ndim != 5 or video.shape[1] != c.in_channels:
            raise ValueError(f"video must be [B, {c.in_channels}, T, H, W], got shape {tuple(video.shape)}")
        B, _, T, H, W = video.shape
        if first_chunk:
            self.latent_spec.latent_shape(B, T, H, W)  # raises with the nearest valid lengths
        else:
            tc = c.temporal_compression
            if T % tc or T == 0:
                below, above = T // tc * tc, (T // tc + 1) * tc
                nearest = f"{below} or {above}" if below else f"{above}"
                raise ValueError(
                    f"a chunk after the first must have a multiple of {tc} frames, got {T}; nearest valid: {nearest}"
                )
            self.latent_spec.latent_shape(B, 1, H, W)  # spatial divisibility
        check_video("video", video)
        return to_model_dtype("video", video, model_dtype(self))

    def _check_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Layout and input contract of latents; returns them in the parameters' dtype."""
        c = self.config
        check_tensor("latents", latents, floating=False, allow_empty=True)
        if latents.ndim != 5 or latents.shape[1] != c.latent_channels:
            raise ValueError(
                f"latents must be [B, {c.latent_channels}, T', h, w], got shape {tuple(latents.shape)}"
            )
        check_values("latents", latents)
        return to_model_dtype("latents", latents, model_dtype(self))

    def _check_cache(self, cache: Sequence[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """A chunk cache from a previous call: a list of floating tensors, in the parameters' dtype
        (shapes are checked against the network by `CausalConvCache`)."""
        if cache is None:
            return None
        if not isinstance(cache, (list, tuple)):
            raise ValueError(f"cache must be the list of tensors a previous chunk returned (or None), got {type(cache).__name__}")
        dtype = model_dtype(self)
        checked = []
        for i, state in enumerate(cache):
            check_tensor(f"cache[{i}]", state, allow_empty=True)
            checked.append(to_model_dtype(f"cache[{i}]", state, dtype))
        return checked

    def _fold(self, video: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        """Video -> `(B, 3*tc*p*p, T', H/p, W/p)`; a first chunk gets frame 0 repeated in front."""
        tc = self.config.temporal_compression
        if first_chunk and tc > 1:
            video = torch.cat([video[:, :, :1].expand(-1, -1, tc - 1, -1, -1), video], dim=2)
        return space_time_to_depth(video, tc, self.config.patch_size)

    def _unfold(self, patches: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        tc = self.config.temporal_compression
        video = depth_to_space_time(patches, tc, self.config.patch_size)
        return video[:, :, tc - 1:] if first_chunk else video

    # --- whole-clip encode / decode ------------------------------------------------

    def encode_posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior `(mean, logvar)`, each `[B, latent_channels, T', H/s, W/s]`."""
        video = self._check_video(video)
        s = self.config.spatial_compression

        def moments_of(tile: torch.Tensor) -> torch.Tensor:
            return self.encoder(self._fold(tile, first_chunk=True))

        if self.tile_size is None:
            moments = moments_of(video)
        else:
            moments = tiled_map(moments_of, video, self.tile_size, self.tile_overlap, Fraction(1, s))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Deterministic latents (the posterior mean)."""
        return self.encode_posterior(video)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `[B, C, T', h, w]` -> video `[B, 3, 1 + tc*(T'-1), h*s, w*s]` (not clamped)."""
        latents = self._check_latents(latents)

        def video_of(tile: torch.Tensor) -> torch.Tensor:
            return self._unfold(self.decoder(tile), first_chunk=True)

        if self.tile_size is None:
            return video_of(latents)
        s = self.config.spatial_compression
        return tiled_map(video_of, latents, self.tile_size // s, self.tile_overlap // s, Fraction(s))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruction from the posterior mean."""
        latents = self.encode(video)
        with trusted_inputs():
            return self.decode(latents)

    # --- chunked (streaming) encode / decode -----------------------------------------

    def encode_chunk(
        self, video: torch.Tensor, cache: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode the next frames of a clip; `cache=None` starts a clip.

        The first chunk has `1 + tc*a` frames, later chunks `tc*b`. Returns the posterior
        mean of the chunk's latent frames and the cache for the next chunk.
        """
        first = cache is None
        video = self._check_video(video, first_chunk=first)
        state = CausalConvCache(self._check_cache(cache))
        moments = self.encoder(self._fold(video, first), state)
        return moments.chunk(2, dim=1)[0], state.finish()

    def decode_step(
        self, latents: torch.Tensor, cache: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Raw streaming step for exporters: `tc` frames per latent frame, never trimmed.

        `cache=None` equals `init_decode_cache(...)` (all zeros); the very first step's
        output then starts with `tc - 1` copies of frame 0, which the caller drops.
        """
        latents = self._check_latents(latents)
        state = CausalConvCache(self._check_cache(cache))
        patches = self.decoder(latents, state)
        return self._unfold(patches, first_chunk=False), state.finish()

    def decode_chunk(
        self, latents: torch.Tensor, cache: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode the next latent frames of a clip; `cache=None` starts a clip (and drops the
        `tc - 1` repeated copies of frame 0). Returns the frames and the next cache."""
        video, new_cache = self.decode_step(latents, cache)
        if cache is None:
            video = video[:, :, self.config.temporal_compression - 1:]
        return video, new_cache

    @torch.no_grad()
    def init_decode_cache(self, latents: torch.Tensor) -> list[torch.Tensor]:
        """The all-zero cache of a clip start, for latents shaped like `latents`."""
        _, cache = self.decode_step(latents[:, :, :1])
        return [torch.zeros_like(state) for state in cache]

    def encode_chunked(self, video: torch.Tensor, chunk_latent_frames: int = 1) -> torch.Tensor:
        """`encode` computed chunk by chunk: memory does not grow with clip length."""
        check_positive_int("chunk_latent_frames", chunk_latent_frames, allow_none=False)
        video = self._check_video(video)
        tc = self.config.temporal_compression
        bounds = [0, 1 + tc * (chunk_latent_frames - 1)]
        while bounds[-1] < video.shape[2]:
            bounds.append(min(bounds[-1] + tc * chunk_latent_frames, video.shape[2]))
        cache, out = None, []
        with trusted_inputs():  # chunks of the video checked above
            for start, stop in zip(bounds[:-1], bounds[1:]):
                mean, cache = self.encode_chunk(video[:, :, start:stop], cache)
                out.append(mean)
        return torch.cat(out, dim=2)

    def decode_chunked(self, latents: torch.Tensor, chunk_latent_frames: int = 1) -> torch.Tensor:
        """`decode` computed chunk by chunk: memory does not grow with clip length."""
        check_positive_int("chunk_latent_frames", chunk_latent_frames, allow_none=False)
        latents = self._check_latents(latents)
        cache, out = None, []
        with trusted_inputs():  # chunks of the latents checked above
            for start in range(0, latents.shape[2], chunk_latent_frames):
                frames, cache = self.decode_chunk(latents[:, :, start:start + chunk_latent_frames], cache)
                out.append(frames)
        return torch.cat(out, dim=2)

    # --- spatial tiling ---------------------------------------------------------------

    def enable_tiling(self, tile_size: int = 256, tile_overlap: int = 64) -> None:
        """Encode/decode frames larger than `tile_size` pixels in blended overlapping tiles.

        Both values are in pixels and must be multiples of the spatial compression.
        """
        s = self.config.spatial_compression
        if tile_size % s or tile_overlap % s or not 0 <= tile_overlap < tile_size:
            raise ValueError(
                f"tile_size={tile_size} and tile_overlap={tile_overlap} must be multiples of the "
                f"spatial compression {s} with 0 <= tile_overlap < tile_size"
            )
        self.tile_size, self.tile_overlap = tile_size, tile_overlap

    def disable_tiling(self) -> None:
        self.tile_size, self.tile_overlap = None, 0

    # --- training ---------------------------------------------------------------------

    def training_losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named losses of one batch (`batch["video"]`: `[B, 3, 1+tc*k, H, W]` in [-1, 1]);
        `"loss"` is the total. Tiling is not used in training."""
        if "video" not in batch:
            raise ValueError(f"batch must hold 'video'; got keys {sorted(batch)}")
        video = self._check_video(batch["video"])
        moments = self.encoder(self._fold(video, first_chunk=True))
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        recon = self._unfold(self.decoder(sample_diagonal_gaussian(mean, logvar)), first_chunk=True)
        return self.loss(video, recon, mean, logvar, last_layer=self.decoder.conv_out.conv.weight)
