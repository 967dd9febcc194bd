"""ARVAE (AR-Diffusion §3.1): causal decoder, per-frame encoder, streaming, LatentSpec, losses, save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msc_core.checkpoint import from_pretrained, save_pretrained
from msc_core.interfaces import Tokenizer
from msc_core.testing import assert_frame_causal, assert_state_dicts_equal
from msc_tokenizers import ARVAE, ARVAEConfig
from msc_tokenizers.arvae import alibi_slopes, past_latent_bias
from msc_tokenizers.autoencoder_losses import AutoencoderLossConfig


def tiny_arvae(seed: int = 0, **overrides) -> ARVAE:
    torch.manual_seed(seed)
    return ARVAE(ARVAEConfig.preset("tiny", **overrides)).eval()


def video(frames: int, batch: int = 1, size: int = 16, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, size, size, generator=gen) * 2 - 1


def latents(model: ARVAE, frames: int, batch: int = 1, seed: int = 2) -> torch.Tensor:
    c = model.config
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, c.num_latent_tokens, c.latent_dim, generator=gen)


# -----------------------------------------------------------------------------
# causality


def test_decoder_is_frame_causal() -> None:
    """Decoded frame t depends on latents of frames <= t only (bit-identical past)."""
    model = tiny_arvae()
    assert_frame_causal(model.decode, latents(model, 6, batch=2), frame_dim=1, out_frame_dim=2,
                        cut_points=[0, 1, 2, 3, 4])


def test_decoder_uses_earlier_frames() -> None:
    """The causal links exist: changing frame 0's latents changes frame 3's pixels."""
    model = tiny_arvae()
    z = latents(model, 4)
    changed = z.clone()
    changed[:, 0] += 1.0
    with torch.no_grad():
        assert not torch.equal(model.decode(z)[:, :, 3], model.decode(changed)[:, :, 3])


def test_context_window_limits_the_past() -> None:
    """context_frames is per layer (like sliding-window attention): with context 1 and 2
    decoder layers, frame t ignores latents older than t - 2 (bit-identical)."""
    model = tiny_arvae(context_frames=1)
    assert model.config.decoder_depth == 2
    z = latents(model, 6)
    changed = z.clone()
    changed[:, :2] = torch.randn(changed[:, :2].shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        a, b = model.decode(z), model.decode(changed)
    assert torch.equal(a[:, :, 4:], b[:, :, 4:])  # frames 4, 5 reach back to frames >= 2
    assert not torch.equal(a[:, :, 3], b[:, :, 3])  # frame 3 reaches frame 1


def test_encoder_encodes_each_frame_alone() -> None:
    """Time-agnostic encoder: a frame's latents do not change when any other frame changes."""
    model = tiny_arvae()
    x = video(5)
    changed = x.clone()
    changed[:, :, [0, 1, 3, 4]] = video(4, seed=7)
    with torch.no_grad():
        assert torch.equal(model.encode(x)[:, 2], model.encode(changed)[:, 2])


def test_past_latent_bias_matches_definition() -> None:
    slopes = alibi_slopes(2)
    bias = past_latent_bias(num_query_frames=2, num_key_frames=4, tokens_per_frame=3, slopes=slopes, context_frames=2)
    assert bias.shape == (2, 2, 1, 12)
    for q, t in enumerate((2, 3)):  # absolute query frames
        for h in range(2):
            for j in range(4):
                lag = t - j
                expected = -slopes[h] * lag if 0 < lag <= 2 else float("-inf")
                assert torch.all(bias[q, h, 0, 3 * j:3 * j + 3] == expected)


# -----------------------------------------------------------------------------
# streaming == whole


@pytest.mark.parametrize("context", [None, 2])
def test_chunked_decode_matches_whole(context: int | None) -> None:
    model = tiny_arvae(context_frames=context)
    z = latents(model, 7, batch=2)
    with torch.no_grad():
        whole = model.decode(z)
        cache, parts = None, []
        for start, stop in [(0, 1), (1, 4), (4, 5), (5, 7)]:
            frames, cache = model.decode_chunk(z[:, start:stop], cache)
            parts.append(frames)
    assert (torch.cat(parts, dim=2) - whole).abs().max() <= 1e-5
    if context is not None:  # the cache keeps only the window
        assert cache[0].shape[2] == context * model.config.num_latent_tokens


# -----------------------------------------------------------------------------
# shapes and errors


@pytest.mark.parametrize("batch,frames", [(1, 1), (2, 5), (3, 9)])
def test_latent_spec_matches_encode(batch: int, frames: int) -> None:
    model = tiny_arvae()
    assert isinstance(model, Tokenizer)
    x = video(frames, batch=batch)
    with torch.no_grad():
        z = model.encode(x)
        assert tuple(z.shape) == model.latent_spec.latent_shape(batch, frames, 16, 16)
        assert model.decode(z).shape == x.shape
    assert model.latent_spec.layout == "tokens" and model.latent_spec.frame_dim == 1


def test_default_latents_are_32_tokens() -> None:
    spec = ARVAE(ARVAEConfig()).latent_spec
    assert spec.tokens_per_frame == 32 and 4 <= spec.channels <= 16


def test_bad_inputs_raise_value_errors() -> None:
    model = tiny_arvae()
    with pytest.raises(ValueError, match="does not match this ARVAE's frame_size 16x16"):
        model.encode(video(2, size=32))
    with pytest.raises(ValueError, match=r"latents must be \[B, T, L=4, D=4\]"):
        model.decode(torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="cache must hold 4 tensors"):
        model.decode_chunk(latents(model, 1), [torch.zeros(1)])
    with pytest.raises(ValueError, match="not divisible by patch size 4"):
        ARVAEConfig.preset("tiny", frame_size=(18, 16))


# -----------------------------------------------------------------------------
# losses and save/load


def test_tiny_overfit_reduces_reconstruction() -> None:
    """Smooth frames (bilinear 2x2 colour fields, which 4 tokens x 4 dims can hold)."""
    torch.manual_seed(0)
    model = tiny_arvae(losses=AutoencoderLossConfig(kl_weight=1e-4)).train()
    low = torch.rand(6, 3, 2, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    frames = F.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False)  # (B*T, 3, 16, 16)
    x = frames.view(2, 3, 3, 16, 16).transpose(1, 2).contiguous()  # (B, 3, T, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(100):
        losses = model.training_losses({"video": x})
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append(losses["l1"].item())
    assert history[-1] < 0.6 * history[0]


def test_save_load_round_trip_is_bit_exact(tmp_path) -> None:
    model = tiny_arvae(seed=3, context_frames=3)
    save_pretrained(model, tmp_path)
    assert '"kind": "arvae"' in (tmp_path / "config.json").read_text()
    loaded = from_pretrained(ARVAE, tmp_path)
    assert loaded.config == model.config
    assert_state_dicts_equal(model, loaded)
    x = video(4)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.encode(x))
        assert torch.equal(loaded(x), model(x))
