"""Which models a training job can select: `kind` -> (config class, model class).

A job's `model:` section is a discriminated union on `kind` (DESIGN.md, "Typed
interfaces"): the union is built from `MODEL_KINDS`, so a new model joins every job,
`msc train` and `msc sample` with one line here. A registered model

- is built as `model_class(config)` and keeps `self.config` (msc_core.checkpoint);
- has `training_losses(batch, generator=None) -> {"loss": scalar, ...}` where
  `batch["video"]` is a `(B, C, T, H, W)` clip batch in [-1, 1] (and, for a
  class-conditional model, `batch["label"]` the `(B,)` class of each clip; for a
  model `with_captions`, `batch["caption"]`, `batch["motion"]` and `batch["fps"]`);
- has `generate(GenerationRequest) -> (B, C, T, H, W)` for samples.

A YAML `model:` section may name a preset of the config class (`preset: demo`) and
override some of its fields; the saved job always holds the full expanded config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Union

import torch
from pydantic import Field
from torch import nn

from msc_ar.ardiffusion import ARDiffusion, ARDiffusionConfig
from msc_ar.nova import NOVA, NovaConfig
from msc_cascade.cascade_model import CascadeConfig, CascadeModel
from msc_core.config import Config
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D, CausalVAE3DConfig

from msc_ray_train import latent_kinds, tokenizer_kinds


@dataclass(frozen=True)
class ModelKind:
    """A trainable model: its config class, its module class, and the clips it reads."""

    config_class: type[Config]
    model_class: type[nn.Module]
    # (channels, frames, height, width) of the pixel clips the model trains on
    clip_shape: Callable[[Any], tuple[int, int, int, int]]
    # side of the square patch one token covers (for the tokens/s metric)
    patch_size: Callable[[Any], int]
    # number of classes of a class-conditional config (batches then carry "label"), else None;
    # raises ValueError for a condition the service cannot feed (text embeddings)
    num_classes: Callable[[Any], int | None]
    # batches carry each clip's "caption" (list[str]), "motion" score and "fps" ((B,) floats)
    with_captions: Callable[[Any], bool] = lambda config: False
    # the model is text-conditional: clips without a caption are refused, never trained on
    needs_captions: Callable[[Any], bool] = lambda config: False
    # --- models whose clip size is not fixed by their config, and clip-to-clip models
    # (tokenizers, the cascade); see "Tokenizers and the cascade" in the README ---
    # problems with training clips `(channels, frames, height, width)`: `(dimension, reason)`
    # pairs, dimension one of "channels", "frames", "size"; `clip_shape` entries that are None
    # (a size-agnostic model) are decided here alone
    check_clip: Callable[[Any, tuple[int, int, int, int]], list[tuple[str, str]]] | None = None
    # tokens of one clip `(channels, frames, height, width)` for tokens/s; None: frames x patches
    clip_tokens: Callable[[Any, tuple[int, int, int, int]], int] | None = None
    # rewrites a `model:` section before validation (e.g. makes file paths absolute)
    prepare_section: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # files the model reads when built, as {"model.<field>": path}; `msc train` refuses
    # a job whose files are missing before Ray starts
    model_files: Callable[[Any], dict[str, str]] | None = None
    # a clip-to-clip model's output for `clip` (B, C, T, H, W): (model, clip, seed, steps) ->
    # (B, C, T, H, W); training samples and `msc sample` show it beside the clip. None: the
    # model generates from noise (`generate`)
    reproduce_clip: Callable[[nn.Module, torch.Tensor, int, int], torch.Tensor] | None = None
    # some parameters may get no gradient in a step (NOVA's null caption when text_drop_prob=0):
    # DDP then needs find_unused_parameters=True (without it, the second step fails)
    find_unused_parameters: Callable[[Any], bool] = lambda config: False
    # the most denoising steps (`sample_steps`) a training sample can take, None: any
    max_sample_steps: Callable[[Any], int | None] = lambda config: None


def _ardiffusion_num_classes(config: ARDiffusionConfig) -> int | None:
    if config.conditioning == "text":
        raise ValueError(
            "model.text_embed_dim: text-conditional models need caller-supplied text embeddings, which the "
            "training service does not produce; train unconditional or class-conditional (num_classes) models"
        )
    return config.num_classes


def _ardiffusion_clip_shape(config: ARDiffusionConfig) -> tuple[int, int, int, int]:
    if latent_kinds.is_latent_model(config):
        return latent_kinds.pixel_clip_shape(config)
    data = config.data
    if data.input_layout != "grid":
        raise ValueError(
            "model.data.input_layout='tokens' models a tokenizer's token latents: set model.tokenizer_path to "
            "the AR-VAE whose latents it generates (or use input_layout='grid' on pixels)"
        )
    return data.channels, data.num_frames, data.height, data.width


def _nova_clip_shape(config: NovaConfig) -> tuple[int, int, int, int]:
    if latent_kinds.is_latent_model(config):
        return latent_kinds.pixel_clip_shape(config)
    if config.layout != "grid":
        raise ValueError(
            "model.layout='tokens' models a tokenizer's token latents: set model.tokenizer_path to the AR-VAE "
            "whose latents it generates (or use layout='grid' on pixels)"
        )
    height, width = config.sample_size
    return config.in_channels, config.num_frames, height, width


def _generator_clip_tokens(patch_size: Callable[[Any], int]) -> Callable[[Any, tuple[int, int, int, int]], int]:
    """Tokens/s of a generator: latent tokens for a latent model, pixel patches otherwise."""

    def clip_tokens(config: Any, clip: tuple[int, int, int, int]) -> int:
        if latent_kinds.is_latent_model(config):
            return latent_kinds.latent_clip_tokens(config, patch_size(config))
        _, frames, height, width = clip
        return frames * (height // patch_size(config)) * (width // patch_size(config))

    return clip_tokens


MODEL_KINDS: dict[str, ModelKind] = {
    "ardiffusion": ModelKind(
        ARDiffusionConfig, ARDiffusion, _ardiffusion_clip_shape, lambda c: c.transformer.patch_size,
        _ardiffusion_num_classes,
        clip_tokens=_generator_clip_tokens(lambda c: c.transformer.patch_size),
        prepare_section=latent_kinds.prepare_section, model_files=latent_kinds.model_files,
    ),
    "nova": ModelKind(
        NovaConfig, NOVA, _nova_clip_shape, lambda c: c.patch_size, lambda c: None,
        clip_tokens=_generator_clip_tokens(lambda c: c.patch_size),
        prepare_section=latent_kinds.prepare_section, model_files=latent_kinds.model_files,
        with_captions=lambda c: True, needs_captions=lambda c: c.text_drop_prob < 1.0,
        find_unused_parameters=lambda c: c.text_drop_prob == 0.0,  # the null caption is never used
        max_sample_steps=lambda c: c.token_grid[0] * c.token_grid[1],  # each set-by-set step reveals a token
    ),
    # clip-to-clip models (tokenizer_kinds): patch_size is the pixels one latent position spans
    "vae3d": ModelKind(
        CausalVAE3DConfig, CausalVAE3D, tokenizer_kinds.vae3d_clip_shape, lambda c: c.spatial_compression,
        lambda c: None, check_clip=tokenizer_kinds.vae3d_check_clip, clip_tokens=tokenizer_kinds.vae3d_clip_tokens,
        reproduce_clip=tokenizer_kinds.reconstruct_clip,
    ),
    "arvae": ModelKind(
        ARVAEConfig, ARVAE, tokenizer_kinds.arvae_clip_shape, lambda c: c.patch_size, lambda c: None,
        clip_tokens=tokenizer_kinds.arvae_clip_tokens, reproduce_clip=tokenizer_kinds.reconstruct_clip,
    ),
    "cascade": ModelKind(
        CascadeConfig, CascadeModel, tokenizer_kinds.cascade_clip_shape, lambda c: c.dit.patch_size, lambda c: None,
        check_clip=tokenizer_kinds.cascade_check_clip, clip_tokens=tokenizer_kinds.cascade_clip_tokens,
        prepare_section=tokenizer_kinds.cascade_prepare_section, model_files=tokenizer_kinds.cascade_model_files,
        reproduce_clip=tokenizer_kinds.refine_clip,
    ),
}

# The `model:` field of a TrainJob: one config class per registered kind, chosen by `kind`.
if len(MODEL_KINDS) == 1:
    ModelConfig = next(iter(MODEL_KINDS.values())).config_class
else:  # pragma: no cover - exercised once a second kind is registered
    ModelConfig = Annotated[
        Union[tuple(k.config_class for k in MODEL_KINDS.values())], Field(discriminator="kind")
    ]


def model_kind(kind: str) -> ModelKind:
    try:
        return MODEL_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; valid kinds: {', '.join(sorted(MODEL_KINDS))}") from None


def expand_model_section(section: Any) -> Any:
    """Check `kind` and expand `preset: NAME` (+ overrides) into a full config dict."""
    if not isinstance(section, dict):
        return section
    kind = section.get("kind")
    if kind is None:
        raise ValueError(f"model.kind is missing; valid kinds: {', '.join(sorted(MODEL_KINDS))}")
    registered = model_kind(kind)
    if registered.prepare_section is not None:
        section = registered.prepare_section(section)
    if "preset" not in section:
        return section
    overrides = {k: v for k, v in section.items() if k not in ("preset", "kind")}
    preset = getattr(registered.config_class, "preset", None)
    if preset is None:
        raise ValueError(f"model kind {kind!r} has no presets; give the full config instead of preset:")
    return preset(section["preset"], **overrides).model_dump()


def tokens_per_clip(config: Config, clip: tuple[int, int, int, int] | None = None) -> int:
    """Tokens the model processes for one training clip `(channels, frames, height, width)`
    (default: the clip its config fixes): frames x patches per frame, or the kind's
    `clip_tokens` (latent tokens for the tokenizers and the cascade)."""
    kind = model_kind(config.kind)
    _, frames, height, width = clip if clip is not None else kind.clip_shape(config)
    if kind.clip_tokens is not None:
        return kind.clip_tokens(config, (_, frames, height, width))
    patch = kind.patch_size(config)
    return frames * (height // patch) * (width // patch)


def missing_model_files(config: Config) -> list[str]:
    """`"model.<field>: <path>"` for each file the model reads when built that does not exist."""
    kind = model_kind(config.kind)
    files = kind.model_files(config) if kind.model_files is not None else {}
    return [f"{name}: {path}" for name, path in files.items() if not Path(path).exists()]


def build_model(config: Config) -> nn.Module:
    """`model_class(config)` for the registered kind of `config`."""
    return model_kind(config.kind).model_class(config)
