"""MSCTransformer: frame causality, per-frame conditioning, KV-cache streaming, save/load."""

from __future__ import annotations

import pytest
import torch

from msc_core.attention import MSCKVCache
from msc_core.checkpoint import from_pretrained, save_pretrained
from msc_core.config import ConfigError
from msc_core.frame_causal_attention import (
    FrameCausalAttention,
    FrameCausalAttentionConfig,
    FrameCausalKVCache,
)
from msc_core.testing import (
    assert_frame_causal,
    assert_state_dicts_equal,
    assert_timestep_causal,
    perturb_parameters,
)
from msc_core.transformer import (
    MSCTransformer,
    MSCTransformerConfig,
    geometric_pool_schedule,
    patchify,
    unpatchify,
)

ATTENTIONS = ["msc", "dense"]


def make_model(seed: int = 0, **overrides) -> MSCTransformer:
    torch.manual_seed(seed)
    model = MSCTransformer(MSCTransformerConfig.preset("tiny", **overrides))
    return perturb_parameters(model, seed + 1).eval()  # a fresh adaLN-Zero model outputs 0


def make_inputs(seed: int = 0, frames: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, frames, 8, 8, generator=gen)  # (B, C, T, H, W)
    t = torch.randint(0, 1000, (2, frames), generator=gen)  # (B, T)
    return x, t


# -----------------------------------------------------------------------------
# causality and per-frame conditioning


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_future_frames_do_not_change_past_outputs(attention: str, norm: str) -> None:
    model = make_model(attention=attention, norm=norm)
    x, t = make_inputs()
    assert_frame_causal(lambda v: model(v, t), x, frame_dim=2, cut_points=[0, 2, 3, 4])


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_timestep_of_frame_k_conditions_only_frames_from_k(attention: str, norm: str) -> None:
    model = make_model(attention=attention, norm=norm)
    x, t = make_inputs()
    assert_timestep_causal(lambda s: model(x, s), t, out_frame_dim=2)


def test_float_timesteps_match_integer_timesteps() -> None:
    model = make_model()
    x, t = make_inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t.float()))


def test_global_condition_reaches_every_frame_of_its_own_sample_only() -> None:
    model = make_model(cond_dim=8)
    x, t = make_inputs()
    cond = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    changed = cond.clone()
    changed[0] += 1.0
    with torch.no_grad():
        base, out = model(x, t, cond), model(x, t, changed)
    assert torch.equal(out[1], base[1])
    per_frame_change = (out[0] - base[0]).abs().amax(dim=(0, 2, 3))  # (T,)
    assert bool((per_frame_change > 0).all())


def test_dense_frame_causal_attention_equals_unmasked_attention_over_the_prefix() -> None:
    """Oracle: frame t's output is plain softmax attention over all tokens of frames 0..t."""
    torch.manual_seed(0)
    attn = FrameCausalAttention(FrameCausalAttentionConfig(dim=16, num_heads=2)).eval()
    x = torch.randn(2, 4, 3, 3, 16)  # (B, T, H, W, C)
    with torch.no_grad():
        out = attn(x)
        B, T, H, W, C = x.shape
        q, k, v = attn.qkv(x).reshape(B, T * H * W, 3, 2, 8).permute(2, 0, 3, 1, 4)  # (B, h, N, D)
        for frame in range(T):
            rows, seen = slice(frame * H * W, (frame + 1) * H * W), (frame + 1) * H * W
            weights = torch.softmax(q[:, :, rows] @ k[:, :, :seen].transpose(-1, -2) / 8**0.5, dim=-1)
            expected = attn.proj((weights @ v[:, :, :seen]).transpose(1, 2).reshape(B, H, W, C))
            torch.testing.assert_close(out[:, frame], expected, atol=1e-5, rtol=0)


# -----------------------------------------------------------------------------
# KV cache


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("chunks", [[1, 1, 1, 1, 1, 1], [2, 1, 3]])
def test_streaming_with_cache_equals_full_forward(attention: str, chunks: list[int]) -> None:
    model = make_model(attention=attention)
    x, t = make_inputs()
    cache = model.new_cache()
    outs, start = [], 0
    with torch.no_grad():
        full = model(x, t)
        for n in chunks:
            outs.append(model(x[:, :, start : start + n], t[:, start : start + n], cache=cache, update_cache=True))
            start += n
    assert all(layer.num_frames == 6 for layer in cache)
    torch.testing.assert_close(torch.cat(outs, dim=2), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_denoising_against_cache_then_committing_the_clean_frame(attention: str) -> None:
    """The AR sampling pattern: query frame n several times, then cache its clean version."""
    model = make_model(attention=attention)
    x, t = make_inputs(frames=4)
    clean_t = torch.zeros_like(t)
    cache = model.new_cache()
    with torch.no_grad():
        model(x[:, :, :3], clean_t[:, :3], cache=cache, update_cache=True)
        noisy = torch.randn(2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
        first = model(noisy, t[:, 3:], cache=cache)
        again = model(noisy, t[:, 3:], cache=cache)  # a query without update leaves the cache as it was
        reference = model(torch.cat([x[:, :, :3], noisy], dim=2), torch.cat([clean_t[:, :3], t[:, 3:]], dim=1))
    assert torch.equal(first, again)
    assert all(layer.num_frames == 3 for layer in cache)
    torch.testing.assert_close(first, reference[:, :, 3:], atol=1e-5, rtol=0)


def test_new_cache_matches_attention_kind() -> None:
    assert all(isinstance(c, MSCKVCache) for c in make_model(attention="msc").new_cache())
    assert all(isinstance(c, FrameCausalKVCache) for c in make_model(attention="dense").new_cache())


def test_frame_offset_defaults_to_cached_frames_and_moves_the_frame_embedding() -> None:
    model = make_model()
    x, t = make_inputs(frames=2)
    with torch.no_grad():
        at_zero, at_zero_explicit = model(x, t), model(x, t, frame_offset=0)
        at_five = model(x, t, frame_offset=5)
    assert torch.equal(at_zero, at_zero_explicit)
    assert not torch.allclose(at_zero, at_five)


# -----------------------------------------------------------------------------
# training features and checkpoints


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_gradient_checkpointing_gives_the_same_gradients(attention: str) -> None:
    plain = make_model(attention=attention).train()
    ckpt = MSCTransformer(plain.config.replace(gradient_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x, t = make_inputs()
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        model(x, t).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_save_pretrained_round_trip_is_bit_exact(attention: str, tmp_path) -> None:
    model = make_model(attention=attention, cond_dim=8, pool_schedule=(1, 2), max_pool=None)
    x, t = make_inputs()
    cond = torch.randn(2, 8)
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(MSCTransformer, tmp_path)
    assert loaded.config == model.config
    assert_state_dicts_equal(loaded, model)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, cond), model(x, t, cond))


def test_fresh_model_is_adaln_zero_and_keeps_msc_gates_at_an_even_mix() -> None:
    torch.manual_seed(0)
    model = MSCTransformer(MSCTransformerConfig.preset("tiny"))
    x, t = make_inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t), torch.zeros_like(x))  # DiT: zero output layer
        for blk in model.blocks:
            assert torch.equal(blk.attn.gate(t.float()), torch.ones(2, 6, 2))  # gates start at (1, 1)


# -----------------------------------------------------------------------------
# config, pool schedule, patchify, input errors


def test_geometric_pool_schedule_grows_with_depth() -> None:
    assert geometric_pool_schedule(6, 2, 4) == [2, 2, 2, 4, 4, 4]
    assert geometric_pool_schedule(4, 1, 4) == [1, 2, 2, 4]
    assert geometric_pool_schedule(2, 2, 8) == [2, 8]
    assert geometric_pool_schedule(3, 2, 2) == [2, 2, 2]
    with pytest.raises(ValueError, match="power of 2"):
        geometric_pool_schedule(4, 2, 6)


def test_layers_get_the_pool_of_their_depth() -> None:
    model = MSCTransformer(MSCTransformerConfig.preset("tiny", depth=4, pool=1, max_pool=4))
    assert [blk.attn.config.pool for blk in model.blocks] == [1, 2, 2, 4]
    explicit = MSCTransformer(MSCTransformerConfig.preset("tiny", max_pool=None, pool_schedule=(4, 1)))
    assert [blk.attn.config.pool for blk in explicit.blocks] == [4, 1]
    with pytest.raises(ConfigError, match="pool_schedule"):
        MSCTransformerConfig.preset("tiny", max_pool=None, pool_schedule=(2, 2, 2))


def test_presets_and_their_errors() -> None:
    demo = MSCTransformerConfig.preset("demo")
    assert demo.layer_pools() == [2, 2, 2, 4, 4, 4]
    assert MSCTransformerConfig.preset("tiny", depth=3).depth == 3
    with pytest.raises(ValueError, match="valid: tiny, demo"):
        MSCTransformerConfig.preset("huge")
    with pytest.raises(ConfigError, match="window"):
        MSCTransformerConfig.preset("tiny", window=4)  # MSC windows are centred, so odd


def test_patchify_unpatchify_round_trip() -> None:
    x = torch.randn(2, 3, 4, 8, 12)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 4, 2, 3, 48)
    assert torch.equal(tokens[0, 1, 1, 2], x[0, :, 1, 4:8, 8:12].permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(tokens, 4, 3), x)


def test_bad_inputs_raise_value_errors_naming_the_problem() -> None:
    model = make_model()
    x, t = make_inputs()
    with pytest.raises(ValueError, match="height=9 is not divisible by patch size 2"):
        model(torch.randn(2, 4, 6, 9, 8), t)
    with pytest.raises(ValueError, match=r"C=4"):
        model(torch.randn(2, 3, 6, 8, 8), t)
    with pytest.raises(ValueError, match=r"\(B, T\)=\(2, 6\)"):
        model(x, t[:, :5])
    with pytest.raises(ValueError, match="cond_dim=None"):
        model(x, t, torch.randn(2, 8))
    with pytest.raises(ValueError, match="depth=2"):
        model(x, t, cache=model.new_cache()[:1])
    with pytest.raises(ValueError, match="needs a cache"):
        model(x, t, update_cache=True)
