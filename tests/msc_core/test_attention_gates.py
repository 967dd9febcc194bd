"""Noise-gated mixing of the two MSC branches (paper §3.3, Fig. 5).

The gates start at exactly (1, 1) for every noise level, are learnable (the gate MLP
gets gradients), move with the noise level once trained (same tokens, different
timesteps -> different mix), and really decide how much each branch contributes.
"""

from __future__ import annotations

import torch

from msc_core.attention import MSCAttention, MSCAttentionConfig
from msc_core.diffusion import timestep_embedding


def build() -> MSCAttention:
    torch.manual_seed(0)
    return MSCAttention(
        MSCAttentionConfig(dim=32, num_heads=4, window=3, temporal_window=2, pool=2, temporal_stride=2,
                           tile_size=4, noise_embed_dim=16)
    )


def data(T: int = 4):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, T, 6, 6, 32, generator=gen), torch.randn(2, T, 6, 6, 32, generator=gen)


def test_gates_start_at_one_and_are_learnable_then_follow_the_noise_level() -> None:
    module = build()
    x, target = data()
    low, high = torch.zeros(2, 4), torch.full((2, 4), 999)
    torch.testing.assert_close(module.gate(low), torch.ones(2, 4, 2), rtol=0, atol=0)
    torch.testing.assert_close(module.gate(high), torch.ones(2, 4, 2), rtol=0, atol=0)

    noise = torch.randint(0, 1000, (2, 4), generator=torch.Generator().manual_seed(3))
    loss = (module(x, noise) - target).square().mean()
    loss.backward()
    gate_grads = [p.grad for p in module.gate.parameters() if p.grad is not None]
    assert gate_grads and any(g.abs().sum() > 0 for g in gate_grads)

    with torch.no_grad():
        for p in module.parameters():
            if p.grad is not None:
                p -= 1.0 * p.grad
        gates_low, gates_high = module.gate(low), module.gate(high)
        out_low, out_high = module(x, low), module(x, high)
    torch.testing.assert_close(gates_low.sum(-1), torch.full((2, 4), 2.0))  # relative weights
    assert (gates_low - gates_high).abs().max() > 1e-4
    assert (out_low - out_high).abs().max() > 1e-4  # same tokens, different timesteps, different mix


def test_gate_decides_each_branch_share() -> None:
    """Saturate the gate towards one branch: the other branch's weights stop mattering."""
    x, _ = data()
    noise = torch.randint(0, 1000, (2, 4), generator=torch.Generator().manual_seed(3))
    for keep, drop in (("high_res", "low_res"), ("low_res", "high_res")):
        module = build()
        with torch.no_grad():
            module.gate.mlp[-1].bias.copy_(torch.tensor([60.0, -60.0] if keep == "high_res" else [-60.0, 60.0]))
            before = module(x, noise)
            getattr(module, drop).qkv.weight.normal_()
            after_drop = module(x, noise)
            getattr(module, keep).qkv.weight.normal_()
            after_keep = module(x, noise)
        torch.testing.assert_close(after_drop, before, rtol=0, atol=1e-6)
        assert (after_keep - before).abs().max() > 1e-3


def test_precomputed_noise_embeddings_equal_timesteps() -> None:
    module = build()
    torch.nn.init.normal_(module.gate.mlp[-1].weight)
    x, _ = data()
    t = torch.randint(0, 1000, (2, 4), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        from_timesteps = module(x, t)
        from_embeddings = module(x, timestep_embedding(t, 16))
    assert torch.equal(from_timesteps, from_embeddings)
