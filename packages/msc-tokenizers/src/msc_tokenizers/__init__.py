"""msc-tokenizers: video <-> latents for msc generators.

- `CausalVAE3D` (`kind="vae3d"`): causal 3D convolutional VAE, grid latents
  `[B, C, T', H/8, W/8]` with 4x temporal compression, chunked (streaming) and tiled
  encode/decode.
- `ARVAE` (`kind="arvae"`): AR-Diffusion's 1D tokenizer, token latents `[B, T, L, D]`
  with a temporally causal decoder.

Both satisfy `msc_core.interfaces.Tokenizer`, save/load with
`msc_core.checkpoint.save_pretrained` / `from_pretrained`, and return named training
losses from `training_losses(batch)`.
"""

from msc_core.lazy_exports import distribution_version

__version__ = distribution_version("msc-tokenizers")

from msc_tokenizers.arvae import ARVAE, ARVAEConfig
from msc_tokenizers.autoencoder_losses import AutoencoderLoss, AutoencoderLossConfig
from msc_tokenizers.causal_vae3d import CausalVAE3D, CausalVAE3DConfig
from msc_tokenizers.patch_discriminator import PatchDiscriminator3D, PatchDiscriminatorConfig

__all__ = [
    "ARVAE",
    "ARVAEConfig",
    "AutoencoderLoss",
    "AutoencoderLossConfig",
    "CausalVAE3D",
    "CausalVAE3DConfig",
    "PatchDiscriminator3D",
    "PatchDiscriminatorConfig",
]
