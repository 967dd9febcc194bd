"""NOVA temporal autoregression (§3.2) and Scaling-and-Shift (§3.3): block-causal mask, KV cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msc_core.testing import assert_frame_causal

from msc_ar.nova import NOVA, NovaConfig, block_causal_mask

GRID = (4, 4)  # tiny preset: 8x8 frames, 2x2 patches
L, TOKEN_DIM = 16, 12


@pytest.fixture(scope="module")
def model() -> NOVA:
    torch.manual_seed(0)
    model = NOVA(NovaConfig.tiny()).eval()
    # The Scaling-and-Shift MLP starts at zero (identity); give it weights so the
    # indicator features of later frames really depend on their temporal features.
    torch.nn.init.normal_(model.scale_shift.up.weight, std=0.3)
    torch.nn.init.normal_(model.scale_shift.up.bias, std=0.3)
    return model


def frames(batch: int = 2, num: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, num, L, TOKEN_DIM, generator=torch.Generator().manual_seed(seed))


def prefix(model: NOVA, captions=("a red square", "two digits"), motion=(1.0, 3.0)):
    return model.encode_conditions(len(captions), list(captions), motion=torch.tensor(motion))


def test_block_causal_mask_rule():
    query = torch.tensor([0, 0, 1, 2, 2])
    keys = torch.tensor([0, 0, 1, 2, 2])
    valid = torch.tensor([[True, False, True, True, True]])
    mask = block_causal_mask(query, keys, valid)[0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],  # prefix sees the prefix (minus padding)
            [1, 0, 0, 0, 0],
            [1, 0, 1, 0, 0],  # BOV sees prefix and itself
            [1, 0, 1, 1, 1],  # a frame sees everything before it and its own block
            [1, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_frame_features_never_see_later_frames(model):
    c, valid = prefix(model)
    x = frames()
    with torch.no_grad():
        # outputs at each frame's own slot (depend on frames <= f, incl. frame f itself)
        assert_frame_causal(lambda v: model.temporal_features(c, valid, v, GRID)[:, 1:], x, frame_dim=1)
        # indicator features after Scaling-and-Shift, same slots
        assert_frame_causal(
            lambda v: model.indicator_features(model.temporal_features(c, valid, v, GRID))[:, 1:],
            x,
            frame_dim=1,
            cut_points=[0, 1, 2, 3],
        )
        # the BOV slot (which predicts frame 0) sees no frame at all
        base = model.temporal_features(c, valid, x, GRID)[:, 0]
        assert torch.equal(model.temporal_features(c, valid, x + 1.0, GRID)[:, 0], base)


def test_tokens_of_one_frame_see_each_other(model):
    c, valid = prefix(model)
    x = frames()
    with torch.no_grad():
        base = model.temporal_features(c, valid, x, GRID)
        moved = x.clone()
        moved[:, 2, -1] += 1.0  # the last token of frame 2
        out = model.temporal_features(c, valid, moved, GRID)
    own_slot = 3  # frame 2 is fed at slot 3
    assert bool(((out[:, own_slot] - base[:, own_slot]).abs().amax(-1) > 1e-4).all())  # every token reacts


def test_text_and_motion_are_visible_to_every_frame(model):
    x = frames()
    with torch.no_grad():
        base = model.temporal_features(*prefix(model), x, GRID)
        other_text = model.temporal_features(*prefix(model, captions=("a blue circle", "two digits")), x, GRID)
        other_motion = model.temporal_features(*prefix(model, motion=(5.0, 3.0)), x, GRID)
    for changed in (other_text, other_motion):
        assert (changed[0, 0] - base[0, 0]).abs().max() > 1e-3  # BOV slot: predicts frame 0
        assert (changed[0, -1] - base[0, -1]).abs().max() > 1e-3  # last frame
        torch.testing.assert_close(changed[1], base[1])  # sample 1's conditions did not change


def test_text_padding_is_never_attended(model):
    x = frames(batch=1)
    with torch.no_grad():
        alone = model.temporal_features(*prefix(model, ("hi",), (1.0,)), x, GRID)
        padded = model.temporal_features(*prefix(model, ("hi", "a much longer caption"), (1.0, 1.0)), frames(2), GRID)
    torch.testing.assert_close(padded[:1], alone, rtol=1e-5, atol=1e-5)


def test_kv_cache_matches_the_full_forward(model):
    c, valid = prefix(model)
    x = frames(num=5)
    with torch.no_grad():
        full = model.temporal_features(c, valid, x, GRID)  # (B, 6, L, D)
        cache = model.temporal.new_cache()
        steps = [model.temporal_features(c, valid, None, GRID, cache=cache)]  # text fed once, with BOV
        text_keys = cache.num_tokens
        steps.append(model.temporal_features(None, None, x[:, :2], GRID, cache=cache, first_slot=1))  # a chunk
        for f in range(2, 5):
            steps.append(model.temporal_features(None, None, x[:, f : f + 1], GRID, cache=cache, first_slot=f + 1))
    cached = torch.cat(steps, dim=1)
    assert cache.num_tokens == text_keys + 5 * L
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


def test_cache_refuses_blocks_that_are_not_after_the_cached_ones(model):
    c, valid = prefix(model)
    x = frames(num=2)
    with torch.no_grad():
        cache = model.temporal.new_cache()
        model.temporal_features(c, valid, x, GRID, cache=cache)
        with pytest.raises(ValueError, match="must come after the cached blocks"):
            model.temporal_features(None, None, x[:, :1], GRID, cache=cache, first_slot=2)


def test_scale_shift_is_the_identity_on_the_anchor_for_frame_zero(model):
    c, valid = prefix(model)
    with torch.no_grad():
        features = model.temporal_features(c, valid, frames(num=3), GRID)  # (B, 4, L, D)
        indicator = model.indicator_features(features)
    anchor = F.layer_norm(features[:, 0], (features.shape[-1],), eps=1e-6)
    assert torch.equal(indicator[:, 0], anchor)  # gamma = 1, beta = 0 exactly, despite nonzero weights
    assert (indicator[:, 1] - anchor).abs().max() > 1e-2  # later frames are modulated
    # a shifted window (first frame index > 0) modulates its first slot too
    shifted = model.indicator_features(features, first_frame=4)
    assert (shifted[:, 0] - anchor).abs().max() > 1e-2


def test_scale_shift_starts_as_the_identity_for_every_frame():
    torch.manual_seed(0)
    fresh = NOVA(NovaConfig.tiny()).eval()
    c, valid = fresh.encode_conditions(1, ["x"])
    with torch.no_grad():
        features = fresh.temporal_features(c, valid, frames(batch=1, num=3), GRID)
        indicator = fresh.indicator_features(features)
    anchor = F.layer_norm(features[:, :1], (features.shape[-1],), eps=1e-6)
    assert torch.equal(indicator, anchor.expand_as(indicator))
