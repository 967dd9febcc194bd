"""NOVA set-by-set masking (§3.3, §4.1): truncated-normal ratios, reveal schedule, CFG ramp."""

from __future__ import annotations

import math

import pytest
import torch

from msc_ar.nova.masking import (
    guidance_at,
    mask_from_order,
    num_masked_for_ratio,
    random_orders,
    reveal_schedule,
    sample_mask_ratio,
    truncated_normal_mean,
)


def test_truncated_normal_mean_is_mars_0867():
    # N(1, 0.25^2) truncated to [0.7, 1]: a = -1.2, b = 0.
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    Phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    expected = 1 + 0.25 * (phi(-1.2) - phi(0.0)) / (Phi(0.0) - Phi(-1.2))
    assert truncated_normal_mean() == pytest.approx(expected, abs=1e-12)
    assert truncated_normal_mean() == pytest.approx(0.8670, abs=1e-4)


def test_mask_ratio_samples_follow_the_truncated_normal():
    n = 100_000
    draws = sample_mask_ratio(n, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (n,)
    assert float(draws.min()) >= 0.7 and float(draws.max()) <= 1.0
    # Mean within 5 standard errors (std of the truncated law is 0.0835).
    assert float(draws.mean()) == pytest.approx(truncated_normal_mean(), abs=5 * 0.0835 / math.sqrt(n))
    # Kolmogorov-Smirnov against the exact CDF: sup |F_n - F| < 1.95 / sqrt(n) at the 0.1% level.
    x = draws.sort().values
    ndtr = torch.special.ndtr
    low = ndtr(torch.tensor(-1.2, dtype=torch.float64))  # Phi((0.7 - 1) / 0.25)
    cdf = (ndtr((x - 1) / 0.25) - low) / (0.5 - low)
    empirical_hi = torch.arange(1, n + 1, dtype=torch.float64) / n
    empirical_lo = torch.arange(0, n, dtype=torch.float64) / n
    ks = max(float((empirical_hi - cdf).abs().max()), float((cdf - empirical_lo).abs().max()))
    assert ks < 1.95 / math.sqrt(n)


def test_mask_ratio_rejects_bad_bounds():
    with pytest.raises(ValueError, match="low < high"):
        sample_mask_ratio(1, low=1.0, high=1.0)
    with pytest.raises(ValueError, match="std"):
        sample_mask_ratio(1, std=0.0)


def test_num_masked_is_ceil_of_ratio():
    assert num_masked_for_ratio(256, 0.7) == math.ceil(256 * 0.7)
    assert num_masked_for_ratio(16, 1.0) == 16
    assert num_masked_for_ratio(16, 0.71) == 12


def test_mask_from_order_masks_the_first_entries_of_each_order():
    orders = random_orders(5, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(orders.sort(dim=1).values, torch.arange(16).expand(5, 16))  # permutations
    mask = mask_from_order(orders, 6)
    assert torch.equal(mask.sum(dim=1), torch.full((5,), 6))
    for row in range(5):
        assert set(torch.nonzero(mask[row]).flatten().tolist()) == set(orders[row, :6].tolist())


def test_reveal_schedule_l256_n64_follows_the_cosine_formula():
    counts = reveal_schedule(256, 64)
    assert len(counts) == 64 and counts[-1] == 0
    before = [256] + counts[:-1]
    for k, masked in enumerate(counts[:-1]):
        target = math.floor(256 * math.cos(math.pi / 2 * (k + 1) / 64))
        # cos(pi/2 (k+1)/N) tokens stay masked, except where that would reveal nothing
        assert masked == target or (target >= before[k] and masked == before[k] - 1)
    assert counts[:4] == [255, 254, 253, 252]  # the cosine is flat at first: one token per step


@pytest.mark.parametrize("num_tokens", [1, 2, 3, 7, 16, 50, 256])
def test_reveal_schedule_reveals_at_least_one_token_per_step(num_tokens):
    for num_steps in range(1, num_tokens + 1):
        counts = reveal_schedule(num_tokens, num_steps)
        before = [num_tokens] + counts[:-1]
        assert all(b > a for b, a in zip(before, counts)), (num_tokens, num_steps, counts)
        assert counts[-1] == 0
        for k, masked in enumerate(counts[:-1]):
            target = math.floor(num_tokens * math.cos(math.pi / 2 * (k + 1) / num_steps))
            assert masked == max(1, min(before[k] - 1, target))


def test_reveal_schedule_refuses_more_steps_than_tokens():
    with pytest.raises(ValueError, match="num_steps=17 must be in 1..16"):
        reveal_schedule(16, 17)


def test_guidance_ramps_linearly_with_the_revealed_fraction():
    assert guidance_at(3.0, 100, 100) == 1.0
    assert guidance_at(3.0, 100, 0) == 3.0
    assert guidance_at(3.0, 100, 75) == pytest.approx(1.5)
    assert all(guidance_at(1.0, 64, m) == 1.0 for m in range(65))
