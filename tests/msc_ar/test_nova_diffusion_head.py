"""NOVA per-token diffusion head (§3.4): loss formula, respaced DDPM sampler, CFG."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msc_ar.nova.diffusion_head import DiffusionHead


class OracleEps(nn.Module):
    """eps of x_t for the clean token given as the condition: the exact denoiser."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.alphas_cumprod = alphas_cumprod

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod[t.cpu()].to(x_t)[:, None]
        return (x_t - ab.sqrt() * z) / (1 - ab).sqrt()


def oracle_head(token_dim: int = 6) -> DiffusionHead:
    head = DiffusionHead(token_dim, token_dim, width=16, depth=1)
    head.net = OracleEps(head.alphas_cumprod)
    return head


def test_loss_is_eps_mse_on_cosine_q_sample_with_4_repeats():
    torch.manual_seed(0)
    head = DiffusionHead(token_dim=6, cond_dim=8, width=16, depth=2)
    for p in head.parameters():  # leave adaLN-zero so eps depends on its inputs
        p.data.normal_(0, 0.3)
    x0, z = torch.randn(5, 6), torch.randn(5, 8)
    loss = head.loss(x0, z, batch_mul=4, generator=torch.Generator().manual_seed(3))

    gen = torch.Generator().manual_seed(3)  # the same draws, in the same order
    t = torch.randint(0, 1000, (20,), generator=gen)
    noise = torch.randn(20, 6, generator=gen)
    ab = head.alphas_cumprod[t].float()[:, None]
    x_t = ab.sqrt() * x0.repeat(4, 1) + (1 - ab).sqrt() * noise
    per_row = (head.net(x_t, t, z.repeat(4, 1)) - noise).pow(2).mean(-1)
    assert loss.shape == (5,)
    torch.testing.assert_close(loss, per_row.view(4, 5).mean(0), rtol=1e-5, atol=1e-6)


def test_zero_initialised_head_predicts_zero_eps():
    head = DiffusionHead(token_dim=6, cond_dim=8, width=16, depth=2)
    out = head.net(torch.randn(4, 6), torch.randint(0, 1000, (4,)), torch.randn(4, 8))
    assert torch.equal(out, torch.zeros(4, 6))  # adaLN-Zero: initial loss is exactly E[eps^2]


@pytest.mark.parametrize("num_steps", [1, 7, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampler_with_the_exact_denoiser_returns_the_clean_token(num_steps, temperature):
    # float64: at t = 999 alpha_bar is ~1e-5 and eps -> x0 divides by its square root
    head = oracle_head()
    x0 = torch.randn(9, 6, dtype=torch.float64)
    out = head.sample(x0, num_steps=num_steps, temperature=temperature, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, rtol=1e-9, atol=1e-9)


def test_sampling_timesteps_are_respaced_and_end_at_the_last_training_step():
    head = oracle_head()
    taus = head.sampling_timesteps(100)
    assert taus.shape == (100,) and int(taus[-1]) == 999
    assert bool((taus[1:] > taus[:-1]).all())


def test_guidance_extrapolates_eps_from_unconditional_to_conditional():
    # With exact denoisers, guided eps = eps_u + s (eps_c - eps_u) is the exact eps of
    # x0_u + s (x0_c - x0_u), so that is what the sampler must return.
    head = oracle_head()
    x0_c, x0_u = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    out = head.sample(x0_c, num_steps=20, guidance_scale=2.5, z_uncond=x0_u, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x0_u + 2.5 * (x0_c - x0_u), rtol=1e-9, atol=1e-9)


def test_guidance_scale_one_equals_the_conditional_sampler():
    torch.manual_seed(0)
    head = DiffusionHead(token_dim=6, cond_dim=8, width=16, depth=2)
    for p in head.parameters():
        p.data.normal_(0, 0.3)
    z, z_u = torch.randn(7, 8), torch.randn(7, 8)
    guided = head.sample(z, 10, guidance_scale=1.0, z_uncond=z_u, generator=torch.Generator().manual_seed(2))
    plain = head.sample(z, 10, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(guided, plain, rtol=1e-5, atol=1e-5)
    other = head.sample(z, 10, guidance_scale=3.0, z_uncond=z_u, generator=torch.Generator().manual_seed(2))
    assert (other - plain).abs().max() > 1e-2  # the unconditional branch does matter


def test_sample_rejects_mismatched_unconditional_batch():
    head = oracle_head()
    with pytest.raises(ValueError, match="z_uncond"):
        head.sample(torch.randn(3, 6), 5, z_uncond=torch.randn(2, 6))


def test_clip_denoised_keeps_samples_in_the_data_range():
    # An untrained head is far from eps = x_t at t = 999 (alpha_bar = 2.4e-9); without
    # clipping its x0 estimates are ~1e4, with clipping the last (noise-free) step returns
    # the clipped x0 estimate itself.
    torch.manual_seed(0)
    head = DiffusionHead(token_dim=6, cond_dim=8, width=16, depth=2)
    for p in head.parameters():
        p.data.normal_(0, 0.3)
    z = torch.randn(50, 8)
    wild = head.sample(z, 10, generator=torch.Generator().manual_seed(0))
    clipped = head.sample(z, 10, generator=torch.Generator().manual_seed(0), clip_denoised=1.0)
    assert wild.abs().max() > 10
    assert clipped.abs().max() <= 1.0
