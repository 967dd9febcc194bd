"""Cascade sampling maths in numpy (ports of msc_core.diffusion / msc_cascade.cascade_sampling).

- `ddim_timestep_grid`: `msc_core.diffusion.ddim_timestep_grid` exactly ("trailing" spacing:
  `grid[0] = T - 1`, `grid[S] = -1` clean; rounding half to even, as torch.round).
- `initial_noise`: the contract's cascade decode noise, `np.random.default_rng(seed)
  .standard_normal(shape, dtype=np.float32)`, the same in the PyTorch decoder, so ONNX
  Runtime without torch reproduces a torch decode of the same seed.
- `target_latent_size`: where a base latent lands in each cascade mode.
- `ddim_refine`: the DDIM chain from noise at `grid[0]` to clean over a step function.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

CASCADE_MODES: tuple[str, ...] = ("sr", "fps")


def ddim_timestep_grid(num_train_timesteps: int, num_steps: int) -> np.ndarray:
    """Timestep after k of `num_steps` sampler steps, k = 0..S: int64 `[S + 1]`."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in 1..{num_train_timesteps} (the training timesteps), got {num_steps}")
    ratio = num_train_timesteps / num_steps
    steps = np.arange(num_steps, 0, -1, dtype=np.float64) * ratio
    grid = np.round(steps).astype(np.int64) - 1
    return np.concatenate([grid, np.array([-1], dtype=np.int64)])


def initial_noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Standard normal float32 noise of a cascade decode, fixed by `seed` (numpy's PCG64)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    return np.random.default_rng(int(seed)).standard_normal(shape, dtype=np.float32)


def target_latent_size(mode: str, factor: int, base_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """`(T, H, W)` of the target latent for a base latent of `(t, h, w)`: `sr` multiplies rows and
    columns by `factor`; `fps` keeps the first and last frames aligned, `T = 1 + factor (t - 1)`."""
    t, h, w = base_size
    if mode == "sr":
        return t, h * factor, w * factor
    if mode == "fps":
        return 1 + factor * (t - 1), h, w
    raise ValueError(f"unknown cascade mode {mode!r}; valid: {', '.join(CASCADE_MODES)}")


# (x_t, base_up, t [B], t_next [B]) -> x_{t_next}
StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def ddim_refine(step_fn: StepFn, base_up: np.ndarray, noise: np.ndarray, grid: np.ndarray,
                on_step: Callable[[], None] | None = None) -> np.ndarray:
    """Run the DDIM chain from `noise` (at `grid[0]`) to clean (`grid[-1] = -1`)."""
    if noise.shape != base_up.shape:
        raise ValueError(f"noise {noise.shape} must have the upsampled base's shape {base_up.shape}")
    B = noise.shape[0]
    x = noise
    for k in range(len(grid) - 1):
        x = step_fn(x, base_up, np.full((B,), grid[k], np.int64), np.full((B,), grid[k + 1], np.int64))
        if on_step is not None:
            on_step()
    return x
