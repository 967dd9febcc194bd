"""Shared test helpers for every msc package (imported by tests, not by library code).

They check the properties users rely on: frame causality, bit-exact round trips.
"""

from __future__ import annotations

from typing import Callable

import torch


def assert_frame_causal(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    frame_dim: int,
    out_frame_dim: int | None = None,
    cut_points: list[int] | None = None,
    seed: int = 0,
) -> None:
    """Perturb every frame after `cut` and check outputs at frames <= cut are bit-identical.

    `fn` maps `x` to an output whose frames lie on `out_frame_dim` (default: `frame_dim`)
    with one output frame per input frame. Also checks that the perturbation changes the
    output at frame cut + 1, so a constant function does not pass as causal.
    """
    out_frame_dim = frame_dim if out_frame_dim is None else out_frame_dim
    num_frames = x.shape[frame_dim]
    cuts = cut_points if cut_points is not None else sorted({0, num_frames // 2, num_frames - 2})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        base = fn(x)
        for cut in cuts:
            if not 0 <= cut < num_frames - 1:
                continue
            future = torch.randn(x.narrow(frame_dim, cut + 1, num_frames - cut - 1).shape, generator=gen)
            perturbed = x.clone()
            perturbed.narrow(frame_dim, cut + 1, num_frames - cut - 1).copy_(future.to(x.dtype))
            out = fn(perturbed)
            past, past_ref = (o.narrow(out_frame_dim, 0, cut + 1) for o in (out, base))
            if not torch.equal(past, past_ref):
                diff = (past - past_ref).abs().max().item()
                raise AssertionError(f"frames <= {cut} changed (max abs diff {diff:g}) when frames > {cut} changed")
            nxt, nxt_ref = (o.narrow(out_frame_dim, cut + 1, 1) for o in (out, base))
            if torch.equal(nxt, nxt_ref):
                raise AssertionError(f"frame {cut + 1} did not react to its own input: test is vacuous")


def assert_state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        raise AssertionError(f"state dict keys differ: {sorted(sa.keys() ^ sb.keys())}")
    for key in sa:
        if sa[key].dtype != sb[key].dtype or not torch.equal(sa[key], sb[key]):
            raise AssertionError(f"parameter {key} differs")
