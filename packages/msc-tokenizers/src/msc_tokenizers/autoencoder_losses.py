"""Training losses shared by the msc tokenizers (CausalVAE3D, ARVAE).

Reconstruction (L1 / L2 / SSIM), the KL of a diagonal Gaussian posterior, and an
optional adversarial term from a 3D patch discriminator (taming-transformers /
VQGAN recipe, which AR-Diffusion §3.1 adds "to enhance the clarity of reconstructed
video frames": hinge loss, adaptive weight, delayed start).

Everything is returned by ONE call as a dict whose `"loss"` is the scalar to optimise,
so a generic trainer with one optimiser trains the generator and the discriminator
together: the generator's adversarial term is computed with *detached* discriminator
weights (gradients reach only the generator) and the discriminator's hinge term with a
*detached* reconstruction (gradients reach only the discriminator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call

from msc_core.config import Config
from msc_core.diffusion import state_dtype
from msc_tokenizers.patch_discriminator import PatchDiscriminator3D, PatchDiscriminatorConfig

# -----------------------------------------------------------------------------
# pure loss functions


def gaussian_blur_matrix(size: int, window: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`[size - window + 1, size]` banded matrix: a 1D 'valid' Gaussian filter as a matmul.

    SSIM's separable blur as two matmuls (`G_h @ X @ G_w^T`) is several times faster on
    CPU than depthwise convolutions.
    """
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    out = size - window + 1
    matrix = torch.zeros(out, size, dtype=torch.float64)
    for i in range(out):
        matrix[i, i:i + window] = g
    return matrix.to(dtype=dtype, device=device)


def frame_ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Differentiable SSIM (Wang et al. 2004) of image batches `[N, C, H, W]` -> `[N]`.

    Gaussian window (11, sigma 1.5), 'valid' filtering, K1 = 0.01, K2 = 0.03, averaged
    over channels and positions. The default `data_range` is 2 because msc video is in
    `[-1, 1]`. Frames smaller than the window use a window the size of the frame.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"frame_ssim needs two [N, C, H, W] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    height, width = x.shape[-2:]
    window = min(window_size, height, width)
    blur_h = gaussian_blur_matrix(height, window, sigma, x.dtype, x.device)  # (H', H)
    blur_w = gaussian_blur_matrix(width, window, sigma, x.dtype, x.device)  # (W', W)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    # One blur over the stacked moments is cheaper than five separate calls.
    moments = blur_h @ torch.stack([x, y, x * x, y * y, x * y]) @ blur_w.T  # (5, N, C, H', W')
    mu_x, mu_y, xx, yy, xy = moments.unbind(0)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


def video_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Mean per-frame SSIM of videos `[B, C, T, H, W]` (a scalar)."""
    if x.shape != y.shape or x.ndim != 5:
        raise ValueError(f"video_ssim needs two [B, C, T, H, W] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # (B*T, C, H, W)  # noqa: E731
    return frame_ssim(frames(x), frames(y), data_range).mean()


def diagonal_gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over latent elements, averaged over the batch."""
    kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(dim=1).mean()


def sample_diagonal_gaussian(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Reparameterised sample `mean + exp(logvar / 2) * eps`, in `mean`'s dtype.

    eps is drawn from the global RNG in float32 (float64 for float64 moments) and the sum is
    formed in that precision, so bf16 moments get float32 noise (precision contract)."""
    dtype = state_dtype(mean.dtype)
    eps = torch.randn(mean.shape, device=mean.device, dtype=dtype)
    return (mean.to(dtype) + torch.exp(0.5 * logvar.to(dtype)) * eps).to(mean.dtype)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator (Lim & Ye 2017; taming-transformers)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_adversarial_weight(
    nll: torch.Tensor, generator_adv: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """VQGAN's balance: |grad nll| / |grad adv| at the generator's last layer (detached)."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(generator_adv, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


# -----------------------------------------------------------------------------
# the loss module


class AutoencoderLossConfig(Config):
    """Weights of the tokenizer losses; `adversarial_weight = 0` builds no discriminator."""

    l1_weight: float = Field(default=1.0, ge=0.0)
    l2_weight: float = Field(default=0.0, ge=0.0)
    ssim_weight: float = Field(default=0.2, ge=0.0, description="weight of (1 - SSIM)")
    kl_weight: float = Field(default=1e-6, ge=0.0, description="per latent element, summed (LDM-VAE scale)")
    adversarial_weight: float = Field(default=0.0, ge=0.0)
    adaptive_adversarial: bool = Field(default=True, description="VQGAN gradient-norm balancing")
    discriminator_start: int = Field(default=2000, ge=0, description="training_losses calls before the GAN starts")
    discriminator: PatchDiscriminatorConfig = PatchDiscriminatorConfig()


class AutoencoderLoss(nn.Module):
    """Reconstruction + KL (+ hinge GAN) for a video autoencoder; owns the discriminator."""

    def __init__(self, config: AutoencoderLossConfig) -> None:
        super().__init__()
        self.config = config
        self.discriminator = (
            PatchDiscriminator3D(config.discriminator) if config.adversarial_weight > 0 else None
        )
        # Counts training calls so the delayed GAN start survives save/resume.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(
        self,
        video: torch.Tensor,
        recon: torch.Tensor,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        last_layer: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """`video`, `recon`: `[B, 3, T, H, W]`; `mean`/`logvar`: the posterior; `last_layer`:
        weight of the generator's output layer (for the adaptive adversarial weight)."""
        cfg = self.config
        # the losses are reduced in float32 whatever the parameters' dtype (bf16 recon / moments);
        # the discriminator below sees the tensors as given, in its own dtype
        dtype = state_dtype(recon.dtype)
        given_video, given_recon = video, recon
        video, recon, mean, logvar = (x.to(dtype) for x in (video, recon, mean, logvar))
        zero = recon.new_zeros(())
        l1 = (recon - video).abs().mean()
        l2 = F.mse_loss(recon, video)
        ssim = video_ssim(recon, video) if cfg.ssim_weight > 0 else zero
        nll = cfg.l1_weight * l1 + cfg.l2_weight * l2 + cfg.ssim_weight * (1.0 - ssim)
        kl = diagonal_gaussian_kl(mean, logvar)
        losses = {"l1": l1.detach(), "l2": l2.detach(), "ssim": ssim.detach(), "kl": kl.detach(), "nll": nll.detach()}
        loss = nll + cfg.kl_weight * kl

        if self.discriminator is not None and torch.is_grad_enabled():
            if self.step.item() >= cfg.discriminator_start:
                # Generator term: discriminator weights detached, so only the generator learns from it.
                frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
                generator_adv = -functional_call(self.discriminator, frozen, (given_recon,)).mean()
                weight = cfg.adversarial_weight
                if cfg.adaptive_adversarial and last_layer.requires_grad:
                    weight = weight * adaptive_adversarial_weight(nll, generator_adv, last_layer)
                logits_real = self.discriminator(given_video.detach())
                logits_fake = self.discriminator(given_recon.detach())
                disc = hinge_discriminator_loss(logits_real, logits_fake)
                loss = loss + weight * generator_adv + disc
                losses.update(
                    generator_adv=generator_adv.detach(),
                    discriminator=disc.detach(),
                    adversarial_weight=torch.as_tensor(weight, dtype=loss.dtype).detach(),
                )
            self.step += 1
        losses["loss"] = loss
        return losses

