"""The paper options of MSC attention (light cone, anchored stride, key-aware gates) and
the one-branch variants: their masks follow the stated rules, every backend equals the
dense oracle (forward and gradients), streaming equals the full forward, frame causality
holds, and the FLOP counts match the masks.
"""

from __future__ import annotations

import pytest
import torch

from msc_core.attention import MSCAttention, MSCAttentionConfig, tiled
from msc_core.attention.masks import (
    high_res_mask,
    light_cone_windows,
    low_res_frame_mask,
    neighborhood_window_start,
)
from msc_core.config import ConfigError
from msc_core.flops import exact_flops_estimate, high_res_window_flops, msc_attention_flops
from msc_core.testing import assert_frame_causal

OPTIONS = {
    "light_cone": dict(light_cone_growth=1),
    "light_cone_g2": dict(light_cone_growth=2, temporal_window=3),
    "anchored": dict(stride_anchor="fixed"),
    "gate_keys": dict(gate_keys=True),
    "all_three": dict(light_cone_growth=1, stride_anchor="fixed", gate_keys=True),
    "high_res_only": dict(high_res_head_ratio=1.0),
    "low_res_only": dict(high_res_head_ratio=0.0),
}
# (T, H, W, window, v, r, d, tile): borders, windows outgrowing the frame, d > 1
CASES = [(6, 9, 7, 3, 3, 2, 2, 4), (5, 8, 8, 3, 2, 2, 3, 3)]


def build(case, options: dict, backend: str, seed: int = 0) -> MSCAttention:
    T, H, W, w, v, r, d, tile = case
    fields = dict(dim=32, num_heads=4, window=w, temporal_window=v, pool=r, temporal_stride=d, tile_size=tile,
                  noise_embed_dim=16, backend=backend)
    torch.manual_seed(seed)
    module = MSCAttention(MSCAttentionConfig(**{**fields, **options}))
    if module.gate is not None:
        torch.nn.init.normal_(module.gate.mlp[-1].weight, std=0.5)  # noise-dependent gates
    return module


def inputs(case, batch: int = 2, seed: int = 1):
    T, H, W = case[:3]
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, T, H, W, 32, generator=gen), torch.randint(0, 1000, (batch, T), generator=gen)


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("growth", [0, 1, 2])
def test_light_cone_mask_gives_each_frame_lag_its_own_natten_window(growth: int) -> None:
    T, H, W, w, v = 4, 9, 6, 3, 3
    mask = high_res_mask(T, T, H, W, w, v, growth=growth).reshape(T, H, W, T, H, W)
    windows = light_cone_windows(w, v, growth)
    assert windows == tuple(w + 2 * growth * lag for lag in range(v))
    for t in range(T):
        for s in range(T):
            lag = t - s
            for i in range(H):
                for j in range(W):
                    got = mask[t, i, j, s]
                    if not 0 <= lag < v:
                        assert not got.any()
                        continue
                    w_l = windows[lag]
                    r0, c0 = neighborhood_window_start(i, H, w_l), neighborhood_window_start(j, W, w_l)
                    want = torch.zeros(H, W, dtype=torch.bool)
                    want[r0 : r0 + min(w_l, H), c0 : c0 + min(w_l, W)] = True
                    assert torch.equal(got, want), (t, s, i, j)


def test_anchored_stride_sees_itself_and_the_fixed_anchors_before_it() -> None:
    Tq, Tk, d = 5, 9, 3
    mask = low_res_frame_mask(Tq, Tk, d, anchored=True)
    for qi in range(Tq):
        t = Tk - Tq + qi
        want = {t} | {a for a in range(0, t, d)}
        assert {s for s in range(Tk) if mask[qi, s]} == want
    # the relative stride, for contrast: frames t, t-d, ...
    relative = low_res_frame_mask(Tq, Tk, d)
    assert {s for s in range(Tk) if relative[-1, s]} == {8, 5, 2}


# ----------------------------------------------------------------------------- backends


def check_against_reference(case, options: dict, backend: str) -> None:
    reference, other = build(case, options, "reference"), build(case, options, backend)
    other.load_state_dict(reference.state_dict())
    x, noise = inputs(case)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    results = []
    for module in (reference, other):
        x_ = x.clone().requires_grad_(True)
        out = module(x_, noise)
        (out * grad_out).sum().backward()
        results.append((out.detach(), x_.grad, {n: p.grad for n, p in module.named_parameters()}))
    (out_ref, gx_ref, g_ref), (out, gx, g) = results
    assert (out - out_ref).abs().max().item() <= 1e-5
    assert (gx - gx_ref).abs().max().item() <= 1e-5
    for name in g_ref:
        assert (g[name] - g_ref[name]).abs().max().item() <= 1e-5, name


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("case", CASES, ids=["9x7", "8x8"])
def test_tiled_matches_the_reference_with_each_option(case, option: str) -> None:
    check_against_reference(case, OPTIONS[option], "tiled")


@pytest.mark.parametrize("option", ["light_cone", "light_cone_g2", "anchored"])
def test_tiled_graph_path_matches_the_reference(option: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gathered-halo path that CUDA without NATTEN, torch.compile and ONNX export run."""
    monkeypatch.setattr(tiled, "_tracing", lambda: True)
    case = CASES[0]
    reference, other = build(case, OPTIONS[option], "reference"), build(case, OPTIONS[option], "tiled")
    other.load_state_dict(reference.state_dict())
    x, noise = inputs(case)
    with torch.no_grad():
        assert (other(x, noise) - reference(x, noise)).abs().max().item() <= 1e-5


def test_options_change_the_output() -> None:
    """Each option is a different layer, not a renamed default (same weights where shared)."""
    case = CASES[0]
    x, noise = inputs(case)
    base = build(case, {}, "reference")
    with torch.no_grad():
        out = base(x, noise)
        for option in ("light_cone", "anchored"):
            other = build(case, OPTIONS[option], "reference")
            other.load_state_dict(base.state_dict())
            assert (other(x, noise) - out).abs().max().item() > 1e-3, option


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("backend", ["tiled", "reference"])
def test_streaming_with_cache_equals_full_forward(option: str, backend: str) -> None:
    case = CASES[1]
    module = build(case, OPTIONS[option], backend)
    x, noise = inputs(case)
    T = case[0]
    with torch.no_grad():
        full = module(x, noise)
        cache, outs, start = module.new_cache(), [], 0
        for size in (1, 2, 2):
            outs.append(module(x[:, start : start + size], noise[:, start : start + size], cache, update_cache=True))
            start += size
        assert cache.num_frames == T
        assert (torch.cat(outs, 1) - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("option", list(OPTIONS))
def test_output_never_depends_on_future_frames_or_future_noise(option: str) -> None:
    case = CASES[0]
    module = build(case, OPTIONS[option], "tiled")
    x, noise = inputs(case, batch=1)
    T = case[0]
    assert_frame_causal(lambda x_: module(x_, noise), x, frame_dim=1)
    with torch.no_grad():
        base = module(x, noise)
        for cut in (0, T // 2, T - 2):
            future = noise.clone()
            future[:, cut + 1 :] = torch.randint(0, 1000, (1, T - cut - 1))
            assert torch.equal(module(x, future)[:, : cut + 1], base[:, : cut + 1])


def test_key_aware_gates_see_the_noise_of_past_key_frames() -> None:
    """With gate_keys, a frame's output moves with the noise level of a past key frame beyond
    what that frame's K/V carry (they do not depend on noise): here only the gate can see it."""
    case = CASES[0]
    x, noise = inputs(case, batch=1)
    changed = noise.clone()
    changed[:, 1] = (noise[:, 1] + 500) % 1000
    for gate_keys, moves in ((True, True), (False, False)):
        module = build(case, {"gate_keys": gate_keys}, "tiled")
        with torch.no_grad():
            delta = (module(x, changed)[:, 2] - module(x, noise)[:, 2]).abs().max().item()
        assert (delta > 1e-4) == moves, (gate_keys, delta)


def test_key_aware_gates_start_as_the_plain_mix() -> None:
    """Zero-initialised last layer: weights exactly (1, 1) whatever the key frames' noise."""
    case = CASES[0]
    torch.manual_seed(0)
    module = MSCAttention(MSCAttentionConfig(dim=32, num_heads=4, window=3, temporal_window=3, pool=2,
                                             temporal_stride=2, noise_embed_dim=16, gate_keys=True))
    plain = MSCAttention(MSCAttentionConfig(dim=32, num_heads=4, window=3, temporal_window=3, pool=2,
                                            temporal_stride=2, noise_embed_dim=16))
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("gate.")}
    plain.load_state_dict({**plain.state_dict(), **state})
    x, noise = inputs(case)
    with torch.no_grad():
        assert torch.allclose(module(x, noise), plain(x, noise), atol=1e-6)


# ----------------------------------------------------------------------------- config


def test_one_branch_configs_have_no_gate_and_in_between_ratios_need_a_head_each() -> None:
    hi = MSCAttention(MSCAttentionConfig(dim=32, num_heads=4, high_res_head_ratio=1.0))
    lo = MSCAttention(MSCAttentionConfig(dim=32, num_heads=4, high_res_head_ratio=0.0))
    assert hi.low_res is None and hi.gate is None and hi.high_res.heads == 4
    assert lo.high_res is None and lo.gate is None and lo.low_res.heads == 4
    with pytest.raises(ConfigError, match=r"high_res_head_ratio=0.1 gives 0 of num_heads=4 .* 1.0 / 0.0"):
        MSCAttentionConfig.from_dict(dict(dim=32, num_heads=4, high_res_head_ratio=0.1))
    with pytest.raises(ConfigError, match="stride_anchor"):
        MSCAttentionConfig.from_dict(dict(dim=32, num_heads=4, stride_anchor="key"))


def test_explicit_natten_refuses_the_options_it_cannot_run() -> None:
    from msc_core.attention.natten_backend import natten_available

    if not natten_available():
        pytest.skip("NATTEN not installed (msc-core[natten]): explicit natten raises ImportError first")
    module = build(CASES[0], {"light_cone_growth": 1}, "natten")
    x, noise = inputs(CASES[0])
    with torch.no_grad(), pytest.raises(ValueError, match=r"light_cone_growth > 0 .* use backend='tiled'"):
        module(x, noise)


def test_transformer_config_passes_the_options_to_every_layer() -> None:
    from msc_core.transformer import MSCTransformerConfig

    cfg = MSCTransformerConfig(dim=32, depth=2, num_heads=4, window=3, light_cone_growth=1, stride_anchor="fixed",
                               gate_keys=True, high_res_head_ratio=0.5)
    for layer in range(2):
        attn = cfg.attention_config(layer)
        assert (attn.light_cone_growth, attn.stride_anchor, attn.gate_keys) == (1, "fixed", True)
    assert MSCTransformerConfig(dim=32, depth=1, num_heads=4, high_res_head_ratio=0.0).attention_config(0).single_branch


# ----------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("growth, anchor", [(1, "query"), (0, "fixed"), (2, "fixed")])
def test_flop_counts_follow_the_option_masks(growth: int, anchor: str) -> None:
    T, H, W, C, heads, w, v, r, d = 7, 9, 8, 32, 4, 3, 3, 2, 3
    est = exact_flops_estimate(1, T, H, W, C, heads, w, v, r, d, light_cone_growth=growth, stride_anchor=anchor)
    cfg = MSCAttentionConfig(dim=C, num_heads=heads, window=w, temporal_window=v, pool=r, temporal_stride=d,
                             light_cone_growth=growth, stride_anchor=anchor)
    c_hi = cfg.num_high_res_heads * cfg.head_dim
    P = -(-H // r) * -(-W // r)
    assert est["high_res_attention"] == 4 * c_hi * int(high_res_mask(T, T, H, W, w, v, growth=growth).sum())
    assert est["low_res_attention"] == 4 * (C - c_hi) * int(low_res_frame_mask(T, T, d, anchored=anchor == "fixed").sum()) * P * P
    assert est["high_res_attention"] == high_res_window_flops(cfg, 1, T, H, W)
    # what the tiled module runs: at least the exact count (halos), both branches present
    measured = msc_attention_flops(cfg, 1, T, H, W)
    assert measured["high_res_attention"] >= est["high_res_attention"]
    assert measured["low_res_attention"] >= est["low_res_attention"]


def test_one_branch_flops_count_only_that_branch() -> None:
    cfg = MSCAttentionConfig(dim=32, num_heads=4, window=3, temporal_window=2, high_res_head_ratio=1.0)
    flops = msc_attention_flops(cfg, 1, 4, 8, 8)
    assert flops["low_res_attention"] == flops["low_res_projection"] == flops["gate"] == 0
    assert flops["high_res_attention"] > 0
