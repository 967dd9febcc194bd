"""`NovaConfig`: every knob of a NOVA model (NOVA §3, §4.1), with `tiny` and `demo` presets.

Frames are either grids `[B, C, T, H, W]` (pixels in [-1, 1] or 3D-VAE latents),
cut into `patch_size` x `patch_size` patches, or token latents `[B, T, L, D]` (AR-VAE),
used as they are (`layout="tokens"`, `patch_size=1`). The paper's sizes (16 layers of
width 1024 per stack, a 3-block 1280-wide diffusion MLP, rank 24, 1000 training / 100
sampling diffusion steps, masking ratios in [0.7, 1]) are the defaults where they do
not depend on scale.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from msc_core.config import Config
from msc_core.interfaces import LatentSpec
from msc_core.latents import LatentNormalization


class NovaConfig(Config):
    kind: Literal["nova"] = "nova"

    # frames
    layout: Literal["grid", "tokens"] = "grid"
    in_channels: int = Field(default=3, gt=0, description="C of grid frames, D of token latents")
    patch_size: int = Field(default=2, ge=1, description="spatial patch of grid frames (1 for tokens)")
    sample_size: tuple[int, int] = Field(default=(16, 16), description="(H, W) generated when no prefix is given")
    tokens_per_frame: int | None = Field(default=None, gt=0, description="L of token latents (layout='tokens')")
    num_frames: int = Field(default=8, ge=1, description="training clip length = default context window")

    # transformers (temporal, spatial encoder/decoder, byte text encoder share width/heads)
    dim: int = Field(default=64, gt=0)
    num_heads: int = Field(default=4, gt=0)
    mlp_ratio: float = Field(default=4.0, gt=0)
    temporal_depth: int = Field(default=2, ge=1)
    spatial_encoder_depth: int = Field(default=1, ge=1)
    spatial_decoder_depth: int = Field(default=1, ge=1)
    scale_shift_rank: int = Field(default=24, ge=1, description="inner rank of the Scaling-and-Shift MLP (§4.4)")

    # per-token diffusion head (§3.4)
    head_width: int = Field(default=64, gt=0)
    head_depth: int = Field(default=3, ge=1)
    diffusion_batch_mul: int = Field(default=4, ge=1, description="token repeats per training step")
    num_train_timesteps: int = Field(default=1000, ge=2)
    noise_schedule: Literal["linear", "cosine"] = "cosine"
    sampling_diffusion_steps: int = Field(default=100, ge=1)
    clip_denoised: float | None = Field(
        default=1.0, gt=0.0,
        description="clamp x0 estimates to [-c, c] while sampling; default 1 for pixel grids, None (off) for "
        "latents (layout='tokens' or a tokenizer_path)",
    )

    # set-by-set masking (§4.1): truncated normal N(1, std) on [mask_ratio_min, 1]
    mask_ratio_min: float = Field(default=0.7, ge=0.0, lt=1.0)
    mask_ratio_std: float = Field(default=0.25, gt=0.0)

    # text and motion conditioning (§3.2)
    text_encoder: Literal["bytes", "hf"] = "bytes"
    text_encoder_path: str | None = Field(default=None, description="local Hugging Face model dir (text_encoder='hf')")
    max_text_length: int = Field(default=64, ge=2)
    text_depth: int = Field(default=2, ge=0, description="layers of the built-in byte text encoder")
    text_drop_prob: float = Field(default=0.1, ge=0.0, le=1.0, description="caption dropout for CFG")
    motion_scale: float = Field(default=10.0, gt=0.0, description="motion scores are divided by this")
    fps_scale: float = Field(default=30.0, gt=0.0, description="fps is divided by this")
    default_motion: float = Field(default=2.0, ge=0.0, description="motion score when none is given")
    default_fps: float = Field(default=8.0, gt=0.0, description="fps when none is given")

    # latent models (NOVA §3: the generator models a 3D VAE's normalised latents)
    tokenizer_path: str | None = Field(
        default=None, description="the frozen tokenizer whose latents the model generates (the training service "
        "encodes clips with it, VideoPipeline decodes with it); None: pixels or caller-supplied latents",
    )
    latent_normalization: LatentNormalization | None = Field(
        default=None, description="per-channel shift/scale of the tokenizer's latents (measured on the training data)"
    )
    clamp_latents: bool = Field(
        default=False, description="clamp latent x0 estimates to latent_normalization.bound (measured) when sampling"
    )

    @model_validator(mode="before")
    @classmethod
    def _latent_default_clamp(cls, data: Any) -> Any:
        # pixels in [-1, 1] are clamped by default; latents never are, unless a measured bound is asked for
        if isinstance(data, dict) and "clip_denoised" not in data:
            if data.get("layout") == "tokens" or data.get("tokenizer_path") is not None:
                return {**data, "clip_denoised": None}
        return data

    @model_validator(mode="after")
    def _check(self) -> "NovaConfig":
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.sampling_diffusion_steps > self.num_train_timesteps:
            raise ValueError(
                f"sampling_diffusion_steps={self.sampling_diffusion_steps} exceeds num_train_timesteps="
                f"{self.num_train_timesteps}"
            )
        if self.layout == "tokens":
            if self.tokens_per_frame is None:
                raise ValueError("layout='tokens' needs tokens_per_frame (L of the [B, T, L, D] latents)")
            if self.patch_size != 1:
                raise ValueError(
                    f"layout='tokens' takes tokens as they are: patch_size must be 1, got {self.patch_size}"
                )
        else:
            if self.tokens_per_frame is not None:
                raise ValueError("tokens_per_frame only applies to layout='tokens'")
            h, w = self.sample_size
            if h < 1 or w < 1 or h % self.patch_size or w % self.patch_size:
                raise ValueError(
                    f"sample_size={self.sample_size} must be positive multiples of patch_size={self.patch_size}"
                )
        latent = self.layout == "tokens" or self.tokenizer_path is not None
        if latent and self.clip_denoised is not None:
            raise ValueError(
                f"clip_denoised={self.clip_denoised} would clamp latents as if they were pixels; latent models use "
                "clamp_latents (the bound measured from the data) or no clamping"
            )
        # a training job measures the normalisation on its driver before the model is built
        # (tokenizer_path set, latent_normalization not yet): the bound is checked when sampling
        unmeasured = self.latent_normalization is None and self.tokenizer_path is not None
        if self.clamp_latents and not unmeasured and (
            self.latent_normalization is None or self.latent_normalization.bound is None
        ):
            raise ValueError("clamp_latents needs latent_normalization with a measured bound")
        if self.text_encoder == "hf" and not self.text_encoder_path:
            raise ValueError("text_encoder='hf' needs text_encoder_path (a local Hugging Face model directory)")
        return self

    def check_latent_space(self, spec: LatentSpec) -> None:
        """Refuse a tokenizer whose latents this model cannot read, naming both sides."""
        if spec.layout != self.layout:
            raise ValueError(f"the tokenizer makes {spec.layout} latents, the model reads layout={self.layout!r}")
        if spec.channels != self.in_channels:
            raise ValueError(f"the tokenizer's latents have {spec.channels} channels, the model reads in_channels={self.in_channels}")
        if spec.layout == "tokens" and spec.tokens_per_frame != self.tokens_per_frame:
            raise ValueError(
                f"the tokenizer makes {spec.tokens_per_frame} tokens per frame, the model reads "
                f"tokens_per_frame={self.tokens_per_frame}"
            )

    @property
    def x0_clamp(self) -> float | None:
        """The bound sampling clamps x0 estimates to: `clip_denoised` (pixels), the measured
        latent bound with `clamp_latents`, else None."""
        if self.clamp_latents:
            if self.latent_normalization is None or self.latent_normalization.bound is None:
                raise ValueError("clamp_latents needs latent_normalization with a measured bound (not measured yet)")
            return self.latent_normalization.bound
        return self.clip_denoised

    @property
    def token_dim(self) -> int:
        """Channels of one token: `C * p * p` for grids, `D` for token latents."""
        return self.in_channels * self.patch_size**2

    @property
    def token_grid(self) -> tuple[int, int]:
        """(rows, cols) of a generated frame's tokens; token latents are one row of L."""
        if self.layout == "tokens":
            return 1, self.tokens_per_frame
        return self.sample_size[0] // self.patch_size, self.sample_size[1] // self.patch_size

    # presets -----------------------------------------------------------------

    @classmethod
    def tiny(cls, **overrides: Any) -> "NovaConfig":
        """A few-thousand-parameter model for tests: 8x8 frames, 2x2 patches (16 tokens)."""
        base = dict(
            in_channels=3, patch_size=2, sample_size=(8, 8), num_frames=4,
            dim=32, num_heads=2, temporal_depth=2, spatial_encoder_depth=1, spatial_decoder_depth=1,
            scale_shift_rank=8, head_width=32, head_depth=2,
            sampling_diffusion_steps=10, max_text_length=16, text_depth=1,
        )  # fmt: skip
        return cls.from_dict({**base, **overrides})

    @classmethod
    def demo(cls, **overrides: Any) -> "NovaConfig":
        """A CPU-trainable demo: 32x32 frames, 4x4 patches (64 tokens), 8-frame clips."""
        base = dict(
            in_channels=3, patch_size=4, sample_size=(32, 32), num_frames=8,
            dim=128, num_heads=4, temporal_depth=4, spatial_encoder_depth=2, spatial_decoder_depth=2,
            scale_shift_rank=24, head_width=128, head_depth=3,
            sampling_diffusion_steps=50, max_text_length=64, text_depth=2,
        )  # fmt: skip
        return cls.from_dict({**base, **overrides})


NOVA_PRESETS = {"tiny": NovaConfig.tiny, "demo": NovaConfig.demo}
