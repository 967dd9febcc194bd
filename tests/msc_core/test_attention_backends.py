"""Every MSC attention backend against the dense `reference` oracle, and causality.

Forward outputs and gradients (input and every parameter) must agree to 1e-5 in fp32
on configurations that hit the edge cases: window larger than the frame, frames not
divisible by the pool factor or the tile, v = 1, v > T, d = 1, d > T, windows at the
borders. Output at frame t must not depend on frames > t (inputs or noise levels).
"""

from __future__ import annotations

import sys

import pytest
import torch

from msc_core.attention import MSCAttention, MSCAttentionConfig, resolve_backend
from msc_core.attention import tiled
from msc_core.attention.natten_backend import natten_available
from msc_core.testing import assert_frame_causal

# (T, H, W, window, temporal_window v, pool r, temporal_stride d, tile)
CASES = [
    (5, 9, 7, 3, 2, 2, 2, 4),  # r does not divide 9 or 7, tiles do not divide the frame
    (4, 6, 6, 7, 1, 4, 1, 8),  # window > frame (clamped), v = 1, d = 1, r = 4 leaves 2-pixel cells
    (3, 5, 11, 5, 5, 3, 7, 3),  # v > T, d > T, wide frame
    (6, 8, 8, 3, 3, 2, 4, 4),  # everything divides
    (3, 3, 4, 1, 2, 1, 3, 2),  # w = 1 (each pixel sees itself), r = 1 (no pooling)
]
IDS = [f"T{c[0]}_{c[1]}x{c[2]}_w{c[3]}_v{c[4]}_r{c[5]}_d{c[6]}_tile{c[7]}" for c in CASES]
# NATTEN on CPU runs its unfused FlexAttention path: forward only, head_dim a multiple of 8
HAS_NATTEN = natten_available()
GRAD_BACKENDS = ["tiled"] + (["natten"] if HAS_NATTEN and torch.cuda.is_available() else [])
# NATTEN's CPU path builds a FlexAttention block mask per call (seconds): slow there
NATTEN_PARAM = pytest.param("natten", marks=[] if torch.cuda.is_available() else [pytest.mark.slow])
FORWARD_BACKENDS = ["tiled"] + ([NATTEN_PARAM] if HAS_NATTEN else [])
NO_NATTEN = "NATTEN not installed (optional extra msc-core[natten])"


def make_pair(case, backend: str, seed: int = 0) -> tuple[MSCAttention, MSCAttention]:
    """A reference module and a `backend` module with the same random weights (gates included)."""
    T, H, W, w, v, r, d, tile = case
    cfg = MSCAttentionConfig(
        dim=32, num_heads=4, window=w, temporal_window=v, pool=r, temporal_stride=d,
        tile_size=tile, noise_embed_dim=16, backend="reference",
    )
    torch.manual_seed(seed)
    reference = MSCAttention(cfg)
    torch.nn.init.normal_(reference.gate.mlp[-1].weight, std=0.5)  # noise-dependent gates
    other = MSCAttention(cfg.replace(backend=backend))
    other.load_state_dict(reference.state_dict())
    return reference, other


def inputs(case, batch: int = 2, seed: int = 1, device: str = "cpu"):
    T, H, W = case[:3]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, H, W, 32, generator=gen).to(device)
    noise = torch.randint(0, 1000, (batch, T), generator=gen).to(device)
    return x, noise


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backend_matches_reference_forward_and_gradients(case, backend: str) -> None:
    check_against_reference(case, backend)


@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=[IDS[0], IDS[3]])
def test_tiled_one_frame_per_call_matches_reference(case, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large inputs split the High-Res SDPA into chunks of frames (recomputed in backward)."""
    monkeypatch.setattr(tiled, "KEYS_PER_CALL", 1)
    check_against_reference(case, "tiled")


def check_against_reference(case, backend: str) -> None:
    device = "cuda" if backend == "natten" else "cpu"
    reference, other = make_pair(case, backend)
    reference, other = reference.to(device), other.to(device)
    x, noise = inputs(case, device=device)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(device)

    results = []
    for module in (reference, other):
        x_ = x.clone().requires_grad_(True)
        out = module(x_, noise)
        (out * grad_out).sum().backward()
        grads = {name: p.grad for name, p in module.named_parameters()}
        results.append((out.detach(), x_.grad, grads))

    (out_ref, gx_ref, g_ref), (out, gx, g) = results
    assert (out - out_ref).abs().max().item() <= 1e-5
    assert (gx - gx_ref).abs().max().item() <= 1e-5
    for name in g_ref:
        assert (g[name] - g_ref[name]).abs().max().item() <= 1e-5, name


@pytest.mark.skipif(not HAS_NATTEN, reason=NO_NATTEN)
@pytest.mark.slow  # NATTEN on CPU builds a FlexAttention block mask per call (seconds)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_natten_forward_matches_reference(case) -> None:
    """Runs wherever NATTEN imports (its CPU path has no backward; gradients are checked on CUDA)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reference, natten_module = make_pair(case, "natten")
    x, noise = inputs(case, device=device)
    with torch.no_grad():
        out_ref = reference.to(device)(x, noise)
        out = natten_module.to(device)(x, noise)
    assert (out - out_ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("backend", ["reference", *FORWARD_BACKENDS])
@pytest.mark.parametrize("case", CASES[:4], ids=IDS[:4])
def test_output_never_depends_on_future_frames(case, backend: str) -> None:
    _, module = make_pair(case, backend)
    x, noise = inputs(case, batch=1)
    T = case[0]
    assert_frame_causal(lambda x_: module(x_, noise), x, frame_dim=1)

    # future noise levels must not move past outputs either (gates are per frame)
    with torch.no_grad():
        base = module(x, noise)
        for cut in sorted({0, T // 2, T - 2}):
            noise_future = noise.clone()
            noise_future[:, cut + 1 :] = torch.randint(0, 1000, (1, T - cut - 1))
            assert torch.equal(module(x, noise_future)[:, : cut + 1], base[:, : cut + 1])


def test_auto_backend_is_tiled_on_cpu() -> None:
    assert resolve_backend("auto", torch.device("cpu"), has_past_frames=False) == "tiled"
    assert resolve_backend("natten", torch.device("cpu"), has_past_frames=True) == "tiled"


def test_natten_backend_without_natten_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "natten.functional", None)  # what a machine without NATTEN sees
    assert not natten_available()
    assert resolve_backend("auto", torch.device("cuda"), has_past_frames=False) == "tiled"
    _, module = make_pair(CASES[3], "natten")
    x, noise = inputs(CASES[3])
    with pytest.raises(ImportError, match=r"msc-core\[natten\]"):
        module(x, noise)


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"dim": 30, "num_heads": 4}, "divisible"),
        ({"window": 4}, "odd"),
        ({"num_heads": 4, "high_res_head_ratio": 0.1}, "each branch"),
        ({"backend": "flash"}, "backend"),
        ({"temporal_stride": 0}, "temporal_stride"),
    ],
)
def test_config_rejects_impossible_values(changes: dict, match: str) -> None:
    base = {"dim": 32, "num_heads": 4}
    with pytest.raises(ValueError, match=match):
        MSCAttentionConfig.from_dict({**base, **changes})


def test_bad_inputs_raise_value_errors_naming_sizes() -> None:
    module = MSCAttention(MSCAttentionConfig(dim=16, num_heads=2, pool=2, pad_mode="error", noise_embed_dim=8))
    x = torch.randn(1, 3, 6, 6, 16)
    noise = torch.zeros(1, 3)
    with pytest.raises(ValueError, match=r"C=16"):
        module(torch.randn(1, 3, 6, 6, 8), noise)
    with pytest.raises(ValueError, match="at least one frame"):
        module(torch.randn(1, 0, 6, 6, 16), torch.zeros(1, 0))
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        module(x, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="noise_embed_dim=8"):
        module(x, torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="5x6 is not divisible by pool=2"):
        module(torch.randn(1, 3, 5, 6, 16), noise)
    with pytest.raises(ValueError, match="needs a cache"):
        module(x, noise, update_cache=True)
