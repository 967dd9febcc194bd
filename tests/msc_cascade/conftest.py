"""Shared tiny models for the cascade tests: a saved tiny CausalVAE3D and cascade builders."""

import pytest
import torch

from msc_cascade.cascade_model import CascadeConfig, CascadeModel
from msc_core.checkpoint import save_pretrained
from msc_core.testing import perturb_parameters
from msc_tokenizers import CausalVAE3D, CausalVAE3DConfig

TINY_DIT = dict(latent_channels=4, dim=32, depth=2, num_heads=2, window=2, chunk=2, timestep_frequency_dim=32)


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    """A tiny CausalVAE3D (4x temporal, 8x spatial, 4 latent channels), nudged off its init."""
    torch.manual_seed(0)
    vae = perturb_parameters(CausalVAE3D(CausalVAE3DConfig.preset("tiny")), seed=0, scale=0.02)
    directory = tmp_path_factory.mktemp("tiny_vae")
    save_pretrained(vae, directory)
    return directory


@pytest.fixture(scope="session")
def make_cascade(tiny_vae_dir):
    """`make_cascade(mode, **config)`: a tiny cascade whose DiT is nudged off its zero init."""

    def build(mode="sr", seed=1, **overrides):
        clip = dict(num_frames=5, height=64, width=64) if mode == "sr" else dict(num_frames=17, height=16, width=16)
        dit = {**TINY_DIT, **overrides.pop("dit", {})}
        config = CascadeConfig(mode=mode, dit=dit, vae_path=str(tiny_vae_dir), sample_steps=3, **{**clip, **overrides})
        torch.manual_seed(seed)
        model = CascadeModel(config)
        perturb_parameters(model.dit, seed=seed, scale=0.2)
        return model.eval()

    return build
