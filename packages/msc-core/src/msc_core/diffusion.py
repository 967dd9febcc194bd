"""Diffusion maths as pure functions (AR-Diffusion §3.2; DDPM, DDIM).

Conventions used by every msc package:

- `alphas_cumprod` is a float64 tensor `[T]`; timesteps are 0-based integers in
  `0..T-1`, and `-1` means "clean" (alpha_bar = 1). The forward process is
  `x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps` (AR-Diffusion's eq. 3
  misprints the noise coefficient as `1 - alpha_bar`).
- Timesteps are **per frame**: `t` is `[B, T]` (or `[B]` for one timestep per sample)
  and `frame_dim` names the axis of `x` that holds the frames: 2 for grid latents or
  video `[B, C, T, H, W]`, 1 for token latents `[B, T, L, D]`.
- Coefficients are computed in float64 (in float32 from a float32 table, as in exported
  ONNX graphs) and cast to the dtype of `x`.
- Precision contract (README "Precision and devices"): the diffusion state (noise, x_t,
  x0 estimates, the DDIM/DDPM arithmetic) is float32 whatever the parameters' dtype
  (`state_dtype`); a model casts the network's input to its parameter dtype and the
  output back. Noise is drawn on the generator's device and then moved
  (`standard_normal`), so a CPU generator gives the same noise on every device.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from msc_core.validation import value_checks_active

PredictionType = Literal["x0", "eps", "v"]
PREDICTION_TYPES: tuple[str, ...] = ("x0", "eps", "v")
BETA_SCHEDULES: tuple[str, ...] = ("linear", "cosine")


# -----------------------------------------------------------------------------
# schedules


def make_betas(kind: str, num_timesteps: int = 1000) -> torch.Tensor:
    """Beta schedule `[T]` (float64): `linear` 1e-4..0.02 (DDPM, AR-Diffusion) or `cosine`."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if kind == "linear":
        # DDPM's range is defined for T=1000; scale it so other T keep the same total noise.
        scale = 1000.0 / num_timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    if kind == "cosine":
        # Nichol & Dhariwal (2021), s = 0.008, betas clipped at 0.999.
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {kind!r}; valid: {', '.join(BETA_SCHEDULES)}")


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), float64 `[T]`."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def make_alphas_cumprod(kind: str, num_timesteps: int = 1000) -> torch.Tensor:
    return alphas_cumprod_from_betas(make_betas(kind, num_timesteps))


def ddim_timestep_grid(num_train_timesteps: int, num_steps: int) -> torch.Tensor:
    """Timestep after k of `num_steps` sampler steps, k = 0..S: LongTensor `[S + 1]`.

    `grid[0] = T - 1` (pure noise, "trailing" spacing so sampling starts from the last
    training timestep) and `grid[S] = -1` (clean). A frame that has done k steps sits
    at `grid[k]`; a DDIM step moves it from `grid[k]` to `grid[k + 1]`.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(
            f"num_steps must be in 1..{num_train_timesteps} (the training timesteps), got {num_steps}"
        )
    ratio = num_train_timesteps / num_steps
    steps = torch.arange(num_steps, 0, -1, dtype=torch.float64) * ratio
    grid = steps.round().long() - 1
    return torch.cat([grid, torch.tensor([-1], dtype=torch.long)])


# -----------------------------------------------------------------------------
# per-frame coefficients


def _check_timesteps(t: torch.Tensor, num_timesteps: int) -> None:
    """dtype always; the range (a host sync on a GPU) unless the caller vouches for its
    timesteps (`msc_core.validation.trusted_inputs`, as every sampler loop does)."""
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"timesteps must be an integer tensor, got dtype {t.dtype}")
    if t.numel() and value_checks_active(t) and (int(t.min()) < -1 or int(t.max()) >= num_timesteps):
        raise ValueError(
            f"timesteps must lie in -1..{num_timesteps - 1} (-1 = clean), got range "
            f"{int(t.min())}..{int(t.max())}"
        )


def per_frame(values: torch.Tensor, x: torch.Tensor, frame_dim: int) -> torch.Tensor:
    """Reshape per-sample `[B]` or per-frame `[B, T]` values to broadcast against `x`."""
    if values.dim() == 1:
        if values.shape[0] != x.shape[0]:
            raise ValueError(f"per-sample values {tuple(values.shape)} do not match batch of x {tuple(x.shape)}")
        return values.reshape(values.shape[0], *([1] * (x.dim() - 1)))
    if values.dim() != 2:
        raise ValueError(f"timesteps must be [B] or [B, T], got shape {tuple(values.shape)}")
    frame_dim = frame_dim % x.dim()
    if frame_dim == 0 or values.shape != (x.shape[0], x.shape[frame_dim]):
        raise ValueError(
            f"per-frame values {tuple(values.shape)} do not match x {tuple(x.shape)} with frames "
            f"on dim {frame_dim}; expected ({x.shape[0]}, {x.shape[frame_dim]})"
        )
    shape = [1] * x.dim()
    shape[0], shape[frame_dim] = values.shape
    return values.reshape(shape)


def alpha_bar_at(t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alpha_bar at integer timesteps (any shape), with alpha_bar(-1) = 1; float64, or
    float32 for a float32 table (what ONNX exporters pass: graphs hold no float64)."""
    _check_timesteps(t, alphas_cumprod.shape[0])
    dtype = torch.float32 if alphas_cumprod.dtype == torch.float32 else torch.float64
    table = torch.cat([alphas_cumprod.new_ones(1, dtype=dtype), alphas_cumprod.to(dtype)])
    return table.to(t.device)[t + 1]


def _coef(t: torch.Tensor, x: torch.Tensor, alphas_cumprod: torch.Tensor, frame_dim: int) -> torch.Tensor:
    return per_frame(alpha_bar_at(t, alphas_cumprod), x, frame_dim)


def _cast(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return coef.to(device=x.device, dtype=x.dtype)


# -----------------------------------------------------------------------------
# precision and noise


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the diffusion state of a model whose parameters are `dtype`: float32, or
    float64 for a float64 model (reference copies in tests); never bf16 / fp16."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def standard_normal(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """N(0, 1) noise drawn on the generator's device (the global RNG on `device` without
    one) in `dtype`, then moved to `device`: a CPU generator gives the same noise on every
    device (the seeding policy)."""
    gen_device = generator.device if generator is not None else torch.device(device)
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


# -----------------------------------------------------------------------------
# forward process and prediction conversions


def q_sample(
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    frame_dim: int = 2,
) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, with per-frame t."""
    ab = _coef(t, x0, alphas_cumprod, frame_dim)
    return _cast(ab.sqrt(), x0) * x0 + _cast((1 - ab).sqrt(), x0) * noise


def convert_prediction(
    pred: torch.Tensor,
    source: PredictionType,
    target: PredictionType,
    x_t: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    frame_dim: int = 2,
) -> torch.Tensor:
    """Turn an x0 / eps / v prediction for `x_t` into another parameterisation.

    v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho). eps is undefined at t = -1.
    """
    for name, value in (("source", source), ("target", target)):
        if value not in PREDICTION_TYPES:
            raise ValueError(f"{name} prediction type {value!r} is not one of {PREDICTION_TYPES}")
    if source == target:
        return pred
    ab = _coef(t, x_t, alphas_cumprod, frame_dim)
    a, s = _cast(ab.sqrt(), x_t), _cast((1 - ab).sqrt(), x_t)
    if source == "x0":
        x0, eps = pred, (x_t - a * pred) / s
    elif source == "eps":
        x0, eps = (x_t - s * pred) / a, pred
    else:  # v
        x0, eps = a * x_t - s * pred, s * x_t + a * pred
    if target == "x0":
        return x0
    if target == "eps":
        return eps
    return a * eps - s * x0


# -----------------------------------------------------------------------------
# reverse steps


def ddpm_posterior(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    frame_dim: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x0) for t >= 0 (t = 0 gives mean x0, var 0)."""
    if t.numel() and value_checks_active(t) and int(t.min()) < 0:
        raise ValueError("ddpm_posterior needs timesteps >= 0 (a clean frame has no posterior)")
    ab_t = _coef(t, x_t, alphas_cumprod, frame_dim)
    ab_prev = _coef(t - 1, x_t, alphas_cumprod, frame_dim)
    beta_t = 1 - ab_t / ab_prev
    coef_x0 = ab_prev.sqrt() * beta_t / (1 - ab_t)
    coef_xt = (1 - beta_t).sqrt() * (1 - ab_prev) / (1 - ab_t)
    variance = beta_t * (1 - ab_prev) / (1 - ab_t)
    mean = _cast(coef_x0, x_t) * x0 + _cast(coef_xt, x_t) * x_t
    return mean, _cast(variance, x_t).expand_as(x_t)


def ddpm_step(
    x_t: torch.Tensor,
    x0_pred: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    frame_dim: int = 2,
    noise: torch.Tensor | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One ancestral DDPM step x_t -> x_{t-1}; `temperature` scales the added noise."""
    mean, variance = ddpm_posterior(x0_pred, x_t, t, alphas_cumprod, frame_dim)
    if noise is None:
        noise = standard_normal(tuple(x_t.shape), generator, x_t.device, x_t.dtype)
    return mean + temperature * variance.sqrt() * noise


def ddim_step(
    x_t: torch.Tensor,
    x0_pred: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    frame_dim: int = 2,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDIM step from per-frame `t` to `t_next` (<= t; -1 = clean) given an x0 prediction.

    Frames with `t_next == t` are returned bit-identical (no re-noising, no drift), which
    is what the AD scheduler relies on for frames that wait or are finished.
    """
    if t.shape != t_next.shape:
        raise ValueError(f"t {tuple(t.shape)} and t_next {tuple(t_next.shape)} must have the same shape")
    if value_checks_active(t) and bool((t_next > t).any()):
        raise ValueError("ddim_step only moves towards less noise: every t_next must be <= t")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    moving = t_next < t
    # Frames that do not move may sit at t = -1 (clean); evaluate their coefficients at
    # t = 0 to stay finite. Their values are discarded by the final `where`.
    t_safe = torch.where(moving, t, t.clamp(min=0))
    ab_t = _coef(t_safe, x_t, alphas_cumprod, frame_dim)
    ab_next = _coef(torch.where(moving, t_next, t_safe), x_t, alphas_cumprod, frame_dim)
    eps = (x_t - _cast(ab_t.sqrt(), x_t) * x0_pred) / _cast((1 - ab_t).sqrt(), x_t)
    sigma = eta * ((1 - ab_next) / (1 - ab_t) * (1 - ab_t / ab_next)).clamp(min=0).sqrt()
    direction = (1 - ab_next - sigma**2).clamp(min=0).sqrt()
    x_next = _cast(ab_next.sqrt(), x_t) * x0_pred + _cast(direction, x_t) * eps
    if eta > 0:
        if noise is None:
            noise = standard_normal(tuple(x_t.shape), generator, x_t.device, x_t.dtype)
        x_next = x_next + _cast(sigma, x_t) * noise
    return torch.where(per_frame(moving, x_t, frame_dim), x_next, x_t)


# -----------------------------------------------------------------------------
# embeddings


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (integer or float) timesteps of any shape -> `[..., dim]`."""
    if dim < 2:
        raise ValueError(f"embedding dim must be >= 2, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.to(torch.float32)[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
