"""CausalVAE3D: causality, chunked == whole, tiling, frame rule, losses, save/load, LatentSpec."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from msc_core.checkpoint import from_pretrained, save_pretrained
from msc_core.interfaces import Tokenizer
from msc_core.testing import assert_state_dicts_equal
from msc_tokenizers import CausalVAE3D, CausalVAE3DConfig
from msc_tokenizers.autoencoder_losses import AutoencoderLossConfig, diagonal_gaussian_kl


def tiny_vae(seed: int = 0, **overrides) -> CausalVAE3D:
    torch.manual_seed(seed)
    return CausalVAE3D(CausalVAE3DConfig.preset("tiny", **overrides)).eval()


def video(frames: int, height: int = 16, width: int = 16, batch: int = 1, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=gen) * 2 - 1


def assert_compressed_causal(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    in_dim: int,
    out_dim: int,
    visible_outputs: Callable[[int], int],
) -> None:
    """For every cut, perturb input frames > cut: the first `visible_outputs(cut)` output
    frames must stay bit-identical and the next output frame must change."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        base = fn(x)
        for cut in range(x.shape[in_dim] - 1):
            perturbed = x.clone()
            tail = perturbed.narrow(in_dim, cut + 1, x.shape[in_dim] - cut - 1)
            tail.copy_(torch.rand(tail.shape, generator=gen) * 2 - 1)  # a valid [-1, 1] video (encoder input)
            out = fn(perturbed)
            keep = visible_outputs(cut)
            assert torch.equal(out.narrow(out_dim, 0, keep), base.narrow(out_dim, 0, keep)), (
                f"outputs < {keep} changed when inputs > {cut} changed"
            )
            if keep < out.shape[out_dim]:
                assert not torch.equal(out.narrow(out_dim, keep, 1), base.narrow(out_dim, keep, 1)), (
                    f"output {keep} ignored its inputs: vacuous"
                )


# -----------------------------------------------------------------------------
# causality


@pytest.mark.parametrize("norm", ["rms", "group"])
def test_encoder_is_causal(norm: str) -> None:
    """Latent frame j sees frames <= 4j only: frame 0 alone, then groups of 4."""
    vae = tiny_vae(norm=norm)
    x = video(13)
    assert_compressed_causal(vae.encode, x, in_dim=2, out_dim=2, visible_outputs=lambda cut: cut // 4 + 1)


@pytest.mark.parametrize("norm", ["rms", "group"])
def test_decoder_is_causal(norm: str) -> None:
    """Frames of latent group j (1 + 4j frames so far) see latent frames <= j only."""
    vae = tiny_vae(norm=norm)
    z = torch.randn(1, 4, 4, 2, 2, generator=torch.Generator().manual_seed(2))
    assert_compressed_causal(vae.decode, z, in_dim=2, out_dim=2, visible_outputs=lambda cut: 1 + 4 * cut)


# -----------------------------------------------------------------------------
# chunked (streaming) == whole


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_encode_and_decode_match_whole(chunk: int) -> None:
    vae = tiny_vae()
    x = video(21, 16, 24, batch=2)
    with torch.no_grad():
        z = vae.encode(x)
        assert (vae.encode_chunked(x, chunk) - z).abs().max() <= 1e-5
        assert (vae.decode_chunked(z, chunk) - vae.decode(z)).abs().max() <= 1e-5


def test_decode_step_with_explicit_zero_cache_is_the_clip_start() -> None:
    """The exporter's path: `init_decode_cache` + `decode_step`, dropping tc-1 leading frames."""
    vae = tiny_vae()
    z = torch.randn(1, 4, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cache = vae.init_decode_cache(z)
        assert all(torch.count_nonzero(state) == 0 for state in cache)
        frames = []
        for t in range(3):
            out, cache = vae.decode_step(z[:, :, t:t + 1], cache)
            frames.append(out)
        streamed = torch.cat(frames, dim=2)[:, :, 3:]
        assert (streamed - vae.decode(z)).abs().max() <= 1e-5


def test_chunk_errors_name_the_valid_lengths() -> None:
    vae = tiny_vae()
    _, cache = vae.encode_chunk(video(5))
    with pytest.raises(ValueError, match="multiple of 4 frames, got 3; nearest valid: 4$"):
        vae.encode_chunk(video(3), cache)
    with pytest.raises(ValueError, match="got 6; nearest valid: 4 or 8"):
        vae.encode_chunk(video(6), cache)
    with pytest.raises(ValueError, match="cache state 0 has shape"):
        vae.encode_chunk(video(4, 32, 32), cache)


# -----------------------------------------------------------------------------
# tiling


def test_tiled_decode_close_to_untiled() -> None:
    """Stated tolerance for a RANDOM tiny model (no spatial locality learnt, so a worst
    case; bench/tokenizers.py reports the trained model): 128x128 frames, 64-px tiles,
    32-px overlap: mean abs error < 0.3 x the output's std. The error shrinks as the
    overlap grows, and a frame no larger than a tile is decoded bit-identically."""
    vae = tiny_vae()
    z = vae.encode(video(5, 128, 128))
    errors = []
    with torch.no_grad():
        full = vae.decode(z)
        for overlap in (0, 16, 32):
            vae.enable_tiling(tile_size=64, tile_overlap=overlap)
            tiled = vae.decode(z)
            assert tiled.shape == full.shape
            errors.append((tiled - full).abs().mean().item())
        vae.enable_tiling(tile_size=128, tile_overlap=32)
        single = vae.decode(z)
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.3 * full.std().item()
    assert torch.equal(single, full)


def test_tiled_encode_close_to_untiled() -> None:
    vae = tiny_vae()
    x = video(5, 128, 128)
    with torch.no_grad():
        full = vae.encode(x)
        vae.enable_tiling(tile_size=64, tile_overlap=32)
        tiled = vae.encode(x)
    assert tiled.shape == full.shape
    assert (tiled - full).abs().mean() < 0.3 * full.std()


def test_enable_tiling_rejects_unaligned_tiles() -> None:
    with pytest.raises(ValueError, match="multiples of the spatial compression 8"):
        tiny_vae().enable_tiling(tile_size=60, tile_overlap=16)


# -----------------------------------------------------------------------------
# frame rule and latent spec


def test_frame_count_rule_error_gives_nearest_lengths() -> None:
    vae = tiny_vae()
    with pytest.raises(ValueError, match="nearest valid lengths: 13 or 17"):
        vae.encode(video(16))
    with pytest.raises(ValueError, match="not divisible by the spatial compression 8"):
        vae.encode(video(5, 20, 16))
    with pytest.raises(ValueError, match=r"latents must be \[B, 4, T', h, w\]"):
        vae.decode(torch.zeros(1, 3, 2, 2, 2))


@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (2, 5, 16, 24), (1, 17, 32, 16)])
def test_latent_spec_matches_encode_and_decode(shape: tuple[int, int, int, int]) -> None:
    vae = tiny_vae()
    assert isinstance(vae, Tokenizer)
    b, t, h, w = shape
    x = video(t, h, w, batch=b)
    with torch.no_grad():
        z = vae.encode(x)
        assert tuple(z.shape) == vae.latent_spec.latent_shape(b, t, h, w)
        assert vae.decode(z).shape == x.shape
    assert vae.latent_spec.pixel_frames(z.shape[2]) == t


def test_default_config_is_4x8x8_with_16_channels() -> None:
    spec = CausalVAE3D(CausalVAE3DConfig()).latent_spec
    assert (spec.temporal_compression, spec.spatial_compression, spec.channels) == (4, 8, 16)
    assert spec.layout == "grid" and spec.causal_first_frame


def test_config_rejects_inconsistent_compression() -> None:
    with pytest.raises(ValueError, match="use patch_size=2"):
        CausalVAE3DConfig(spatial_compression=8, patch_size=4, channels=(32, 64, 128))
    with pytest.raises(ValueError, match="unknown CausalVAE3D preset 'huge'"):
        CausalVAE3DConfig.preset("huge")


# -----------------------------------------------------------------------------
# losses


def test_training_losses_total_is_the_weighted_sum() -> None:
    vae = tiny_vae(losses=AutoencoderLossConfig(l1_weight=1.0, l2_weight=0.5, ssim_weight=0.2, kl_weight=1e-3))
    torch.manual_seed(0)
    out = vae.training_losses({"video": video(5)})
    expected = out["l1"] + 0.5 * out["l2"] + 0.2 * (1 - out["ssim"]) + 1e-3 * out["kl"]
    torch.testing.assert_close(out["loss"].detach(), expected)
    with pytest.raises(ValueError, match="batch must hold 'video'"):
        vae.training_losses({"frames": video(5)})


def overfit(model: torch.nn.Module, x: torch.Tensor, steps: int, lr: float = 3e-3) -> list[dict[str, float]]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        losses = model.training_losses({"video": x})
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    return history


def test_tiny_overfit_reduces_reconstruction_then_kl() -> None:
    """Phase 1 (KL weight 1e-4): reconstruction falls while the latents spread out (KL
    grows). Phase 2 (KL weight 0.05): the KL falls again."""
    torch.manual_seed(0)
    vae = tiny_vae(losses=AutoencoderLossConfig(kl_weight=1e-4)).train()
    x = video(5, 16, 16, batch=2)
    phase1 = overfit(vae, x, 60)
    assert phase1[-1]["l1"] < 0.3 * phase1[0]["l1"]
    vae.loss.config = vae.loss.config.replace(kl_weight=0.05)
    phase2 = overfit(vae, x, 40)
    assert phase2[-1]["kl"] < 0.3 * phase2[0]["kl"]
    assert phase2[-1]["l1"] < phase1[0]["l1"]


def test_kl_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    posterior = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    reference = torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(diagonal_gaussian_kl(mean, logvar), reference.flatten(1).sum(1).mean())


# -----------------------------------------------------------------------------
# save / load


def test_save_load_round_trip_is_bit_exact(tmp_path) -> None:
    vae = tiny_vae(seed=5, norm="group")
    save_pretrained(vae, tmp_path)
    assert '"kind": "vae3d"' in (tmp_path / "config.json").read_text()
    loaded = from_pretrained(CausalVAE3D, tmp_path)
    assert loaded.config == vae.config
    assert_state_dicts_equal(vae, loaded)
    x = video(9)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), vae.encode(x))
        assert torch.equal(loaded(x), vae(x))
