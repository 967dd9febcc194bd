"""AdamW with linear warm-up and cosine decay, as DiT / nanoGPT train.

Weight decay applies to matrices (linear and embedding weights) only, never to biases,
norm gains or other vectors (nanoGPT's `configure_optimizers`). The learning rate is a
pure function of the step, so a resumed run follows exactly the same schedule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from msc_ray_train.job import OptimConfig


def learning_rate_factor(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Multiplier of `optim.lr` for the optimizer step `step` (0-based).

    Warm-up: `(step + 1) / warmup_steps` for the first `warmup_steps` steps; then 1
    (`constant`) or a cosine from 1 at the end of warm-up to `min_lr_ratio` at
    `total_steps`, held there after.
    """
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / decay_steps)
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with two groups: decayed matrices, undecayed vectors and scalars."""
    params = [p for p in model.parameters() if p.requires_grad]
    decayed = [p for p in params if p.ndim >= 2]
    undecayed = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decayed, "weight_decay": optim.weight_decay},
        {"params": undecayed, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, optim, total_steps))
