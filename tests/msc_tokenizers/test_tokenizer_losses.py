"""Tokenizer losses: SSIM against a direct reference, GAN gradient routing, delayed start."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msc_tokenizers.autoencoder_losses import (
    AutoencoderLoss,
    AutoencoderLossConfig,
    frame_ssim,
    hinge_discriminator_loss,
)
from msc_tokenizers.patch_discriminator import PatchDiscriminatorConfig


def reference_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """SSIM by its definition: every 11x11 window explicitly, float64, 2D Gaussian weights."""
    x, y = x.double(), y.double()
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    w = torch.outer(g, g) / torch.outer(g, g).sum()  # (11, 11)
    n, c, h, wd = x.shape
    px = F.unfold(x.reshape(n * c, 1, h, wd), 11).transpose(1, 2)  # (N*C, windows, 121)
    py = F.unfold(y.reshape(n * c, 1, h, wd), 11).transpose(1, 2)
    weights = w.reshape(-1)
    mu_x, mu_y = px @ weights, py @ weights
    var_x = ((px - mu_x[..., None]) ** 2) @ weights
    var_y = ((py - mu_y[..., None]) ** 2) @ weights
    cov = ((px - mu_x[..., None]) * (py - mu_y[..., None])) @ weights
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.reshape(n, -1).mean(dim=1)


def test_ssim_matches_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 24, 20, generator=gen) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    torch.testing.assert_close(frame_ssim(x, y).double(), reference_ssim(x, y), atol=1e-5, rtol=0)
    torch.testing.assert_close(frame_ssim(x, x), torch.ones(3))


# -----------------------------------------------------------------------------
# adversarial term


def gan_setup(start: int = 0):
    torch.manual_seed(0)
    config = AutoencoderLossConfig(
        adversarial_weight=0.5, discriminator_start=start,
        discriminator=PatchDiscriminatorConfig(channels=8, num_layers=2),
    )
    loss = AutoencoderLoss(config)
    gen = torch.Generator().manual_seed(1)
    video = torch.rand(2, 3, 3, 16, 16, generator=gen) * 2 - 1
    last_layer = torch.nn.Parameter(torch.randn(3, generator=gen))  # the "generator"
    mean = torch.randn(2, 4, generator=gen)
    logvar = torch.zeros(2, 4)

    def recon() -> torch.Tensor:
        return torch.tanh(video + last_layer.view(1, 3, 1, 1, 1))

    return loss, video, recon, mean, logvar, last_layer


def test_discriminator_learns_only_from_its_hinge_loss() -> None:
    """One backward of "loss" gives the discriminator exactly the hinge-loss gradient: the
    generator's adversarial term does not train it (detached weights)."""
    loss, video, recon, mean, logvar, last_layer = gan_setup()
    out = loss(video, recon(), mean, logvar, last_layer)
    assert {"generator_adv", "discriminator", "adversarial_weight"} <= out.keys()
    out["loss"].backward()
    got = [p.grad.clone() for p in loss.discriminator.parameters()]

    loss.zero_grad()
    d = loss.discriminator
    hinge_discriminator_loss(d(video), d(recon().detach())).backward()
    for g, p in zip(got, d.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_generator_gets_the_adaptive_adversarial_gradient() -> None:
    """The generator's gradient is that of nll + KL + w * (-D(recon)), with w the VQGAN
    ratio |grad nll| / |grad adv| at the last layer times adversarial_weight."""
    loss, video, recon, mean, logvar, last_layer = gan_setup()
    out = loss(video, recon(), mean, logvar, last_layer)
    out["loss"].backward()
    got = last_layer.grad.clone()

    cfg = loss.config
    r = recon()
    nll = (r - video).abs().mean() * cfg.l1_weight + cfg.ssim_weight * (1 - frame_ssim(
        r.transpose(1, 2).flatten(0, 1), video.transpose(1, 2).flatten(0, 1)).mean())
    adv = -loss.discriminator(r).mean()
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, last_layer, retain_graph=True)[0]
    weight = cfg.adversarial_weight * g_nll.norm() / (g_adv.norm() + 1e-4)
    torch.testing.assert_close(out["adversarial_weight"], weight.detach())
    torch.testing.assert_close(got, g_nll + weight * g_adv)  # the KL term has no path to last_layer


def test_adversarial_term_starts_after_discriminator_start_calls() -> None:
    loss, video, recon, mean, logvar, last_layer = gan_setup(start=2)
    for call in range(4):
        out = loss(video, recon(), mean, logvar, last_layer)
        assert ("discriminator" in out) == (call >= 2)
    assert int(loss.step) == 4
    with torch.no_grad():  # evaluation calls do not advance the schedule
        loss(video, recon(), mean, logvar, last_layer)
    assert int(loss.step) == 4
