"""3D PatchGAN discriminator for video tokenizers.

The PatchGAN of pix2pix / taming-transformers (VQGAN), made 3D so it also judges
temporal flicker: strided 3D convolutions give one real/fake logit per space-time patch.
AR-Diffusion §3.1 adds such an adversarial loss to sharpen its AR-VAE reconstructions;
the 3D VAE uses the same one. GroupNorm instead of BatchNorm keeps it independent of the
(small) batch size.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from msc_core.config import Config


class PatchDiscriminatorConfig(Config):
    channels: int = Field(default=32, gt=0, description="width of the first layer; doubles per layer")
    num_layers: int = Field(default=3, ge=1, description="strided layers; each halves H and W")
    max_channels: int = Field(default=256, gt=0)


class PatchDiscriminator3D(nn.Module):
    """`[B, 3, T, H, W]` video in `[-1, 1]` -> patch logits `[B, 1, T', H', W']`."""

    def __init__(self, config: PatchDiscriminatorConfig, in_channels: int = 3) -> None:
        super().__init__()
        self.config = config
        width = config.channels
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, width, kernel_size=(3, 4, 4), stride=(1, 2, 2), padding=1),
            nn.LeakyReLU(0.2),
        ]
        for _ in range(config.num_layers - 1):
            out = min(2 * width, config.max_channels)
            layers += [
                nn.Conv3d(width, out, kernel_size=(3, 4, 4), stride=2, padding=1, bias=False),
                nn.GroupNorm(math.gcd(32, out), out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        layers.append(nn.Conv3d(width, 1, kernel_size=3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5:
            raise ValueError(f"discriminator input must be [B, C, T, H, W], got shape {tuple(video.shape)}")
        return self.net(video)
