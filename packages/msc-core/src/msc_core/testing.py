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


def assert_timestep_causal(
    fn: Callable[[torch.Tensor], torch.Tensor],
    t: torch.Tensor,
    out_frame_dim: int,
    num_timesteps: int = 1000,
    frames: list[int] | None = None,
    seed: int = 0,
) -> None:
    """Per-frame timesteps `t` `[B, T]` condition only their own frame and later ones.

    For each frame k: changing only `t[:, k]` must leave output frames < k bit-identical
    and change frame k (so the timestep is really used); changing `t[:, k:]` (every
    later frame too) must leave frames < k bit-identical.
    """
    num_frames = t.shape[1]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        base = fn(t)
        for k in frames if frames is not None else range(num_frames):
            # a different timestep for frame k: shift by at least num_timesteps / 4
            shift = torch.randint(num_timesteps // 4, num_timesteps, t[:, k].shape, generator=gen)
            only_k = t.clone()
            only_k[:, k] = (t[:, k] + shift.to(t.device, t.dtype)) % num_timesteps
            future = t.clone()
            future[:, k:] = torch.randint(0, num_timesteps, t[:, k:].shape, generator=gen).to(t.device, t.dtype)
            future[:, k] = only_k[:, k]
            outs = {"t[:, k]": fn(only_k), "t[:, k:]": fn(future)}
            for name, out in outs.items():
                past, past_ref = (o.narrow(out_frame_dim, 0, k) for o in (out, base))
                if not torch.equal(past, past_ref):
                    diff = (past - past_ref).abs().max().item()
                    raise AssertionError(f"frames < {k} changed (max abs diff {diff:g}) when {name} changed, k={k}")
            own, own_ref = (o.narrow(out_frame_dim, k, 1) for o in (outs["t[:, k]"], base))
            if torch.equal(own, own_ref):
                raise AssertionError(f"frame {k} did not react to its own timestep: test is vacuous")


def perturb_parameters(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Add seeded `scale * N(0, 1)` noise to every parameter, in place; returns `model`.

    DiT-style adaLN-Zero and zero-initialised output layers make a fresh model output 0
    everywhere, which makes causality and equivalence tests vacuous; tests nudge the
    weights off their init first.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen).to(p.device, p.dtype))
    return model


class HostReads:
    """Counts reads of tensor values into Python (`item`, `tolist`, `bool`/`int`/`float`, numpy).

    On a GPU each is a host sync; on CPU they are free but still mark where the loop would
    wait. `with HostReads() as reads: ...` then `reads.count` (and `reads.where` for the
    source lines). Tensors of the sampler's own plan read in Python are counted too.
    """

    _METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy")

    def __init__(self) -> None:
        self.count = 0
        self.where: list[str] = []
        self._saved: dict[str, object] = {}

    def __enter__(self) -> "HostReads":
        import traceback

        for name in self._METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counting(tensor, *args, _original=original, **kwargs):
                if not self._inside:
                    self._inside = True
                    try:
                        self.count += 1
                        frame = traceback.extract_stack(limit=3)[0]
                        self.where.append(f"{frame.filename}:{frame.lineno}")
                    finally:
                        self._inside = False
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counting)
        self._inside = False
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
