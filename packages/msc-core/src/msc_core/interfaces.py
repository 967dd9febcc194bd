"""Typed interfaces shared by every msc package (DESIGN.md, "Typed interfaces").

- `LatentSpec`: what a tokenizer produces and a generator consumes.
- `Tokenizer`: `encode(video) -> latents`, `decode(latents) -> video`, `latent_spec`.
- `Generator`: `training_losses(batch) -> named losses`, `generate(request) -> video/latents`.
- `GenerationRequest`: everything one generation call needs.

Video tensors are `[B, 3, T, H, W]` floats in `[-1, 1]`; per-frame diffusion timesteps
are `[B, T]` integer tensors everywhere.
"""

from __future__ import annotations

from typing import Literal, Mapping, Protocol, runtime_checkable

import torch
from pydantic import ConfigDict, Field, field_validator, model_validator

from msc_core.config import Config


class LatentSpec(Config):
    """Shape contract of a latent space.

    `layout="grid"`: latents `[B, C, T', H', W']` (3D VAE); `layout="tokens"`: latents
    `[B, T', L, D]` (1D AR-VAE: L tokens of D dims per frame).
    `causal_first_frame=True` means the first frame is encoded alone and each further
    group of `temporal_compression` frames gives one latent frame (inputs of 1 + k*tc
    frames), as causal video VAEs do.

    `token_grid=(h, w)` (token layout only) says that the L tokens of a frame stand for
    image regions on an `h x w` grid, row-major (token l covers row `l // w`, column
    `l % w`), so a generator may treat them as a small image (MSC attention's windows
    and pooling assume that neighbouring tokens are close in the image). None: the
    tokens have no spatial order (learned queries), and a generator must attend densely
    within a frame.
    """

    layout: Literal["grid", "tokens"]
    channels: int = Field(gt=0, description="C for grid latents, D for token latents")
    tokens_per_frame: int | None = Field(default=None, gt=0, description="L, token layout only")
    token_grid: tuple[int, int] | None = Field(default=None, description="(h, w) of the tokens' image regions")
    temporal_compression: int = Field(default=1, ge=1)
    spatial_compression: int = Field(default=1, ge=1)
    causal_first_frame: bool = False

    @model_validator(mode="after")
    def _check_layout(self) -> "LatentSpec":
        if self.layout == "tokens" and self.tokens_per_frame is None:
            raise ValueError("tokens_per_frame is required when layout='tokens'")
        if self.layout == "grid" and (self.tokens_per_frame is not None or self.token_grid is not None):
            raise ValueError("tokens_per_frame and token_grid only apply to layout='tokens'")
        if self.token_grid is not None:
            h, w = self.token_grid
            if h < 1 or w < 1 or h * w != self.tokens_per_frame:
                raise ValueError(f"token_grid {self.token_grid} must multiply to tokens_per_frame={self.tokens_per_frame}")
        return self

    @property
    def channel_dim(self) -> int:
        """Axis of the channels: 1 for `[B, C, T, H, W]`, -1 for `[B, T, L, D]`."""
        return 1 if self.layout == "grid" else -1

    @property
    def frame_dim(self) -> int:
        """Axis of the latent frames: 2 for `[B, C, T, H, W]`, 1 for `[B, T, L, D]`."""
        return 2 if self.layout == "grid" else 1

    def valid_num_frames(self, num_frames: int) -> bool:
        tc = self.temporal_compression
        if self.causal_first_frame:
            return num_frames >= 1 and (num_frames - 1) % tc == 0
        return num_frames >= 1 and num_frames % tc == 0

    def nearest_valid_num_frames(self, num_frames: int) -> tuple[int, int]:
        """The valid frame counts just below and just above `num_frames`."""
        tc = self.temporal_compression
        base = 1 if self.causal_first_frame else tc
        below = max(base, base + ((num_frames - base) // tc) * tc)
        above = below if below >= num_frames else below + tc
        if below > num_frames:
            below = base
        return below, above

    def latent_frames(self, num_frames: int) -> int:
        if not self.valid_num_frames(num_frames):
            below, above = self.nearest_valid_num_frames(num_frames)
            rule = f"1 + {self.temporal_compression}k" if self.causal_first_frame else f"{self.temporal_compression}k"
            raise ValueError(
                f"num_frames={num_frames} is not valid for this latent space (frames must be "
                f"{rule}); nearest valid lengths: {below} or {above}"
            )
        tc = self.temporal_compression
        return 1 + (num_frames - 1) // tc if self.causal_first_frame else num_frames // tc

    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """Shape of the latents of a `[batch, 3, num_frames, height, width]` video."""
        s = self.spatial_compression
        if height % s or width % s:
            raise ValueError(
                f"frame size {height}x{width} is not divisible by the spatial compression {s}"
            )
        t = self.latent_frames(num_frames)
        if self.layout == "grid":
            return (batch, self.channels, t, height // s, width // s)
        return (batch, t, self.tokens_per_frame, self.channels)

    def pixel_frames(self, latent_frames: int) -> int:
        tc = self.temporal_compression
        return 1 + (latent_frames - 1) * tc if self.causal_first_frame else latent_frames * tc


@runtime_checkable
class Tokenizer(Protocol):
    """Video <-> latents. Video `[B, 3, T, H, W]` in `[-1, 1]`; latents per `latent_spec`."""

    @property
    def latent_spec(self) -> LatentSpec: ...

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class SchedulerParams(Config):
    """Sampler knobs a generator may read; each generator documents which it uses."""

    offset: int | None = Field(default=None, ge=0, description="AD scheduler offset s (AR-Diffusion)")
    eta: float = Field(default=0.0, ge=0.0, le=1.0, description="DDIM eta")
    window: int | None = Field(default=None, ge=1, description="sliding window in frames")
    temperature: float = Field(default=1.0, gt=0.0)


class GenerationRequest(Config):
    """One generation call: frames, prompt, prefix, guidance, steps, seed, scheduler."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    num_frames: int = Field(ge=1)
    batch_size: int = Field(default=1, ge=1)
    prompt: str | list[str] | None = None
    prefix: torch.Tensor | None = Field(
        default=None, exclude=True, description="clean prefix frames, same layout as the output"
    )
    class_label: int | list[int] | None = None
    guidance_scale: float = Field(default=1.0, ge=0.0)
    num_steps: int = Field(default=50, ge=1)
    seed: int | None = None
    scheduler: SchedulerParams = SchedulerParams()

    @field_validator("prefix")
    @classmethod
    def _prefix_is_tensor(cls, v: torch.Tensor | None) -> torch.Tensor | None:
        if v is not None and not isinstance(v, torch.Tensor):
            raise ValueError(f"prefix must be a torch.Tensor, got {type(v).__name__}")
        return v


@runtime_checkable
class Generator(Protocol):
    """A video generator: named training losses and `generate(request)`."""

    def training_losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named losses; the key `"loss"` is the scalar to optimise."""
        ...

    def generate(self, request: GenerationRequest) -> torch.Tensor: ...


def num_patches(size: int, patch: int, what: str) -> int:
    """`size // patch`, or a ValueError naming the sizes when it does not divide."""
    if size % patch:
        raise ValueError(f"{what}={size} is not divisible by patch size {patch}; use a multiple of {patch}")
    return size // patch


