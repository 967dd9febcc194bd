"""Grid 3D attention equals dense attention restricted to the same groups."""

import pytest
import torch
import torch.nn.functional as F

from msc_cascade.grid_attention import GRID_KINDS, GridAttention3D, grid_group_ids


def dense_grouped_reference(attn: GridAttention3D, x: torch.Tensor, kind: str) -> torch.Tensor:
    """All tokens in one sequence; a boolean mask allows only same-group pairs."""
    B, T, H, W, C = x.shape
    ids = grid_group_ids(T, H, W, kind, attn.window, attn.chunk, attn.partitions)
    mask = ids[:, None] == ids[None, :]
    seq = x.reshape(B, T * H * W, C)
    q, k, v = attn.qkv(seq).reshape(B, -1, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, -1, C)
    return attn.proj(out).reshape(B, T, H, W, C)


@pytest.mark.parametrize("kind", GRID_KINDS)
@pytest.mark.parametrize("shape,window,chunk", [
    ((2, 4, 8, 8), 4, 2),   # divides
    ((1, 5, 6, 7), 4, 2),   # nothing divides: padding + key masks
    ((2, 3, 4, 4), 8, 8),   # groups larger than the volume are clamped
])
def test_matches_dense_reference_forward_and_backward(kind, shape, window, chunk):
    torch.manual_seed(0)
    B, T, H, W = shape
    attn = GridAttention3D(dim=32, num_heads=4, window=window, chunk=chunk)
    x = torch.randn(B, T, H, W, 32, requires_grad=True)
    out = attn(x, kind)
    ref = dense_grouped_reference(attn, x, kind)
    assert (out - ref).abs().max().item() <= 1e-5
    g = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, attn.qkv.weight), g)
    rx, rw = torch.autograd.grad(ref, (x, attn.qkv.weight), g)
    assert (gx - rx).abs().max().item() <= 1e-5 and (gw - rw).abs().max().item() <= 1e-4


def test_groups_isolate_tokens():
    # a spatial layer never mixes spatial windows; a temporal layer never mixes chunks
    torch.manual_seed(1)
    attn = GridAttention3D(dim=16, num_heads=2, window=2, chunk=2)
    x = torch.randn(1, 4, 4, 4, 16)
    x2 = x.clone()
    x2[:, :, 2:, 2:] += 1.0  # change one spatial window, all frames
    out, out2 = attn(x, "spatial"), attn(x2, "spatial")
    changed = (out - out2).abs().amax(dim=(0, 1, 4)) > 0  # (H, W)
    assert changed[2:, 2:].all() and not changed[:2].any() and not changed[:, :2].any()
    x3 = x.clone()
    x3[:, 2:] += 1.0  # change the second frame chunk
    diff = (attn(x, "temporal") - attn(x3, "temporal")).abs().amax(dim=(0, 2, 3, 4))
    assert bool((diff[:2] == 0).all()) and bool((diff[2:] > 0).all())


def test_bad_input_is_named():
    attn = GridAttention3D(dim=16, num_heads=2)
    with pytest.raises(ValueError, match="unknown grid attention kind 'diagonal'"):
        attn(torch.randn(1, 2, 4, 4, 16), "diagonal")
    with pytest.raises(ValueError, match=r"\[B, T, H, W, C\]"):
        attn(torch.randn(2, 4, 4, 16), "full")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        GridAttention3D(dim=10, num_heads=4)


@pytest.mark.parametrize("kind", GRID_KINDS)
@pytest.mark.parametrize("shape,partitions", [((1, 8, 8, 8), 2), ((2, 5, 6, 7), 2), ((1, 9, 9, 6), 3)])
def test_p2_rule_matches_dense_reference(kind, shape, partitions):
    torch.manual_seed(0)
    B, T, H, W = shape
    attn = GridAttention3D(dim=32, num_heads=4, partitions=partitions)
    x = torch.randn(B, T, H, W, 32, requires_grad=True)
    out = attn(x, kind)
    assert (out - dense_grouped_reference(attn, x, kind)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("size", [(8, 8, 8), (16, 12, 12), (4, 16, 16)])
def test_p2_rule_gives_spatial_and_temporal_groups_of_one_size_whatever_the_input(size):
    """CascadeV §3.3: P x P spatial groups and P^2 temporal groups, ~THW/P^2 tokens each."""
    T, H, W = size
    P = 2
    for kind in ("spatial", "temporal"):
        ids = grid_group_ids(T, H, W, kind, window=4, chunk=2, partitions=P)
        counts = torch.bincount(ids)
        assert len(counts) == P * P and bool((counts == T * H * W // (P * P)).all()), (kind, counts)


def test_p2_rule_is_refused_by_onnx_export_with_a_reason():
    from msc_cascade.dit import CascadeDiTConfig

    assert CascadeDiTConfig(grid_partitions=2).grid_partitions == 2
    attn = GridAttention3D(dim=16, num_heads=2, partitions=2)

    class Wrap(torch.nn.Module):
        def forward(self, x):
            return attn(x, "spatial")

    with pytest.raises(Exception, match="partitions=2 .* export a cascade with fixed window / chunk"):
        torch.export.export(Wrap(), (torch.randn(1, 4, 4, 4, 16),))
    with pytest.raises(ValueError, match="partitions"):
        GridAttention3D(dim=16, num_heads=2, partitions=0)
