"""Per-token diffusion head of NOVA (NOVA §3.4, eq. 4; MAR's Diffusion Loss).

Each token `x_n` is modelled by a small denoiser `eps_theta(x_n^t | t, z_n)` conditioned
on the spatial decoder's output `z_n` for that position: a residual MLP whose blocks are
`LayerNorm -> adaLN modulate -> Linear -> SiLU -> Linear`, gated, with the condition
`y = time_embed(t) + cond_embed(z_n)` (NOVA §4.1 "Architectures", MAR's SimpleMLPAdaLN).

- Training: cosine noise schedule with 1000 steps (Nichol & Dhariwal), eps prediction,
  MSE, each token repeated `batch_mul = 4` times with its own timestep and noise
  ("repeat ... by 4 times during training for each image", §3.4).
- Sampling: ancestral DDPM over `num_steps` respaced timesteps (100 by default, §4.1),
  with a temperature on the added noise, and classifier-free guidance on eps. The
  schedule, `q_sample`, the eps -> x0 conversion and the DDPM step all come from
  `msc_core.diffusion`.

Respacing: the `S` kept timesteps `tau_0 < ... < tau_{S-1}` (`ddim_timestep_grid`) define
a shorter process with `alpha_bar'_k = alpha_bar_{tau_k}`; a DDPM step `k -> k-1` of that
process is `msc_core.diffusion.ddpm_step` on the respaced table, while the network sees
the original timestep `tau_k` (improved-diffusion's respacing, which MAR samples with).
"""

from __future__ import annotations

import torch
from torch import nn

from msc_core.diffusion import (
    convert_prediction,
    ddim_timestep_grid,
    ddpm_step,
    make_alphas_cumprod,
    q_sample,
    standard_normal,
    state_dtype,
)
from msc_core.validation import model_dtype, trusted_inputs
from msc_core.transformer import TimestepEmbedder, initialize_dit_weights


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class AdaLNResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class TokenFinalLayer(nn.Module):
    """adaLN + linear back to the token's channels, per token `(N, width)` (DiT's final layer)."""

    def __init__(self, width: int, token_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, token_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class AdaLNResidualMLP(nn.Module):
    """`eps_theta(x_t | t, z)`: `(N, Dt)`, `(N,)`, `(N, Dz)` -> `(N, Dt)`."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int) -> None:
        super().__init__()
        self.t_embedder = TimestepEmbedder(width)  # DiT's sinusoid + MLP
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(AdaLNResidualBlock(width) for _ in range(depth))
        self.final_layer = TokenFinalLayer(width, token_dim)
        # adaLN-Zero: every block starts as the identity and the output at 0 (eps = 0).
        initialize_dit_weights(self)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = self.t_embedder(t) + self.cond_embed(z)  # (N, width)
        x = self.input_proj(x_t)
        for block in self.blocks:
            x = block(x, y)
        return self.final_layer(x, y)


class DiffusionHead(nn.Module):
    """Diffusion loss and DDPM sampler for continuous tokens, conditioned per token on `z`."""

    def __init__(
        self,
        token_dim: int,
        cond_dim: int,
        width: int,
        depth: int,
        num_train_timesteps: int = 1000,
        noise_schedule: str = "cosine",
    ) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.num_train_timesteps = num_train_timesteps
        self.net = AdaLNResidualMLP(token_dim, cond_dim, width, depth)
        # A plain attribute, not a buffer: float64, derived from the config, never saved
        # and never cast to bf16 by `.to(dtype)`.
        self.alphas_cumprod = make_alphas_cumprod(noise_schedule, num_train_timesteps)

    def loss(
        self, target: torch.Tensor, z: torch.Tensor, batch_mul: int = 4, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-token eps-MSE `(N,)` for clean tokens `target` `(N, Dt)` given conditions `z` `(N, Dz)`.

        Each token is repeated `batch_mul` times with independent timesteps and noise; the
        returned loss of a token is the mean over its repeats and channels.
        """
        if target.shape[0] != z.shape[0]:
            raise ValueError(f"{target.shape[0]} target tokens but {z.shape[0]} conditions")
        N = target.shape[0]
        dtype = model_dtype(self.net, target.dtype)
        x0 = target.repeat(batch_mul, 1).to(state_dtype(dtype))  # (batch_mul * N, Dt), float32 state
        cond = z.repeat(batch_mul, 1)
        gen_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=gen_device, generator=generator)
        t = t.to(x0.device)
        noise = standard_normal(tuple(x0.shape), generator, x0.device, x0.dtype)
        x_t = q_sample(x0, t, noise, self.alphas_cumprod, frame_dim=1)
        eps = self.eps(x_t, t, cond)
        per_row = (eps.float() - noise.float()).pow(2).mean(dim=-1)  # (batch_mul * N,)
        return per_row.view(batch_mul, N).mean(dim=0)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The network's eps for the float32 state `x_t`: run in the parameters' dtype, returned
        in `x_t`'s dtype (precision contract)."""
        dtype = model_dtype(self.net, x_t.dtype)
        eps = self.net(x_t.to(dtype), t, z.to(dtype))
        return eps.to(x_t.dtype)

    def sampling_timesteps(self, num_steps: int) -> torch.Tensor:
        """The kept training timesteps `tau_0 < ... < tau_{S-1}` of an `S`-step sampler."""
        return ddim_timestep_grid(self.num_train_timesteps, num_steps)[:-1].flip(0)

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        num_steps: int = 100,
        temperature: float = 1.0,
        guidance_scale: float = 1.0,
        z_uncond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        clip_denoised: float | None = None,
    ) -> torch.Tensor:
        """Draw one token `(N, Dt)` per condition `z` `(N, Dz)` by `num_steps` DDPM steps.

        With `z_uncond`, eps is guided: `eps_u + guidance_scale * (eps_c - eps_u)`, both
        branches denoising the same `x_t` (so `guidance_scale = 1` is the conditional model).
        `clip_denoised` clamps each x0 estimate to `[-c, c]` (DDPM's clipping for data in a
        known range): the cosine schedule ends at alpha_bar_999 = 2.4e-9, where eps -> x0
        multiplies any eps error by 1/sqrt(alpha_bar) = 2e4.
        """
        if z_uncond is not None and z_uncond.shape != z.shape:
            raise ValueError(f"z_uncond {tuple(z_uncond.shape)} must match z {tuple(z.shape)}")
        N = z.shape[0]
        taus = self.sampling_timesteps(num_steps).to(z.device)
        respaced = self.alphas_cumprod[self.sampling_timesteps(num_steps)]
        # the DDPM state is float32 (float64 for a float64 head), drawn on the generator's device
        x = standard_normal((N, self.token_dim), generator, z.device, state_dtype(model_dtype(self.net, z.dtype)))
        cond = z if z_uncond is None else torch.cat([z, z_uncond])
        steps = torch.arange(num_steps, device=z.device)[:, None].expand(num_steps, N)  # (S, N), made once
        for k in range(num_steps - 1, -1, -1):
            t_model = taus[k].expand(cond.shape[0])
            if z_uncond is None:
                eps = self.eps(x, t_model, cond)
            else:
                eps_c, eps_u = self.eps(torch.cat([x, x]), t_model, cond).chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            k_t = steps[k]
            with trusted_inputs():  # the respaced steps 0..S-1 are the sampler's own
                x0 = convert_prediction(eps, "eps", "x0", x, k_t, respaced, frame_dim=1)
                if clip_denoised is not None:
                    x0 = x0.clamp(-clip_denoised, clip_denoised)
                x = ddpm_step(x, x0, k_t, respaced, frame_dim=1, temperature=temperature, generator=generator)
        return x
