"""Latent normalisation: per-channel shift and scale measured on the training data.

Generators model unit-variance latents: a tokenizer's latent `z` is fed as
`(z - shift) / scale` per channel, and generated latents are mapped back with
`z = z_n * scale + shift` before the tokenizer decodes them (diffusers' `shift_factor`
/ `scaling_factor`, here per channel). The statistics are measured where the training
latents are first computed (`msc data encode` over the clips it encodes, or a latent
training job over its first clips) and stored with the tokenizer and the cache
(`latent_normalization.json` beside the tokenizer of a pipeline, the manifest of a
latent cache).

`bound`: the largest |normalised latent| seen while measuring. A generator clamps its
x0 estimates of latents only to a bound measured from data, never to pixel [-1, 1].
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from msc_core.checkpoint import atomic_write_text
from msc_core.config import Config

LATENT_NORMALIZATION_NAME = "latent_normalization.json"
Layout = Literal["grid", "tokens"]


def channel_dim(layout: Layout) -> int:
    """Axis of the channels: 1 for grid `[B, C, T, H, W]`, -1 for tokens `[B, T, L, D]`."""
    return 1 if layout == "grid" else -1


class LatentNormalization(Config):
    """Per-channel `shift` and `scale` of a latent space, measured on `clips` clips."""

    layout: Layout
    shift: tuple[float, ...]
    scale: tuple[float, ...]
    bound: float | None = Field(default=None, gt=0, description="max |normalised latent| measured")
    clips: int = Field(default=0, ge=0, description="clips the statistics were measured on")

    @model_validator(mode="after")
    def _check(self) -> "LatentNormalization":
        if len(self.shift) != len(self.scale) or not self.shift:
            raise ValueError(f"shift and scale need one value per channel, got {len(self.shift)} and {len(self.scale)}")
        if not all(math.isfinite(v) for v in self.shift):
            raise ValueError(f"shift must be finite, got {self.shift}")
        if not all(math.isfinite(v) and v > 0 for v in self.scale):
            raise ValueError(f"scale must be finite and > 0, got {self.scale}")
        return self

    @property
    def channels(self) -> int:
        return len(self.shift)

    def _view(self, values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
        dim = channel_dim(self.layout)
        if like.shape[dim] != self.channels:
            raise ValueError(
                f"latents have {like.shape[dim]} channels on axis {dim} ({self.layout} layout), the normalisation "
                f"has {self.channels}"
            )
        shape = [1] * like.ndim
        shape[dim] = self.channels
        return torch.tensor(values, dtype=torch.float32, device=like.device).view(shape)

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        """`(z - shift) / scale` per channel, computed in float32, returned in the input dtype."""
        out = (latents.float() - self._view(self.shift, latents)) / self._view(self.scale, latents)
        return out.to(latents.dtype)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """`z_n * scale + shift` per channel: back to the tokenizer's latents."""
        out = latents.float() * self._view(self.scale, latents) + self._view(self.shift, latents)
        return out.to(latents.dtype)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / LATENT_NORMALIZATION_NAME
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def read(cls, directory: str | Path) -> "LatentNormalization | None":
        """The normalisation stored in `directory`, None when it holds none."""
        path = Path(directory) / LATENT_NORMALIZATION_NAME
        return cls.load(path) if path.is_file() else None


class LatentStatistics:
    """Exact per-channel mean and standard deviation of latents seen in batches (float64
    sums), and the normalisation they give."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.count = 0
        self.sum: torch.Tensor | None = None
        self.sum_sq: torch.Tensor | None = None
        self.abs_max: torch.Tensor | None = None  # per channel, for the bound
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None
        self.clips = 0

    def update(self, latents: torch.Tensor) -> None:
        """Add a batch of latents (`[B, C, T, H, W]` or `[B, T, L, D]`)."""
        dim = channel_dim(self.layout) % latents.ndim
        flat = latents.detach().to(torch.float64).movedim(dim, 0).reshape(latents.shape[dim], -1)  # (C, N)
        if self.sum is None:
            self.sum, self.sum_sq = flat.sum(1), (flat * flat).sum(1)
            self.min, self.max = flat.min(1).values, flat.max(1).values
        else:
            if flat.shape[0] != self.sum.shape[0]:
                raise ValueError(f"latents have {flat.shape[0]} channels, earlier batches had {self.sum.shape[0]}")
            self.sum += flat.sum(1)
            self.sum_sq += (flat * flat).sum(1)
            self.min = torch.minimum(self.min, flat.min(1).values)
            self.max = torch.maximum(self.max, flat.max(1).values)
        self.count += flat.shape[1]
        self.clips += latents.shape[0]

    def normalization(self) -> LatentNormalization:
        """The per-channel mean as shift and standard deviation as scale (a channel with no
        spread gets scale 1), and the largest |normalised latent| seen as bound."""
        if self.sum is None or self.count == 0:
            raise ValueError("no latents were measured: the statistics need at least one clip")
        mean = self.sum / self.count
        var = (self.sum_sq / self.count - mean * mean).clamp(min=0)
        std = var.sqrt()
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        bound = torch.maximum((self.max - mean).abs(), (self.min - mean).abs()) / std
        return LatentNormalization(
            layout=self.layout, shift=tuple(mean.tolist()), scale=tuple(std.tolist()),
            bound=float(bound.max()), clips=self.clips,
        )


def describe(normalization: LatentNormalization) -> str:
    """One line for logs: channels, mean |shift|, scale range, bound."""
    return json.dumps({
        "channels": normalization.channels, "clips": normalization.clips,
        "scale_min": round(min(normalization.scale), 4), "scale_max": round(max(normalization.scale), 4),
        "bound": normalization.bound,
    })
