"""msc-ar: autoregressive video generators on msc latents.

- `msc_ar.ardiffusion`: AR-Diffusion (asynchronous diffusion with non-decreasing
  per-frame timesteps): FoPP and other training timestep samplers, the AD inference
  scheduler, and the model.
- `msc_ar.nova`: NOVA (temporal frame-by-frame and spatial set-by-set autoregression
  with a per-token diffusion head).
"""

from msc_core.lazy_exports import distribution_version

__version__ = distribution_version("msc-ar")
