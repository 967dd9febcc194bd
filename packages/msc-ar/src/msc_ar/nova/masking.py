"""Set-by-set masking maths of NOVA's spatial autoregression (NOVA §3.3, §4.1; MAR).

Pure functions, no modules:

- Training masks a ratio of each frame's tokens drawn from MAR's left-truncated normal:
  mean 1.0, std 0.25, truncated to `[0.7, 1.0]` ("a masking ratio between 0.7 and 1.0",
  NOVA §4.1). Its mean is `1 + 0.25 (phi(-1.2) - phi(0)) / (Phi(0) - Phi(-1.2))
  ~= 0.8670` (`truncated_normal_mean`). One ratio per batch, `ceil(L * ratio)` tokens
  masked, as MAR does, so every frame in the batch keeps the same number of visible
  tokens and the encoder can drop them with a plain reshape.
- Which tokens are masked follows a random order per frame: the first `n` entries of
  the order are masked (`mask_from_order`).
- Inference starts fully masked and reveals tokens over `N` steps with MaskGIT's cosine
  schedule: after step `k` (0-based), `floor(L * cos(pi/2 * (k+1)/N))` tokens stay
  masked, clamped so that every step reveals at least one token and the last step
  reveals the rest (`reveal_schedule`). This needs `N <= L`.
- Classifier-free guidance grows linearly with the revealed fraction (MAR, following
  Muse): `1 + (s - 1) * (L - masked_after_step) / L` (`guidance_at`).
"""

from __future__ import annotations

import math

import torch


def _std_normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _std_normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _check_ratio_bounds(low: float, high: float, std: float) -> None:
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"mask ratio bounds must satisfy 0 <= low < high <= 1, got low={low}, high={high}")
    if std <= 0:
        raise ValueError(f"mask ratio std must be > 0, got {std}")


def truncated_normal_mean(low: float = 0.7, high: float = 1.0, mean: float = 1.0, std: float = 0.25) -> float:
    """Mean of N(mean, std^2) truncated to [low, high] (0.8670 for MAR's defaults)."""
    _check_ratio_bounds(low, high, std)
    a, b = (low - mean) / std, (high - mean) / std
    z = _std_normal_cdf(b) - _std_normal_cdf(a)
    return mean + std * (_std_normal_pdf(a) - _std_normal_pdf(b)) / z


def sample_mask_ratio(
    num: int = 1,
    low: float = 0.7,
    high: float = 1.0,
    mean: float = 1.0,
    std: float = 0.25,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """`num` draws (float64 `[num]`) of N(mean, std^2) truncated to [low, high], by inverse CDF."""
    _check_ratio_bounds(low, high, std)
    a, b = (low - mean) / std, (high - mean) / std
    cdf = torch.special.ndtr(torch.tensor([a, b], dtype=torch.float64, device=device))
    gen_device = generator.device if generator is not None else device  # drawn where the generator lives
    u = torch.rand(num, generator=generator, dtype=torch.float64, device=gen_device).to(device)
    z = torch.special.ndtri(cdf[0] + u * (cdf[1] - cdf[0]))
    return (mean + std * z).clamp(low, high)


def num_masked_for_ratio(num_tokens: int, ratio: float) -> int:
    """MAR's count of masked tokens for a training ratio: `ceil(L * ratio)`, at least 1."""
    return max(1, min(num_tokens, math.ceil(num_tokens * ratio)))


def random_orders(
    batch: int, num_tokens: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """A uniformly random permutation of `0..L-1` per row: LongTensor `[batch, L]`."""
    gen_device = generator.device if generator is not None else device  # drawn where the generator lives
    keys = torch.rand(batch, num_tokens, generator=generator, device=gen_device).to(device)
    return keys.argsort(dim=-1)


def mask_from_order(order: torch.Tensor, num_masked: int) -> torch.Tensor:
    """Boolean mask `[B, L]` (True = masked) of the first `num_masked` entries of each order."""
    batch, num_tokens = order.shape
    if not 0 <= num_masked <= num_tokens:
        raise ValueError(f"num_masked must be in 0..{num_tokens}, got {num_masked}")
    mask = torch.zeros(batch, num_tokens, dtype=torch.bool, device=order.device)
    return mask.scatter(1, order[:, :num_masked], True)


def reveal_schedule(num_tokens: int, num_steps: int) -> list[int]:
    """Tokens still masked after each of `num_steps` set-by-set steps (last entry 0).

    After step k: `floor(L * cos(pi/2 * (k+1)/N))`, clamped to keep at least one token
    masked until the last step and to reveal at least one token per step.
    """
    if num_tokens < 1:
        raise ValueError(f"a frame needs at least one token, got num_tokens={num_tokens}")
    if not 1 <= num_steps <= num_tokens:
        raise ValueError(
            f"num_steps={num_steps} must be in 1..{num_tokens}: every set-by-set step reveals at least "
            f"one of the frame's {num_tokens} tokens"
        )
    counts, remaining = [], num_tokens
    for step in range(num_steps):
        if step == num_steps - 1:
            masked = 0
        else:
            target = math.floor(num_tokens * math.cos(math.pi / 2 * (step + 1) / num_steps))
            masked = max(1, min(remaining - 1, target))
        counts.append(masked)
        remaining = masked
    return counts


def guidance_at(scale: float, num_tokens: int, num_masked_after: int) -> float:
    """Linear CFG ramp: 1 when nothing is revealed, `scale` once every token is revealed."""
    return 1.0 + (scale - 1.0) * (num_tokens - num_masked_after) / num_tokens
