"""Which models a training job can select: `kind` -> (config class, model class).

A job's `model:` section is a discriminated union on `kind` (DESIGN.md, "Typed
interfaces"): the union is built from `MODEL_KINDS`, so a new model joins every job,
`msc train` and `msc sample` with one line here. A registered model

- is built as `model_class(config)` and keeps `self.config` (msc_core.checkpoint);
- has `training_losses(batch, generator=None) -> {"loss": scalar, ...}` where
  `batch["video"]` is a `(B, C, T, H, W)` clip batch in [-1, 1] (and, for a model
  `with_captions`, `batch["caption"]`, `batch["motion"]` and `batch["fps"]`);
- has `generate(GenerationRequest) -> (B, C, T, H, W)` for samples.

A YAML `model:` section may name a preset of the config class (`preset: demo`) and
override some of its fields; the saved job always holds the full expanded config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Union

from pydantic import Field
from torch import nn

from msc_ar.ardiffusion import ARDiffusion, ARDiffusionConfig
from msc_ar.nova import NOVA, NovaConfig
from msc_core.config import Config


@dataclass(frozen=True)
class ModelKind:
    """A trainable model: its config class, its module class, and the clips it reads."""

    config_class: type[Config]
    model_class: type[nn.Module]
    # (channels, frames, height, width) of the pixel clips the model trains on
    clip_shape: Callable[[Any], tuple[int, int, int, int]]
    # side of the square patch one token covers (for the tokens/s metric)
    patch_size: Callable[[Any], int]
    # batches carry each clip's "caption" (list[str]), "motion" score and "fps" ((B,) floats)
    with_captions: Callable[[Any], bool] = lambda config: False
    # the model is text-conditional: clips without a caption are refused, never trained on
    needs_captions: Callable[[Any], bool] = lambda config: False


def _ardiffusion_clip_shape(config: ARDiffusionConfig) -> tuple[int, int, int, int]:
    data = config.data
    if data.input_layout != "grid":
        raise ValueError(
            "model.data.input_layout='tokens' trains on token latents, but the training service "
            "feeds pixel clips; use input_layout='grid'"
        )
    return data.channels, data.num_frames, data.height, data.width


def _nova_clip_shape(config: NovaConfig) -> tuple[int, int, int, int]:
    if config.layout != "grid":
        raise ValueError(
            "model.layout='tokens' trains on token latents, but the training service feeds pixel clips; "
            "use layout='grid'"
        )
    height, width = config.sample_size
    return config.in_channels, config.num_frames, height, width


MODEL_KINDS: dict[str, ModelKind] = {
    "ardiffusion": ModelKind(
        ARDiffusionConfig, ARDiffusion, _ardiffusion_clip_shape, lambda c: c.transformer.patch_size
    ),
    "nova": ModelKind(
        NovaConfig, NOVA, _nova_clip_shape, lambda c: c.patch_size,
        with_captions=lambda c: True, needs_captions=lambda c: c.text_drop_prob < 1.0,
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
    config_class = model_kind(kind).config_class
    if "preset" not in section:
        return section
    overrides = {k: v for k, v in section.items() if k not in ("preset", "kind")}
    preset = getattr(config_class, "preset", None)
    if preset is None:
        raise ValueError(f"model kind {kind!r} has no presets; give the full config instead of preset:")
    return preset(section["preset"], **overrides).model_dump()


def tokens_per_clip(config: Config) -> int:
    """Tokens the model processes for one training clip: frames x patches per frame."""
    kind = model_kind(config.kind)
    _, frames, height, width = kind.clip_shape(config)
    patch = kind.patch_size(config)
    return frames * (height // patch) * (width // patch)


def build_model(config: Config) -> nn.Module:
    """`model_class(config)` for the registered kind of `config`."""
    return model_kind(config.kind).model_class(config)
