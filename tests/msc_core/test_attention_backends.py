"""Every MSC attention backend against the dense `reference` oracle, and causality.

Forward outputs and gradients (input and every parameter) must agree to 1e-5 in fp32
on configurations that hit the edge cases: window larger than the frame, frames not
divisible by the pool factor or the tile, v = 1, v > T, d = 1, d > T, windows at the
borders. Output at frame t must not depend on frames > t (inputs or noise levels).
"""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from msc_core.attention import MSCAttention, MSCAttentionConfig, resolve_backend
from msc_core.attention import msc_attention, natten_backend, tiled
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


def test_auto_backend_is_tiled_on_cpu_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="msc_core.attention"):
        assert resolve_backend("auto", torch.device("cpu"), has_past_frames=False) == "tiled"
        assert resolve_backend("auto", torch.device("cpu"), has_past_frames=True) == "tiled"
    assert not caplog.records  # tiled is the CPU design, not a fallback


@pytest.fixture
def without_natten(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a machine without NATTEN sees: the import fails (and is tried again once)."""
    monkeypatch.setitem(sys.modules, "natten.functional", None)
    monkeypatch.setattr(natten_backend, "_NATTEN", {})
    monkeypatch.setattr(msc_attention, "_WARNED", set())


def test_auto_on_cuda_without_natten_warns_once_naming_the_reason(
    without_natten, caplog: pytest.LogCaptureFixture
) -> None:
    assert not natten_available()
    with caplog.at_level(logging.WARNING, logger="msc_core.attention"):
        for _ in range(3):
            assert resolve_backend("auto", torch.device("cuda"), has_past_frames=False) == "tiled"
    assert len(caplog.records) == 1
    assert "NATTEN does not import (ModuleNotFoundError: import of natten.functional" in caplog.records[0].getMessage()


def test_natten_is_imported_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    monkeypatch.setattr(natten_backend, "_NATTEN", {})
    tries = []
    real_import = builtins.__import__

    def counting_import(name, *args, **kwargs):
        if name.startswith("natten"):
            tries.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", counting_import)
    for _ in range(5):
        natten_available()
        resolve_backend("auto", torch.device("cuda"))
    assert len(tries) == 1


def test_explicit_natten_without_natten_raises_naming_the_extra(without_natten) -> None:
    _, module = make_pair(CASES[3], "natten")
    x, noise = inputs(CASES[3])
    with pytest.raises(ImportError, match=r"does not import here \(ModuleNotFoundError.*msc-core\[natten\]"):
        module(x, noise)
    with pytest.raises(ImportError, match=r"does not import here \(ModuleNotFoundError"):
        resolve_backend("natten", torch.device("cuda"))  # names the reason too


@pytest.mark.skipif(not HAS_NATTEN, reason=NO_NATTEN)
def test_explicit_natten_training_on_cpu_raises() -> None:
    _, module = make_pair(CASES[3], "natten")
    x, noise = inputs(CASES[3])
    with pytest.raises(RuntimeError, match="forward-only.*backend='tiled'"):
        module(x.requires_grad_(True), noise)


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


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.bfloat16, 5e-2)])
def test_tiled_matches_reference_in_float64_and_bf16(dtype, tol) -> None:
    """The CPU split-by-key-frame path keeps its log-sum-exp in float64 for float64 inputs
    (reference copies) and float32 otherwise; bf16 is judged relative to the output scale."""
    case = CASES[0]
    reference, tiled_module = make_pair(case, "tiled")
    reference, tiled_module = reference.to(dtype), tiled_module.to(dtype)
    x, noise = inputs(case)
    grads = []
    for module in (reference, tiled_module):
        x_ = x.to(dtype).requires_grad_(True)
        out = module(x_, noise)
        out.float().square().sum().backward()
        grads.append((out.detach().float(), x_.grad.float()))
    (out_ref, gx_ref), (out, gx) = grads
    assert ((out - out_ref).abs().max() / out_ref.abs().max()).item() <= tol
    assert ((gx - gx_ref).abs().max() / gx_ref.abs().max()).item() <= tol
