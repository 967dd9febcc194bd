"""Cascade sampling maths (CascadeV §3.1): DDIM refinement of a target latent given the base.

Pure functions, shared by the PyTorch model, the windowed decoder and the ONNX Runtime
runner (which plugs its own `step_fn`), so every backend runs the same loop:

- `cascade_ddim_step`: one denoising step = DiT prediction -> x0 -> `msc_core.diffusion.ddim_step`
  (eta = 0, deterministic); this is the graph exported to ONNX.
- `ddim_refine`: start from noise at `grid[0] = T - 1` and take `len(grid) - 1` steps to
  `grid[-1] = -1` (clean), `grid` from `msc_core.diffusion.ddim_timestep_grid`.
- `target_latent_size`: where a base latent lands in each mode (the frame arithmetic).
- `seeded_noise`: the initial noise of a cascade DECODE from an integer seed, drawn with
  numpy (`np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)`), so
  msc_runtime reproduces it without torch; `initial_noise` (a torch.Generator) is the
  noise of `CascadeModel.refine` / training samples.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch
from torch import nn

from msc_core.diffusion import convert_prediction, ddim_step
from msc_core.validation import model_dtype, trusted_inputs

CascadeMode = Literal["sr", "fps"]
CASCADE_MODES: tuple[str, ...] = ("sr", "fps")

# (x_t, base_up, t [B], t_next [B]) -> x_{t_next}
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def target_latent_size(mode: str, factor: int, base_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """`(T, H, W)` of the target latent for a base latent of `(t, h, w)`.

    `sr`: same frames, `factor` x rows and columns. `fps`: the first and last latent frames
    stay aligned and `factor - 1` frames are inserted between neighbours, `T = 1 + factor (t - 1)`
    (with a causal VAE of temporal compression `tc`: base video `1 + tc (t - 1)` frames,
    output video `1 + factor tc (t - 1)` frames).
    """
    t, h, w = base_size
    if mode == "sr":
        return t, h * factor, w * factor
    if mode == "fps":
        return 1 + factor * (t - 1), h, w
    raise ValueError(f"unknown cascade mode {mode!r}; valid: {', '.join(CASCADE_MODES)}")


def cascade_prediction(dit: nn.Module, x_t: torch.Tensor, base_up: torch.Tensor, t: torch.Tensor, residual: bool) -> torch.Tensor:
    """The DiT's output in its prediction space; with `residual`, `base_up + DiT(...)` (x0).

    Precision contract: `x_t` and `base_up` are the float32 diffusion state; the DiT runs in
    its parameters' dtype (bf16 parameters get bf16 inputs) and its output comes back in
    the state's dtype."""
    dtype = model_dtype(dit, x_t.dtype)
    pred = dit(x_t.to(dtype), base_up.to(dtype), t) if dtype != x_t.dtype else dit(x_t, base_up, t)
    if pred.dtype != x_t.dtype:  # bf16 parameters, or autocast
        pred = pred.to(x_t.dtype)
    return base_up + pred if residual else pred


def cascade_ddim_step(
    dit: nn.Module,
    x_t: torch.Tensor,
    base_up: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction: str = "x0",
    residual: bool = False,
) -> torch.Tensor:
    """One DDIM step `x_t -> x_{t_next}` of the cascade DiT; `t`, `t_next` are `[B]` (t_next -1 = clean).

    `residual`: the DiT predicts x0 as a correction of `base_up` (pixel conditioning)."""
    pred = cascade_prediction(dit, x_t, base_up, t, residual)
    x0 = convert_prediction(pred, prediction, "x0", x_t, t, alphas_cumprod, frame_dim=2)
    return ddim_step(x_t, x0, t, t_next, alphas_cumprod, frame_dim=2)


def ddim_refine(
    step_fn: StepFn,
    base_up: torch.Tensor,
    noise: torch.Tensor,
    grid: torch.Tensor,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Run the DDIM chain from `noise` (at `grid[0]`) to clean (`grid[-1] = -1`)."""
    if noise.shape != base_up.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have the upsampled base's shape {tuple(base_up.shape)}")
    B = noise.shape[0]
    x = noise
    grid = grid.to(noise.device)  # once: a copy per step would sync a GPU
    for k in range(len(grid) - 1):
        t, t_next = grid[k].expand(B), grid[k + 1].expand(B)
        with trusted_inputs():  # the grid is the sampler's own: no range check (host sync) per step
            x = step_fn(x, base_up, t, t_next)
        if on_step is not None:
            on_step()
    return x


def initial_noise(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU by default), so a seed gives
    the same noise whichever device the model runs on."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)


def seeded_noise(shape: tuple[int, ...], seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise of a cascade decode: `np.random.default_rng(seed).standard_normal(shape,
    dtype=np.float32)`, so a seed gives the same noise on every device and in msc_runtime's
    ONNX Runtime decoder (numpy only)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    noise = np.random.default_rng(int(seed)).standard_normal(shape, dtype=np.float32)
    return torch.from_numpy(noise).to(device, dtype)
