"""AR-Diffusion training timestep samplers (§3.3): exact distributions, Fig. 3 counts."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from msc_ar.ardiffusion.timesteps import (
    TIMESTEP_SAMPLERS,
    fopp_composition_probability,
    fopp_log_counts,
    sample_timesteps,
)

P_MIN = 1e-3  # chi-square p-value floor; seeds are fixed, so a pass is reproducible


def nondecreasing_compositions(num_frames: int, num_timesteps: int) -> torch.Tensor:
    """Every non-decreasing composition, by brute force: `[C(T+F-1, F), F]`."""
    combos = itertools.combinations_with_replacement(range(num_timesteps), num_frames)
    return torch.tensor(list(combos), dtype=torch.long)


def composition_counts(samples: torch.Tensor, space: torch.Tensor) -> torch.Tensor:
    """How often each row of `space` occurs in `samples` (every sample must be in it)."""
    index = {tuple(c): i for i, c in enumerate(space.tolist())}
    counts = torch.zeros(len(space), dtype=torch.float64)
    values, n = torch.unique(samples, dim=0, return_counts=True)
    for value, k in zip(values.tolist(), n.tolist()):
        counts[index[tuple(value)]] += k  # KeyError = a composition outside the space
    return counts


def exact_fopp_marginals(num_frames: int, num_timesteps: int) -> torch.Tensor:
    """P(t_f = t) under FoPP, `[F, T]`, summed from the exact per-composition formula."""
    space = nondecreasing_compositions(num_frames, num_timesteps)
    prob = fopp_composition_probability(space, num_timesteps)  # (C,)
    marginals = torch.zeros(num_frames, num_timesteps, dtype=torch.float64)
    for f in range(num_frames):
        marginals[f].index_add_(0, space[:, f], prob)
    return marginals


# -----------------------------------------------------------------------------
# contract shared by every sampler


@pytest.mark.parametrize("kind", TIMESTEP_SAMPLERS)
def test_sampler_range_dtype_order_and_determinism(kind: str) -> None:
    batch, frames, steps = 512, 7, 13
    t = sample_timesteps(kind, batch, frames, steps, generator=torch.Generator().manual_seed(3))
    assert t.shape == (batch, frames) and t.dtype == torch.long
    assert int(t.min()) >= 0 and int(t.max()) <= steps - 1
    # Every timestep is reachable by every sampler at this size.
    assert set(t.flatten().tolist()) == set(range(steps))
    if kind != "independent":
        assert bool((t[:, 1:] >= t[:, :-1]).all()), "earlier frames must never be noisier"
    again = sample_timesteps(kind, batch, frames, steps, generator=torch.Generator().manual_seed(3))
    other = sample_timesteps(kind, batch, frames, steps, generator=torch.Generator().manual_seed(4))
    assert torch.equal(t, again)
    assert not torch.equal(t, other)
    on_device = sample_timesteps(kind, batch, frames, steps, torch.Generator().manual_seed(3), device="cpu")
    assert torch.equal(t, on_device)


def test_synchronous_and_independent_are_uniform() -> None:
    g = torch.Generator().manual_seed(0)
    n, steps = 40_000, 4
    sync = sample_timesteps("synchronous", n, 5, steps, generator=g)
    assert bool((sync == sync[:, :1]).all())
    assert chisquare(torch.bincount(sync[:, 0], minlength=steps).numpy()).pvalue > P_MIN
    # Diffusion Forcing: each pair of frames is uniform over all T^2 cells (independence).
    ind = sample_timesteps("independent", n, 3, steps, generator=g)
    pairs = ind[:, 0] * steps + ind[:, 2]
    assert chisquare(torch.bincount(pairs, minlength=steps * steps).numpy()).pvalue > P_MIN


def test_frame_one_edge_case() -> None:
    g = torch.Generator().manual_seed(0)
    for kind in TIMESTEP_SAMPLERS:
        t = sample_timesteps(kind, 20_000, 1, 5, generator=g)
        assert chisquare(torch.bincount(t[:, 0], minlength=5).numpy()).pvalue > P_MIN, kind
    one_step = sample_timesteps("fopp", 8, 4, 1, generator=g)
    assert torch.equal(one_step, torch.zeros(8, 4, dtype=torch.long))


# -----------------------------------------------------------------------------
# counts (Fig. 3)


def test_path_counts_match_paper_fig3() -> None:
    log_ds, log_de = fopp_log_counts(num_frames=3, num_timesteps=3)
    paths = (log_ds + log_de).exp().round().long().T  # (F, T)
    assert paths.tolist() == [[6, 3, 1], [3, 4, 3], [1, 3, 6]]
    space = nondecreasing_compositions(3, 3)
    assert len(space) == 10 == int(paths[0].sum())


@pytest.mark.parametrize("frames,steps", [(3, 3), (4, 5), (5, 3), (1, 6), (6, 1)])
def test_counts_equal_brute_force_enumeration(frames: int, steps: int) -> None:
    log_ds, log_de = fopp_log_counts(frames, steps)
    space = nondecreasing_compositions(frames, steps)
    for f in range(frames):
        for t in range(steps):
            through = space[space[:, f] == t]
            suffixes = {tuple(c) for c in through[:, f:].tolist()}
            prefixes = {tuple(c) for c in through[:, : f + 1].tolist()}
            assert round(math.exp(float(log_ds[t, f]))) == len(suffixes)
            assert round(math.exp(float(log_de[t, f]))) == len(prefixes)
            assert len(through) == len(suffixes) * len(prefixes)


def test_log_counts_exact_and_finite_at_scale() -> None:
    frames, steps = 64, 1000
    log_ds, log_de = fopp_log_counts(frames, steps)
    assert log_ds.dtype == torch.float64 and bool(torch.isfinite(log_ds).all() and torch.isfinite(log_de).all())
    for t, f in [(0, 0), (0, 63), (999, 0), (500, 31), (17, 5), (998, 62)]:
        exact_s = math.log(math.comb((steps - 1 - t) + (frames - 1 - f), frames - 1 - f))
        exact_e = math.log(math.comb(t + f, f))
        assert float(log_ds[t, f]) == pytest.approx(exact_s, rel=1e-12, abs=1e-12)
        assert float(log_de[t, f]) == pytest.approx(exact_e, rel=1e-12, abs=1e-12)


# -----------------------------------------------------------------------------
# exact distributions


@pytest.mark.parametrize("frames,steps", [(3, 4), (4, 3), (2, 6)])
def test_fopp_probability_is_a_distribution(frames: int, steps: int) -> None:
    prob = fopp_composition_probability(nondecreasing_compositions(frames, steps), steps)
    assert float(prob.sum()) == pytest.approx(1.0, abs=1e-12)
    assert bool((prob > 0).all())


@pytest.mark.parametrize("frames,steps,seed", [(3, 4, 0), (4, 3, 1)])
def test_fopp_matches_exact_composition_probability(frames: int, steps: int, seed: int) -> None:
    n = 200_000
    space = nondecreasing_compositions(frames, steps)
    samples = sample_timesteps("fopp", n, frames, steps, generator=torch.Generator().manual_seed(seed))
    observed = composition_counts(samples, space)
    expected = fopp_composition_probability(space, steps) * n
    assert chisquare(observed.numpy(), expected.numpy()).pvalue > P_MIN


@pytest.mark.parametrize("frames,steps,seed", [(3, 4, 0), (4, 3, 1)])
def test_uniform_nondecreasing_is_uniform_over_compositions(frames: int, steps: int, seed: int) -> None:
    n = 100_000
    space = nondecreasing_compositions(frames, steps)
    samples = sample_timesteps("uniform-nondecreasing", n, frames, steps, generator=torch.Generator().manual_seed(seed))
    observed = composition_counts(samples, space)
    assert chisquare(observed.numpy()).pvalue > P_MIN  # uniform expectation


@pytest.mark.parametrize("frames,steps,n", [(5, 20, 100_000), (64, 1000, 4096)])
def test_uniform_nondecreasing_frame_means(frames: int, steps: int, n: int) -> None:
    # Order statistics of a uniform F-subset of {0..T+F-2}: E[t_f] = (f+1)(T-1)/(F+1).
    t = sample_timesteps("uniform-nondecreasing", n, frames, steps, generator=torch.Generator().manual_seed(7))
    t = t.to(torch.float64)
    expected = torch.arange(1, frames + 1, dtype=torch.float64) * (steps - 1) / (frames + 1)
    stderr = t.std(dim=0) / math.sqrt(n)
    assert bool(((t.mean(dim=0) - expected).abs() <= 5 * stderr + 1e-9).all())


def test_fopp_mirror_symmetry_exact_and_empirical() -> None:
    frames, steps, n = 4, 5, 200_000
    space = nondecreasing_compositions(frames, steps)
    prob = fopp_composition_probability(space, steps)
    mirrored = steps - 1 - space.flip(dims=[1])  # reverse time and noise: still non-decreasing
    torch.testing.assert_close(fopp_composition_probability(mirrored, steps), prob, rtol=1e-12, atol=0)
    marginals = exact_fopp_marginals(frames, steps)  # (F, T)
    torch.testing.assert_close(marginals, marginals.flip(dims=[0, 1]), rtol=1e-12, atol=0)
    # FoPP does not make every frame's marginal uniform (only the anchor's draw is):
    # early frames still favour low noise, as in Fig. 3.
    assert float(marginals[0, 0]) > 1 / steps > float(marginals[0, -1])

    samples = sample_timesteps("fopp", n, frames, steps, generator=torch.Generator().manual_seed(11))
    for f in range(frames):
        observed = torch.bincount(samples[:, f], minlength=steps).to(torch.float64)
        # Empirical P(t_f = t) against the exact P(t_{F-1-f} = T-1-t).
        mirrored_expected = marginals[frames - 1 - f].flip(0) * n
        assert chisquare(observed.numpy(), mirrored_expected.numpy()).pvalue > P_MIN


@pytest.mark.parametrize("kind", ["fopp", "uniform-nondecreasing"])
def test_batch_rows_are_exchangeable(kind: str) -> None:
    # The FoPP sampler works on the batch grouped by anchor frame; rows must come back
    # in drawn order, or the start of a batch (e.g. one micro-batch) would be biased.
    frames, steps, n = 6, 5, 40_000
    t = sample_timesteps(kind, n, frames, steps, generator=torch.Generator().manual_seed(13))
    halves = t.view(2, n // 2, frames)
    for f in (0, frames - 1):
        table = torch.stack([torch.bincount(h[:, f], minlength=steps) for h in halves])  # (2, T)
        assert chi2_contingency(table.numpy()).pvalue > P_MIN


def test_fopp_stable_at_paper_scale() -> None:
    frames, steps, n = 64, 1000, 2048
    t = sample_timesteps("fopp", n, frames, steps, generator=torch.Generator().manual_seed(5))
    assert int(t.min()) >= 0 and int(t.max()) <= steps - 1
    assert bool((t[:, 1:] >= t[:, :-1]).all())
    # Mirror symmetry at scale: E[t_f] + E[t_{F-1-f}] = T - 1, which fails if the
    # backward (d^e) and forward (d^s) sweeps disagree numerically.
    mean = t.to(torch.float64).mean(dim=0)
    stderr = t.to(torch.float64).std(dim=0) / math.sqrt(n)
    gap = (mean + mean.flip(0) - (steps - 1)).abs()
    assert bool((gap <= 5 * (stderr + stderr.flip(0))).all())


# -----------------------------------------------------------------------------
# errors


def test_invalid_inputs_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown timestep sampler 'diffusion-forcing'.*fopp"):
        sample_timesteps("diffusion-forcing", 2, 3, 10)  # type: ignore[arg-type]
    for args, name in [((0, 3, 10), "batch_size"), ((2, 0, 10), "num_frames"), ((2, 3, 0), "num_timesteps")]:
        with pytest.raises(ValueError, match=f"{name} must be an integer >= 1, got 0"):
            sample_timesteps("fopp", *args)
    with pytest.raises(ValueError, match="num_frames must be an integer >= 1, got 2.5"):
        sample_timesteps("uniform-nondecreasing", 2, 2.5, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-decreasing"):
        fopp_composition_probability(torch.tensor([2, 1, 3]), 5)
    with pytest.raises(ValueError, match=r"0\.\.4, got range 0\.\.5"):
        fopp_composition_probability(torch.tensor([0, 1, 5]), 5)
    with pytest.raises(ValueError, match="integer tensor"):
        fopp_composition_probability(torch.tensor([0.0, 1.0]), 5)
