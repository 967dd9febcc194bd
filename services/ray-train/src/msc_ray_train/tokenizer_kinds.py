"""Training-service hooks of the clip-to-clip models: the tokenizers and the cascade.

`model_kinds.MODEL_KINDS` registers `vae3d` (msc_tokenizers.CausalVAE3D), `arvae`
(msc_tokenizers.ARVAE) and `cascade` (msc_cascade.CascadeModel) with these functions.
Unlike a generator, these models

- take clips whose size their config does not fix (a CausalVAE3D encodes any
  `1 + 4k` frames of any size divisible by 8): `check_clip` states the rule and the job
  names the `data.*` field that breaks it;
- count latent tokens for tokens/s: latent positions of the clip (VAE: `T' x H/8 x W/8`,
  AR-VAE: `T x L`, cascade: the DiT's tokens of the target latent);
- do not generate from noise: their training sample is their version of a training clip
  (`reproduce_clip`: a tokenizer's reconstruction, the cascade's refinement of the clip's
  base latent), shown beside the clip.

The cascade works in the latent space of a frozen CausalVAE3D it loads from
`model.vae_path` (a vae3d run directory, its exported `model/`, or any `save_pretrained`
directory). The VAE is never trained by the cascade job: CascadeModel keeps it out of
`parameters()` and `state_dict()`, so the optimizer, the EMA and the checkpoints hold the
DiT only (tested).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msc_cascade.cascade_decoder import CascadeDecoder, CascadeDecodeSettings
from msc_cascade.cascade_model import CascadeConfig, CascadeModel
from msc_core.checkpoint import CONFIG_NAME
from msc_tokenizers import ARVAEConfig, CausalVAE3DConfig

from msc_ray_train.train_checkpoint import EXPORT_DIR

Clip = tuple[int, int, int, int]  # (channels, frames, height, width)


def _nearest(value: int, start: int, step: int) -> str:
    """The valid values `start + step * j` on either side of `value`, as "a or b"."""
    below = start + step * max(0, (value - start) // step)
    return f"{below} or {below + step}" if below < value else f"{below}"


def _frame_rule(frames: int, step: int, what: str) -> list[tuple[str, str]]:
    if frames >= 1 and (frames - 1) % step == 0:
        return []
    return [("frames", f"{what} needs 1 + {step}k frames; nearest valid: {_nearest(frames, 1, step)}")]


def _size_rule(height: int, width: int, multiple: int, what: str) -> list[tuple[str, str]]:
    if height % multiple == 0 and width % multiple == 0:
        return []
    side = height if height % multiple else width
    below = side // multiple * multiple
    nearest = f"{below} or {below + multiple}" if below else f"{multiple}"
    return [("size", f"{what} needs frame sides divisible by {multiple}; nearest valid: {nearest}")]


# --------------------------------------------------------------------------- vae3d


def vae3d_clip_shape(config: CausalVAE3DConfig) -> tuple[int, None, None, None]:
    return config.in_channels, None, None, None


def vae3d_check_clip(config: CausalVAE3DConfig, clip: Clip) -> list[tuple[str, str]]:
    _, frames, height, width = clip
    what = f"the vae3d model (temporal_compression={config.temporal_compression})"
    return _frame_rule(frames, config.temporal_compression, what) + _size_rule(
        height, width, config.spatial_compression, f"the vae3d model (spatial_compression={config.spatial_compression})"
    )


def vae3d_clip_tokens(config: CausalVAE3DConfig, clip: Clip) -> int:
    """Latent positions: `(1 + (T - 1) / tc) x H/s x W/s`."""
    _, frames, height, width = clip
    s = config.spatial_compression
    return (1 + (frames - 1) // config.temporal_compression) * (height // s) * (width // s)


def reconstruct_clip(model: nn.Module, clip: torch.Tensor, seed: int, steps: int) -> torch.Tensor:
    """A tokenizer's reconstruction of `clip` from its posterior mean (deterministic)."""
    with torch.no_grad():
        return model.decode(model.encode(clip))


# --------------------------------------------------------------------------- arvae


def arvae_clip_shape(config: ARVAEConfig) -> tuple[int, None, int, int]:
    height, width = config.frame_size
    return config.in_channels, None, height, width


def arvae_clip_tokens(config: ARVAEConfig, clip: Clip) -> int:
    """Latent tokens: `T x L` (L = num_latent_tokens per frame)."""
    return clip[1] * config.num_latent_tokens


# --------------------------------------------------------------------------- cascade


def resolve_model_path(path: str) -> str:
    """A model path of a job (`model.vae_path`, `model.tokenizer_path`) as an absolute path
    (workers run elsewhere); a run directory stands for its exported EMA model `<run>/model/`."""
    resolved = Path(os.path.abspath(Path(path).expanduser()))
    if not (resolved / CONFIG_NAME).is_file() and (resolved / EXPORT_DIR / CONFIG_NAME).is_file():
        resolved = resolved / EXPORT_DIR
    return str(resolved)


def cascade_prepare_section(section: dict[str, Any]) -> dict[str, Any]:
    if isinstance(section.get("vae_path"), str):
        section = {**section, "vae_path": resolve_model_path(section["vae_path"])}
    return section


def cascade_vae_config(config: CascadeConfig) -> CausalVAE3DConfig | None:
    """The config of the cascade's VAE, None while `vae_path` does not exist."""
    path = Path(config.vae_path) / CONFIG_NAME
    if not path.is_file():
        return None
    return CausalVAE3DConfig.load(path)


def cascade_model_files(config: CascadeConfig) -> dict[str, str]:
    return {"model.vae_path": config.vae_path}


def cascade_clip_shape(config: CascadeConfig) -> tuple[int | None, int, int, int]:
    vae = cascade_vae_config(config)
    return (vae.in_channels if vae else None), config.num_frames, config.height, config.width


def cascade_check_clip(config: CascadeConfig, clip: Clip) -> list[tuple[str, str]]:
    vae = cascade_vae_config(config)
    if vae is None:
        return []  # `msc train` refuses the missing VAE (model_files) before Ray starts
    # CascadeConfig.clip_rules reads the latent spec's temporal/spatial compression, which the
    # VAE config states under the same names
    step, multiple = config.clip_rules(vae)
    what = f"the cascade ({config.mode} mode, factor {config.factor}) with this VAE"
    return _frame_rule(clip[1], step, what) + _size_rule(clip[2], clip[3], multiple, what)


def cascade_clip_tokens(config: CascadeConfig, clip: Clip) -> int:
    """The DiT's tokens of the target latent: `T' x (H/s/p) x (W/s/p)`."""
    vae = cascade_vae_config(config)
    if vae is None:
        raise FileNotFoundError(f"model.vae_path: {config.vae_path} does not exist")
    _, frames, height, width = clip
    side = vae.spatial_compression * config.dit.patch_size
    return (1 + (frames - 1) // vae.temporal_compression) * (height // side) * (width // side)


def refine_clip(model: CascadeModel, clip: torch.Tensor, seed: int, steps: int) -> torch.Tensor:
    """The cascade's refinement of `clip`'s base (4x downsized in sr mode, every 4th frame in
    fps mode) back to the clip's size, with `steps` DDIM steps seeded by `seed`."""
    steps = min(steps, model.config.num_timesteps)
    return CascadeDecoder(model, CascadeDecodeSettings(steps=steps)).upscale(model.base_video(clip), seed=seed)

