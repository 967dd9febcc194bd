"""Diffusion maths: closed forms, inverses, DDIM exactness, per-frame semantics."""

import math

import pytest
import torch

from msc_core import diffusion as D


@pytest.fixture(params=["linear", "cosine"])
def alphas_cumprod(request):
    return D.make_alphas_cumprod(request.param, 1000)


def test_linear_schedule_matches_ddpm():
    betas = D.make_betas("linear", 1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    ab = D.alphas_cumprod_from_betas(betas)
    assert torch.allclose(ab, torch.cumprod(1 - betas, 0))
    assert bool((ab[1:] < ab[:-1]).all())


def test_unknown_schedule_names_valid_ones():
    with pytest.raises(ValueError, match="linear, cosine"):
        D.make_betas("sigmoid")


def test_q_sample_per_frame_statistics(alphas_cumprod):
    # mean sqrt(ab_t) * x0 and variance 1 - ab_t, separately for every frame
    gen = torch.Generator().manual_seed(0)
    n, frames = 200_000, 4
    t = torch.tensor([[0, 250, 600, 999]]).expand(n, frames)
    x0 = torch.full((n, 1, frames, 1, 1), 0.7, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    x_t = D.q_sample(x0, t, noise, alphas_cumprod, frame_dim=2)[:, 0, :, 0, 0]  # (n, frames)
    ab = alphas_cumprod[t[0]]
    se_mean = (1 - ab).sqrt() / math.sqrt(n)
    assert bool(((x_t.mean(0) - ab.sqrt() * 0.7).abs() < 5 * se_mean + 1e-12).all())
    var = x_t.var(0)
    se_var = (1 - ab) * math.sqrt(2 / n)
    assert bool(((var - (1 - ab)).abs() < 5 * se_var + 1e-12).all())


def test_q_sample_token_layout_and_per_sample_t(alphas_cumprod):
    x0 = torch.randn(2, 3, 5, 4, dtype=torch.float64)  # (B, T, L, D)
    noise = torch.randn_like(x0)
    t = torch.tensor([[1, 2, 3], [10, 10, 10]])
    out = D.q_sample(x0, t, noise, alphas_cumprod, frame_dim=1)
    ab = alphas_cumprod[t][:, :, None, None]
    assert torch.allclose(out, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    # a per-sample [B] timestep equals the same value repeated on every frame
    same = D.q_sample(x0, torch.tensor([4, 9]), noise, alphas_cumprod, frame_dim=1)
    rep = D.q_sample(x0, torch.tensor([[4] * 3, [9] * 3]), noise, alphas_cumprod, frame_dim=1)
    assert torch.equal(same, rep)


def test_timesteps_validated():
    ab = D.make_alphas_cumprod("linear", 10)
    x = torch.zeros(1, 1, 2, 1, 1)
    with pytest.raises(ValueError, match="-1..9"):
        D.q_sample(x, torch.tensor([[0, 10]]), x, ab)
    with pytest.raises(ValueError, match=r"expected \(1, 2\)"):
        D.q_sample(x, torch.tensor([[0, 1, 2]]), x, ab)
    with pytest.raises(ValueError, match="integer"):
        D.q_sample(x, torch.tensor([[0.5, 1.0]]), x, ab)


@pytest.mark.parametrize("source", D.PREDICTION_TYPES)
@pytest.mark.parametrize("target", D.PREDICTION_TYPES)
def test_prediction_conversions_invert(alphas_cumprod, source, target):
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 4, 5, 5, generator=gen, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 1000, (3, 4), generator=gen)
    x_t = D.q_sample(x0, t, eps, alphas_cumprod)
    ab = D.per_frame(alphas_cumprod[t], x0, 2)
    truth = {"x0": x0, "eps": eps, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}
    out = D.convert_prediction(truth[source], source, target, x_t, t, alphas_cumprod)
    assert torch.allclose(out, truth[target], atol=1e-8, rtol=1e-6)
    back = D.convert_prediction(out, target, source, x_t, t, alphas_cumprod)
    assert torch.allclose(back, truth[source], atol=1e-8, rtol=1e-6)


def test_ddim_eta0_with_perfect_x0_lands_on_next_marginal(alphas_cumprod):
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 3, 4, 6, 6, generator=gen, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.tensor([[999, 500, 40, 3], [700, 699, 1, 0]])
    t_next = torch.tensor([[979, 480, 20, -1], [600, 1, 0, -1]])
    x_t = D.q_sample(x0, t, eps, alphas_cumprod)
    x_next = D.ddim_step(x_t, x0, t, t_next, alphas_cumprod, eta=0.0)
    expected = D.q_sample(x0, t_next, eps, alphas_cumprod)  # same noise, next marginal
    assert torch.allclose(x_next, expected, atol=1e-10, rtol=0)
    assert torch.allclose(x_next[:, :, 3], x0[:, :, 3], atol=1e-10)  # t_next = -1 is clean


def test_ddim_unchanged_frames_are_bit_identical(alphas_cumprod):
    gen = torch.Generator().manual_seed(3)
    x_t = torch.randn(2, 3, 5, 4, 4, generator=gen)
    x0_pred = torch.randn(x_t.shape, generator=gen)
    t = torch.tensor([[-1, 19, 500, 999, 999], [-1, -1, 0, 300, 999]])
    t_next = torch.tensor([[-1, -1, 480, 999, 979], [-1, -1, -1, 300, 999]])
    for eta in (0.0, 1.0):
        out = D.ddim_step(x_t, x0_pred, t, t_next, alphas_cumprod, eta=eta, generator=gen)
        same = (t == t_next)
        for b in range(2):
            for f in range(5):
                if same[b, f]:
                    assert torch.equal(out[b, :, f], x_t[b, :, f])
                else:
                    assert not torch.equal(out[b, :, f], x_t[b, :, f])
        assert torch.isfinite(out).all()


def test_ddim_refuses_going_up_in_noise(alphas_cumprod):
    x = torch.zeros(1, 1, 2, 1, 1)
    with pytest.raises(ValueError, match="t_next must be <= t"):
        D.ddim_step(x, x, torch.tensor([[5, 5]]), torch.tensor([[4, 6]]), alphas_cumprod)


def test_ddpm_posterior_matches_bayes_rule(alphas_cumprod):
    # q(x_{t-1} | x_t, x0) from the Gaussian product of q(x_t | x_{t-1}) and q(x_{t-1} | x0)
    t = torch.tensor([[1, 10, 500, 999]])
    x0 = torch.randn(1, 1, 4, 1, 1, dtype=torch.float64)
    x_t = torch.randn_like(x0)
    mean, var = D.ddpm_posterior(x0, x_t, t, alphas_cumprod)
    ab_t, ab_prev = alphas_cumprod[t[0]], alphas_cumprod[t[0] - 1]
    alpha = ab_t / ab_prev
    prec = alpha / (1 - alpha) + 1 / (1 - ab_prev)
    mu = (alpha.sqrt() / (1 - alpha) * x_t.flatten() + ab_prev.sqrt() / (1 - ab_prev) * x0.flatten()) / prec
    assert torch.allclose(var.flatten(), 1 / prec, rtol=1e-6)
    assert torch.allclose(mean.flatten(), mu, rtol=1e-6, atol=1e-9)
    mean0, var0 = D.ddpm_posterior(x0, x_t, torch.zeros_like(t), alphas_cumprod)
    assert torch.equal(mean0, x0) and bool((var0 == 0).all())


def test_ddim_timestep_grid():
    grid = D.ddim_timestep_grid(1000, 50)
    assert grid.shape == (51,) and grid[0] == 999 and grid[-1] == -1
    assert bool((grid[1:] < grid[:-1]).all())
    assert torch.equal(D.ddim_timestep_grid(10, 10), torch.arange(9, -2, -1))
    with pytest.raises(ValueError, match="1..1000"):
        D.ddim_timestep_grid(1000, 0)


def test_timestep_embedding_properties():
    t = torch.tensor([[0, 1, 999]])
    emb = D.timestep_embedding(t, 16)
    assert emb.shape == (1, 3, 16)
    assert torch.allclose(emb[0, 0], torch.cat([torch.ones(8), torch.zeros(8)]))
    assert torch.allclose(emb.pow(2).sum(-1), torch.full((1, 3), 8.0))  # cos^2 + sin^2 per pair
    assert not torch.allclose(emb[0, 1], emb[0, 2])
    assert torch.equal(D.timestep_embedding(t.float(), 16), emb)
    assert D.timestep_embedding(torch.tensor([3]), 7).shape == (1, 7)
