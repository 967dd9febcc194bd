"""AR-Diffusion model (Sun et al., 2025, §3.2-§3.3; ablations of Table 3).

A frame-causal diffusion transformer (`msc_core.transformer.MSCTransformer`, MSC or
dense frame-causal attention) denoises a clip whose frames carry their OWN timesteps:

- training (§3.2-§3.3): a timestep composition `[B, T]` is drawn by the configured
  sampler (FoPP by default; `uniform-nondecreasing`, `independent` and `synchronous`
  for the ablations of Table 3), each frame is noised to its own level with
  `msc_core.diffusion.q_sample`, and the network is trained with an MSE on its target:
  x0 by default (the paper's choice; "-x0 Prediction Loss" is its worst ablation but
  one), eps or v otherwise.
- conditioning: optional class labels (`num_classes`) or caller-supplied text
  embeddings (`text_embed_dim`), one global vector per clip that every frame sees; in
  training it is replaced by a learned null condition with probability `cond_dropout`
  so sampling can use classifier-free guidance (`denoise(..., guidance_scale=g)`).
- causality: patch embedding, norms and MLPs act within a frame and attention only
  looks back, so the prediction at frame t never depends on frames > t (a global
  condition may influence every frame). That is what the AD scheduler and the cache of
  finished frames in `sampling.py` rely on.

Inputs (`config.data`):

- `input_layout="grid"`: grid latents or pixels `[B, C, T, H, W]` (patchified by the
  backbone with `transformer.patch_size`).
- `input_layout="tokens"`: 1D token latents `[B, T, L, D]` (AR-VAE); the L tokens of a
  frame are laid out row-major on `latent_grid = (h, w)` (`h * w = L`; token `l` sits at
  row `l // w`, column `l % w`) and the D channels become the grid channels.

Timestep conventions (`msc_core.diffusion`): 0-based `0..T-1`, `-1` = clean. The
network never saw `t = -1` in training, so a clean frame (a continuation prefix, a
finished frame fed as context) is embedded at `t = 0`, the least noisy level it was
trained on (`CLEAN_TIMESTEP`); its values are fed as they are, unnoised.

The sampler lives in `sampling.py` (diffusers style: the model does not own it);
`ARDiffusion.generate(request)` delegates to it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Literal, Mapping

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msc_core.config import Config
from msc_core.diffusion import (
    BETA_SCHEDULES,
    PredictionType,
    alpha_bar_at,
    convert_prediction,
    make_alphas_cumprod,
    per_frame,
    q_sample,
    standard_normal,
    state_dtype,
)
from msc_core.interfaces import GenerationRequest, LatentSpec
from msc_core.latents import LatentNormalization
from msc_core.transformer import PRESETS as TRANSFORMER_PRESETS
from msc_core.transformer import MSCTransformer, MSCTransformerConfig
from msc_core.validation import (
    check_finite,
    check_tensor,
    check_timesteps,
    check_values,
    check_video,
    model_dtype,
    to_model_dtype,
    trusted_inputs,
)

from msc_ar.ardiffusion import sampling
from msc_ar.ardiffusion.timesteps import TimestepSamplerKind, sample_timesteps

CLEAN_TIMESTEP = 0  # the timestep a clean (t = -1) frame is embedded at


# -----------------------------------------------------------------------------
# configs


class ARDiffusionDataConfig(Config):
    """What the model reads: layout, channels, training clip length and frame size.

    `num_frames` is the training clip length; it is also the default sliding window
    at generation (`request.scheduler.window`). Grid layout: `height`, `width` of the
    latents or pixels. Token layout: `tokens_per_frame` L and `latent_grid` (h, w)
    with h * w = L.
    """

    input_layout: Literal["grid", "tokens"] = "grid"
    channels: int = Field(4, gt=0, description="C of grid inputs, D of token inputs")
    num_frames: int = Field(16, ge=1, description="training clip length = default sliding window")
    height: int | None = Field(None, gt=0, description="grid layout: frame height")
    width: int | None = Field(None, gt=0, description="grid layout: frame width")
    tokens_per_frame: int | None = Field(None, gt=0, description="token layout: L")
    latent_grid: tuple[int, int] | None = Field(None, description="token layout: (h, w), h * w = L")

    @model_validator(mode="after")
    def _check_layout(self) -> "ARDiffusionDataConfig":
        if self.input_layout == "grid":
            if self.height is None or self.width is None:
                raise ValueError("input_layout='grid' needs height and width")
            if self.tokens_per_frame is not None or self.latent_grid is not None:
                raise ValueError("tokens_per_frame / latent_grid only apply to input_layout='tokens'")
        else:
            if self.tokens_per_frame is None or self.latent_grid is None:
                raise ValueError("input_layout='tokens' needs tokens_per_frame (L) and latent_grid (h, w)")
            h, w = self.latent_grid
            if h < 1 or w < 1 or h * w != self.tokens_per_frame:
                raise ValueError(
                    f"latent_grid {self.latent_grid} must multiply to tokens_per_frame={self.tokens_per_frame}"
                )
            if self.height is not None or self.width is not None:
                raise ValueError("height / width only apply to input_layout='grid'; use latent_grid")
        return self

    @property
    def frame_dim(self) -> int:
        """Axis of the frames: 2 for `[B, C, T, H, W]`, 1 for `[B, T, L, D]`."""
        return 2 if self.input_layout == "grid" else 1

    @property
    def grid_size(self) -> tuple[int, int]:
        """(H, W) of the grid the backbone sees."""
        return (self.height, self.width) if self.input_layout == "grid" else self.latent_grid

    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one frame without batch: `(C, H, W)` or `(L, D)`."""
        if self.input_layout == "grid":
            return (self.channels, self.height, self.width)
        return (self.tokens_per_frame, self.channels)

    def describe_shape(self, frames: str = "T") -> str:
        if self.input_layout == "grid":
            return f"[B, {self.channels}, {frames}, {self.height}, {self.width}]"
        return f"[B, {frames}, {self.tokens_per_frame}, {self.channels}]"


class ARDiffusionConfig(Config):
    """AR-Diffusion: data contract, backbone, diffusion and conditioning settings.

    `transformer.in_channels`, `transformer.cond_dim` and `transformer.num_timesteps`
    are derived when left out of a dict/JSON config (from `data.channels`, from the
    conditioning: the transformer width for class labels, `text_embed_dim` for text, and
    from `num_timesteps`); when given they must agree.
    """

    kind: Literal["ardiffusion"] = "ardiffusion"
    data: ARDiffusionDataConfig
    transformer: MSCTransformerConfig
    prediction: PredictionType = "x0"
    timestep_sampler: TimestepSamplerKind = "fopp"
    noise_schedule: str = "linear"
    num_timesteps: int = Field(1000, ge=1)
    num_classes: int | None = Field(None, gt=0, description="class-conditional with this many classes")
    text_embed_dim: int | None = Field(None, gt=0, description="conditioned on caller-supplied text embeddings")
    cond_dropout: float = Field(0.1, ge=0.0, le=1.0, description="null-condition rate in training (for CFG)")
    clip_denoised: bool = Field(False, description="clamp x0 predictions to [-1, 1] when sampling (pixels)")
    # latent models (AR-Diffusion §3.1: the generator models a tokenizer's normalised latents)
    tokenizer_path: str | None = Field(
        None, description="the frozen tokenizer whose latents the model generates (the training service encodes "
        "clips with it, VideoPipeline decodes with it); None: pixels or caller-supplied latents",
    )
    latent_normalization: LatentNormalization | None = Field(
        None, description="per-channel shift/scale of the tokenizer's latents (measured on the training data)"
    )
    clamp_latents: bool = Field(
        False, description="clamp latent x0 predictions to latent_normalization.bound (measured) when sampling"
    )

    @model_validator(mode="before")
    @classmethod
    def _derive_backbone_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("transformer"), dict):
            return data
        transformer = dict(data["transformer"])
        source = data.get("data")
        channels = source.get("channels") if isinstance(source, dict) else getattr(source, "channels", None)
        if "in_channels" not in transformer and channels is not None:
            transformer["in_channels"] = channels
        if "num_timesteps" not in transformer:
            transformer["num_timesteps"] = data.get("num_timesteps", cls.model_fields["num_timesteps"].default)
        if "cond_dim" not in transformer:
            if data.get("text_embed_dim") is not None:
                transformer["cond_dim"] = data["text_embed_dim"]
            elif data.get("num_classes") is not None:
                transformer["cond_dim"] = transformer.get("dim", MSCTransformerConfig.model_fields["dim"].default)
        return {**data, "transformer": transformer}

    @model_validator(mode="after")
    def _check(self) -> "ARDiffusionConfig":
        tf, data = self.transformer, self.data
        if self.noise_schedule not in BETA_SCHEDULES:
            raise ValueError(f"noise_schedule {self.noise_schedule!r} is not one of {BETA_SCHEDULES}")
        if tf.in_channels != data.channels or tf.output_channels != data.channels:
            raise ValueError(
                f"transformer in/out channels ({tf.in_channels}, {tf.output_channels}) must equal "
                f"data.channels={data.channels}"
            )
        for name, size in zip(("height", "width"), data.grid_size):
            if size % tf.patch_size:
                raise ValueError(
                    f"data {name} {size} (grid {data.grid_size}) is not divisible by "
                    f"transformer.patch_size={tf.patch_size}"
                )
        if tf.num_timesteps != self.num_timesteps:
            raise ValueError(
                f"transformer.num_timesteps={tf.num_timesteps} must equal num_timesteps={self.num_timesteps} "
                "(the backbone refuses timesteps outside it); leave it out to derive it"
            )
        if self.num_classes is not None and self.text_embed_dim is not None:
            raise ValueError("choose one condition: num_classes or text_embed_dim, not both")
        if self.text_embed_dim is not None and tf.cond_dim != self.text_embed_dim:
            raise ValueError(
                f"transformer.cond_dim={tf.cond_dim} must equal text_embed_dim={self.text_embed_dim}"
            )
        if self.num_classes is not None and tf.cond_dim is None:
            raise ValueError("num_classes needs transformer.cond_dim (the class-embedding size)")
        if self.clip_denoised and self.tokenizer_path is not None:
            raise ValueError(
                "clip_denoised clamps pixels to [-1, 1]; a latent model (tokenizer_path) must not: use clamp_latents "
                "to clamp to the bound measured from the data"
            )
        # a training job measures the normalisation on its driver before the model is built
        # (tokenizer_path set, latent_normalization not yet): the bound is checked when sampling
        unmeasured = self.latent_normalization is None and self.tokenizer_path is not None
        if self.clamp_latents and not unmeasured and (
            self.latent_normalization is None or self.latent_normalization.bound is None
        ):
            raise ValueError("clamp_latents needs latent_normalization with a measured bound")
        if self.num_classes is None and self.text_embed_dim is None and tf.cond_dim is not None:
            raise ValueError(
                f"transformer.cond_dim={tf.cond_dim} but the model has no condition; set num_classes "
                f"or text_embed_dim, or cond_dim=None"
            )
        return self

    def check_latent_space(self, spec: LatentSpec) -> None:
        """Refuse a tokenizer whose latents this model cannot read, naming both sides: the
        layout, the channels and, for token latents, the tokens per frame and the grid the
        tokens lie on (MSC attention's windows and pooling treat `data.latent_grid` as an
        image, so it must be the tokenizer's `token_grid`; tokens without one need dense
        attention)."""
        data = self.data
        if spec.layout != data.input_layout:
            raise ValueError(f"the tokenizer makes {spec.layout} latents, the model reads input_layout={data.input_layout!r}")
        if spec.channels != data.channels:
            raise ValueError(f"the tokenizer's latents have {spec.channels} channels, the model reads data.channels={data.channels}")
        if spec.layout == "grid":
            return
        if spec.tokens_per_frame != data.tokens_per_frame:
            raise ValueError(
                f"the tokenizer makes {spec.tokens_per_frame} tokens per frame, the model reads "
                f"data.tokens_per_frame={data.tokens_per_frame}"
            )
        if spec.token_grid is None:
            if self.transformer.attention != "dense":
                raise ValueError(
                    "the tokenizer's tokens lie on no spatial grid (token_grid=None: learned queries), but MSC "
                    "attention treats data.latent_grid as an image; use transformer.attention='dense'"
                )
        elif tuple(spec.token_grid) != tuple(data.latent_grid):
            raise ValueError(
                f"model data.latent_grid={tuple(data.latent_grid)} but the tokenizer's tokens lie on a "
                f"{tuple(spec.token_grid)} grid of image regions (LatentSpec.token_grid); use "
                f"latent_grid={list(spec.token_grid)}"
            )

    @property
    def conditioning(self) -> Literal["class", "text"] | None:
        if self.num_classes is not None:
            return "class"
        return "text" if self.text_embed_dim is not None else None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ARDiffusionConfig":
        """A named config (`PRESETS`: `tiny` for tests, `demo` for `msc demo`), some fields changed.

        `overrides` are top-level fields; `data` and `transformer` dicts are merged
        into the preset's (a `data` dict with another `input_layout` replaces it).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown ARDiffusion preset {name!r}; valid: {', '.join(PRESETS)}")
        base = PRESETS[name]
        merged = {**base, **overrides}
        for section in ("data", "transformer"):
            given = overrides.get(section)
            if not isinstance(given, dict):
                continue
            layout = base[section].get("input_layout")
            if section == "data" and given.get("input_layout", layout) != layout:
                continue  # a grid preset's height/width mean nothing for token latents
            merged[section] = {**base[section], **given}
        return cls.from_dict(merged)


def _transformer_preset(name: str, **changes: Any) -> dict[str, Any]:
    preset = {**TRANSFORMER_PRESETS[name], **changes}
    preset.pop("in_channels", None)  # derived from data.channels
    return preset


PRESETS: dict[str, dict[str, Any]] = {
    # tests and benchmarks: 8 frames of 4x8x8 grid latents, 2-layer MSC transformer
    "tiny": dict(
        data=dict(input_layout="grid", channels=4, num_frames=8, height=8, width=8),
        transformer=_transformer_preset("tiny"),
        num_timesteps=1000,
    ),
    # `msc demo`: moving digits, 8-frame clips of 3x32x32 pixels in [-1, 1], patch 4
    # (8x8 tokens per frame); small enough to learn moving blobs of digits in a few
    # CPU minutes, x0 clamped to the pixel range when sampling.
    "demo": dict(
        data=dict(input_layout="grid", channels=3, num_frames=8, height=32, width=32),
        transformer=_transformer_preset("demo", dim=128, depth=4, num_heads=4),
        clip_denoised=True,
    ),
}


# -----------------------------------------------------------------------------
# conditioning


class ConditionEmbedder(nn.Module):
    """Class labels `[B]` or text embeddings `[B, E]` -> one condition vector `[B, cond_dim]`.

    The null condition (for classifier-free guidance) is class `num_classes` of the
    label table, or a learned vector for text.
    """

    def __init__(self, config: ARDiffusionConfig) -> None:
        super().__init__()
        self.kind = config.conditioning
        self.num_classes = config.num_classes
        cond_dim = config.transformer.cond_dim
        if self.kind == "class":
            self.class_table = nn.Embedding(config.num_classes + 1, cond_dim)  # last row: null class
            nn.init.normal_(self.class_table.weight, std=0.02)
        elif self.kind == "text":
            self.null_text = nn.Parameter(torch.zeros(cond_dim))

    def forward(self, condition: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """`drop` `[B]` bool: use the null condition for those samples."""
        if self.kind == "class":
            labels = condition if drop is None else torch.where(drop, self.num_classes, condition)
            return self.class_table(labels)  # (B, cond_dim)
        emb = condition.to(self.null_text.dtype)
        if drop is not None:
            emb = torch.where(drop[:, None], self.null_text.expand_as(emb), emb)
        return emb  # (B, cond_dim)

    def null(self, batch_size: int) -> torch.Tensor:
        if self.kind == "class":
            labels = torch.full((batch_size,), self.num_classes, device=self.class_table.weight.device)
            return self.class_table(labels)
        return self.null_text.expand(batch_size, -1)


def classifier_free_guidance(cond_pred: torch.Tensor, null_pred: torch.Tensor, scale: float) -> torch.Tensor:
    """`null + scale * (cond - null)`: scale 1 is the conditional prediction, 0 the unconditional.

    Written as `cond + (scale - 1) * (cond - null)` so that scale 1 returns `cond` bit-exactly.
    """
    return cond_pred + (scale - 1.0) * (cond_pred - null_pred)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Normal noise drawn on the generator's device (reproducible across devices), moved to x."""
    return standard_normal(tuple(x.shape), generator, x.device, x.dtype)


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device).to(device)


# -----------------------------------------------------------------------------
# model


class ARDiffusion(nn.Module):
    """AR-Diffusion generator: `training_losses(batch)` and `generate(request)`."""

    config_class = ARDiffusionConfig

    def __init__(self, config: ARDiffusionConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = MSCTransformer(config.transformer)
        self.condition_embedder = ConditionEmbedder(config) if config.conditioning else None
        # Derived from the config, so not saved with the weights; a plain float64 CPU
        # tensor, not a buffer, so `model.half()` cannot round the schedule (the
        # diffusion functions move it to the timesteps' device).
        self.alphas_cumprod = make_alphas_cumprod(config.noise_schedule, config.num_timesteps)  # (T,)

    @property
    def frame_dim(self) -> int:
        return self.config.data.frame_dim

    def check_latent_space(self, spec: LatentSpec) -> None:
        """Refuse a tokenizer whose latents this model cannot read (`ARDiffusionConfig.check_latent_space`)."""
        self.config.check_latent_space(spec)

    def new_cache(self) -> list[Any]:
        """Empty per-layer KV cache of the backbone (finished frames during sampling)."""
        return self.backbone.new_cache()

    # -- layouts ----------------------------------------------------------------

    def check_input(
        self, x: torch.Tensor, what: str = "x", pixels: bool = False, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """`x` in the model layout, checked (shape, floating, no zero-sized axis, finite) and
        cast to `dtype` (default: the parameters', `msc_core.validation`); `pixels`: also in [-1, 1]."""
        data = self.config.data
        expected = data.frame_shape()
        check_tensor(what, x, floating=False, allow_empty=True)
        if data.input_layout == "grid":
            ok = x.ndim == 5 and (x.shape[1], x.shape[3], x.shape[4]) == expected
        else:
            ok = x.ndim == 4 and tuple(x.shape[2:]) == expected
        if not ok:
            raise ValueError(
                f"{what} must be a float tensor {data.describe_shape()} ({data.input_layout} layout), "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        if pixels:
            check_video(what, x)
        else:
            check_values(what, x, pixels=self.config.tokenizer_path is None)
        return to_model_dtype(what, x, dtype or model_dtype(self))

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Model layout -> backbone grid `[B, C, T, H, W]` (token latents on `latent_grid`)."""
        if self.config.data.input_layout == "grid":
            return x
        B, T, L, D = x.shape
        h, w = self.config.data.latent_grid
        return x.permute(0, 3, 1, 2).reshape(B, D, T, h, w)  # (B, D, T, h, w)

    def from_grid(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.data.input_layout == "grid":
            return x
        B, D, T, h, w = x.shape
        return x.reshape(B, D, T, h * w).permute(0, 2, 3, 1)  # (B, T, L, D)

    # -- conditioning -------------------------------------------------------------

    def embed_condition(
        self,
        labels: torch.Tensor | None = None,
        text_embedding: torch.Tensor | None = None,
        batch_size: int | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Condition vectors `[B, cond_dim]` (None for an unconditional model).

        A conditional model given no label / embedding gets the null condition, so it
        samples unconditionally. `drop` `[B]` bool replaces some conditions by the null.
        """
        kind = self.config.conditioning
        if kind is None:
            if labels is not None or text_embedding is not None:
                raise ValueError("this model is unconditional (num_classes and text_embed_dim are None)")
            return None
        given = labels if kind == "class" else text_embedding
        other = text_embedding if kind == "class" else labels
        if given is not None:
            check_tensor("labels" if kind == "class" else "text_embedding", given, floating=kind == "text")
        if other is not None:
            wrong = "text embeddings" if kind == "class" else "class labels"
            raise ValueError(f"this model is {kind}-conditional; it cannot take {wrong}")
        if given is None:
            if batch_size is None:
                raise ValueError("embed_condition needs batch_size when no condition is given")
            return self.condition_embedder.null(batch_size)
        if kind == "class":
            if given.ndim != 1 or given.dtype.is_floating_point or given.dtype == torch.bool:
                raise ValueError(f"labels must be an integer tensor [B], got {given.dtype} {tuple(given.shape)}")
            if given.numel() and (int(given.min()) < 0 or int(given.max()) >= self.config.num_classes):
                raise ValueError(
                    f"labels must lie in 0..{self.config.num_classes - 1}, got {given.min().item()}..{given.max().item()}"
                )
        elif given.ndim != 2 or given.shape[1] != self.config.text_embed_dim:
            raise ValueError(
                f"text_embedding must be [B, text_embed_dim={self.config.text_embed_dim}], got {tuple(given.shape)}"
            )
        else:
            check_finite("text_embedding", given)
        if batch_size is not None and given.shape[0] != batch_size:
            raise ValueError(f"condition has batch {given.shape[0]}, expected {batch_size}")
        return self.condition_embedder(given, drop)

    def null_condition(self, batch_size: int) -> torch.Tensor:
        if self.condition_embedder is None:
            raise ValueError("classifier-free guidance needs a conditional model (num_classes or text_embed_dim)")
        return self.condition_embedder.null(batch_size)

    # -- network ------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cache: list[Any] | None = None,
        update_cache: bool = False,
        frame_offset: int | None = None,
    ) -> torch.Tensor:
        """Raw network output (in `config.prediction` terms) for noisy `x` at per-frame `t` `[B, T]`,
        in the diffusion state dtype (float32; float64 for a float64 model) whatever the
        parameters' dtype or autocast.

        `x` in the model layout (floating; another float dtype is cast to the parameters');
        `t` integers in `-1..T-1` (`-1` = clean, embedded at `CLEAN_TIMESTEP`); `cond` from
        `embed_condition`. `cache` / `update_cache` / `frame_offset`: see
        `MSCTransformer.forward` (the sampler passes window-relative frame indices).
        """
        x = self.check_input(x)
        check_tensor("t", t, floating=False, allow_empty=True)
        if t.ndim != 2 or t.shape != (x.shape[0], x.shape[self.frame_dim]):
            raise ValueError(
                f"t must be per-frame timesteps [B, T]=({x.shape[0]}, {x.shape[self.frame_dim]}), got {tuple(t.shape)}"
            )
        check_timesteps("t", t, self.config.num_timesteps, allow_clean=True)
        if cond is not None:
            check_values("cond", cond)
        t_model = t.clamp(min=CLEAN_TIMESTEP)
        with trusted_inputs():  # checked above; the backbone and its layers skip the value checks
            out = self.backbone(
                self.to_grid(x), t_model, cond, cache=cache, update_cache=update_cache, frame_offset=frame_offset
            )
        return self.from_grid(out).to(state_dtype(model_dtype(self)))

    def predict_x0(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        cache: list[Any] | None = None,
        update_cache: bool = False,
        frame_offset: int | None = None,
    ) -> torch.Tensor:
        """x0 prediction for `x` at `t`, with classifier-free guidance when `guidance_scale != 1`.

        Guidance runs the conditional and null branches as one doubled batch
        `[cond; null]`, so a `cache` used with guidance holds `2B` samples. The raw
        predictions are mixed in the model's own parameterisation (the conversion to
        x0 is affine in the prediction, so the mix is the same in any of them).
        """
        guided = cond is not None and guidance_scale != 1.0
        if guided:
            B = x.shape[0]
            both = torch.cat([cond, self.null_condition(B).to(cond.dtype)])  # (2B, cond_dim)
            raw = self(torch.cat([x, x]), torch.cat([t, t]), both, cache, update_cache, frame_offset)
            raw = classifier_free_guidance(raw[:B], raw[B:], guidance_scale)
        else:
            raw = self(x, t, cond, cache, update_cache, frame_offset)
        x0 = convert_prediction(raw, self.config.prediction, "x0", x, t, self.alphas_cumprod, self.frame_dim)
        if self.config.clip_denoised:
            return x0.clamp(-1, 1)
        if self.config.clamp_latents:
            normalization = self.config.latent_normalization
            if normalization is None or normalization.bound is None:
                raise ValueError("clamp_latents needs latent_normalization with a measured bound (not measured yet)")
            bound = normalization.bound
            return x0.clamp(-bound, bound)
        return x0

    # -- training -----------------------------------------------------------------

    def training_losses(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Named losses of one batch; `"loss"` is the scalar to optimise.

        `batch`: `"video"` or `"latents"` (clean inputs in the model layout, floating; a
        `"video"` holds pixels in [-1, 1], latents have no range), optional `"label"` `[B]`
        or `"text_embedding"` `[B, E]`. Terms:
        `loss` (MSE on the `config.prediction` target), `<prediction>_mse` (the same,
        detached) and, for eps / v models, `x0_mse` (the MSE of the implied x0, detached).
        In training mode the condition is dropped to the null with probability
        `cond_dropout`. With `generator`, timesteps, noise and dropout are reproducible.
        """
        x0 = self._clean_input(batch)
        B, T = x0.shape[0], x0.shape[self.frame_dim]
        cfg = self.config
        t = sample_timesteps(cfg.timestep_sampler, B, T, cfg.num_timesteps, generator=generator, device=x0.device)
        noise = _randn_like(x0, generator)
        x_t = q_sample(x0, t, noise, self.alphas_cumprod, self.frame_dim)

        drop = None
        if cfg.conditioning is not None and self.training and cfg.cond_dropout > 0:
            drop = _rand(B, generator, x0.device) < cfg.cond_dropout
        cond = self.embed_condition(batch.get("label"), batch.get("text_embedding"), batch_size=B, drop=drop)

        with trusted_inputs():  # x_t and t are made here from the checked batch
            pred = self(x_t, t, cond)
        target = self.prediction_target(x0, noise, t)
        loss = F.mse_loss(pred.float(), target.float())
        losses = {"loss": loss, f"{cfg.prediction}_mse": loss.detach()}
        if cfg.prediction != "x0":
            x0_pred = convert_prediction(pred.detach(), cfg.prediction, "x0", x_t, t, self.alphas_cumprod, self.frame_dim)
            losses["x0_mse"] = F.mse_loss(x0_pred.float(), x0.float())
        return losses

    def prediction_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output: x0, eps, or v = sqrt(ab) eps - sqrt(1-ab) x0."""
        if self.config.prediction == "x0":
            return x0
        if self.config.prediction == "eps":
            return noise
        # v straight from (x0, eps): going through x_t would divide by sqrt(ab) ~ 6e-3 at t = T-1
        ab = per_frame(alpha_bar_at(t, self.alphas_cumprod), x0, self.frame_dim)
        return ab.sqrt().to(x0.dtype) * noise - (1 - ab).sqrt().to(x0.dtype) * x0

    def _clean_input(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        keys = [k for k in ("video", "latents") if k in batch]
        if len(keys) != 1:
            raise ValueError(
                f"batch must hold exactly one of 'video' or 'latents', got keys {sorted(batch.keys())}"
            )
        # the clean input is diffusion state: float32 even for bf16 parameters (precision contract)
        return self.check_input(batch[keys[0]], what=f"batch[{keys[0]!r}]", pixels=keys[0] == "video",
                                dtype=state_dtype(model_dtype(self)))

    # -- generation -----------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        text_embedding: torch.Tensor | None = None,
        use_cache: bool = True,
        on_step: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Sample a video with the AD scheduler and DDIM: see `sampling.generate`."""
        return sampling.generate(self, request, text_embedding=text_embedding, use_cache=use_cache, on_step=on_step)

    def generate_frames(
        self,
        request: GenerationRequest,
        text_embedding: torch.Tensor | None = None,
        use_cache: bool = True,
        on_iteration: Callable[[int, int, int], None] | None = None,
    ) -> Iterator[torch.Tensor]:
        """The frames of `generate(request)` one at a time, each as soon as it is final (AD
        order), in the model layout without the frame axis: see `sampling.iter_frames`."""
        return sampling.iter_frames(self, request, text_embedding=text_embedding, use_cache=use_cache,
                                    on_iteration=on_iteration)
