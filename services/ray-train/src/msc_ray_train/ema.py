"""Exponential moving average of model weights: a frozen copy, as DiT keeps it.

`ema = decay * ema + (1 - decay) * weights` after every applied optimizer step; with
`warmup` the decay starts low and grows as `min(decay, (1 + n) / (10 + n))` after n
updates, so a short run's EMA is not dominated by its random initialisation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from msc_ray_train.job import EMAConfig


def ema_decay(config: EMAConfig, num_updates: int) -> float:
    """The decay used for update number `num_updates` (0-based)."""
    if not config.warmup:
        return config.decay
    return min(config.decay, (1.0 + num_updates) / (10.0 + num_updates))


class ExponentialMovingAverage:
    """Holds `self.model`, a frozen copy of the model whose weights are the running average."""

    def __init__(self, model: nn.Module, config: EMAConfig) -> None:
        self.config = config
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> None:
        """Move the average toward `model`'s weights; buffers are copied as they are."""
        decay = ema_decay(self.config, num_updates)
        for averaged, current in zip(self.model.parameters(), model.parameters(), strict=True):
            averaged.lerp_(current.detach(), 1.0 - decay)
        for averaged, current in zip(self.model.buffers(), model.buffers(), strict=True):
            averaged.copy_(current)
