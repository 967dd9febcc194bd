"""Training timestep samplers of AR-Diffusion (§3.2 non-decreasing constraint, §3.3 FoPP).

A *timestep composition* gives every frame of a clip its own diffusion timestep; here
it is a LongTensor `[B, F]` of 0-based timesteps `0..T-1` (the paper counts `1..T`).
AR-Diffusion trains on compositions that are **non-decreasing in the frame index**,
`t_0 <= t_1 <= ... <= t_{F-1}`: "earlier video frames remain as clear or clearer than
subsequent frames" (§3.2), which is also the shape of every composition the AD
scheduler visits at inference (`ad_schedule.py`).

Samplers (`sample_timesteps(kind, ...)`):

- `synchronous`: one `t ~ U{0..T-1}` for all frames (equal constraint, Fig. 3 left).
- `independent`: iid `t_f ~ U{0..T-1}` per frame (Diffusion Forcing; Fig. 3 middle).
- `uniform-nondecreasing`: uniform over all `C(T+F-1, F)` non-decreasing compositions.
  Late timesteps are rare for early frames: `E[t_f] = (f+1)(T-1)/(F+1)`.
- `fopp`: Frame-oriented Probability Propagation (Algorithm 1). Draw a frame `f` and
  its timestep `t` uniformly, then a composition uniformly among those with `t_f = t`,
  sampling earlier frames backwards and later frames forwards. Every frame sees every
  timestep, at the price of a non-uniform composition distribution
  `P(c) = (1/F) sum_f 1 / (T d^s[c_f, f] d^e[c_f, f])`.

Counting (0-based). `d^s[t, f]` is the number of non-decreasing completions
`t = t_f <= t_{f+1} <= ... <= t_{F-1} <= T-1` and `d^e[t, f]` the number of prefixes
`t_0 <= ... <= t_{f-1} <= t_f = t`; by stars and bars
`d^s[t, f] = C((T-1-t) + (F-1-f), F-1-f)` and `d^e[t, f] = C(t + f, f)`, the closed
forms of the paper's dynamic programme. They reach ~1e100 for T=1000, F=64, so they
live in log space (float64 `lgamma`).

Exact conditionals. Given `t_f = t`, a uniform completion draws the next frame with
`P(t_{f+1} = u | t_f = t) = d^s[u, f+1] / d^s[t, f]` for `u >= t` (the hockey-stick
identity `sum_{u >= t} d^s[u, f+1] = d^s[t, f]` normalises it), so its survival
function is `P(t_{f+1} > u) = d^s[u+1, f] / d^s[t, f]`. Backwards,
`P(t_{f-1} <= u | t_f = t) = d^e[u, f] / d^e[t, f]` for `u <= t`. Both CDFs are read
straight off the count tables, so each frame is one inverse-CDF `searchsorted` for the
whole batch: the samplers are exact and vectorised over the batch (a loop over frames
only), where the paper's reference code loops over samples in Python.
"""

from __future__ import annotations

import functools
import numbers
from typing import Literal

import torch

from msc_core.runtime import resolve_device

TimestepSamplerKind = Literal["synchronous", "independent", "uniform-nondecreasing", "fopp"]
TIMESTEP_SAMPLERS: tuple[str, ...] = ("synchronous", "independent", "uniform-nondecreasing", "fopp")


# -----------------------------------------------------------------------------
# validation


def _check_size(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _prepare(
    batch_size: int,
    num_frames: int,
    num_timesteps: int,
    generator: torch.Generator | None,
    device: torch.device | str | None,
) -> tuple[torch.device, torch.device]:
    """Validate a sampler's sizes; return (device to draw on, device of the result).

    Draws happen on the generator's device so that a CPU generator gives the same
    compositions whatever `device` is; the result is then moved to `device`.
    """
    for name, value in (("batch_size", batch_size), ("num_frames", num_frames), ("num_timesteps", num_timesteps)):
        _check_size(name, value)
    out = resolve_device(device) if device is not None else None  # ValueError for bad devices
    if generator is not None:
        work = generator.device
    else:
        work = out if out is not None else torch.device("cpu")
    return work, out if out is not None else work


# -----------------------------------------------------------------------------
# counts (§3.3 dynamic programme, closed form)


def log_binomial(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """log C(n, k) in float64 for integer tensors with 0 <= k <= n."""
    n = n.to(torch.float64)
    k = k.to(torch.float64)
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def fopp_log_counts(num_frames: int, num_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log d^s, log d^e), float64 `[T, F]` on the CPU.

    `d^s[t, f] = C((T-1-t) + (F-1-f), F-1-f)` counts the non-decreasing completions of
    frames `f..F-1` that start at `t_f = t`; `d^e[t, f] = C(t + f, f)` counts the
    non-decreasing prefixes of frames `0..f` that end at `t_f = t`. Their product is
    the number of compositions passing through `(f, t)` (the numbers in Fig. 3).
    """
    _check_size("num_frames", num_frames)
    _check_size("num_timesteps", num_timesteps)
    t = torch.arange(num_timesteps, dtype=torch.int64)[:, None]  # (T, 1)
    f = torch.arange(num_frames, dtype=torch.int64)[None, :]  # (1, F)
    after = num_frames - 1 - f  # frames after f
    log_ds = log_binomial((num_timesteps - 1 - t) + after, after.expand(num_timesteps, -1))  # (T, F)
    log_de = log_binomial(t + f, f.expand(num_timesteps, -1))  # (T, F)
    return log_ds, log_de


@functools.lru_cache(maxsize=16)
def _inverse_cdf_tables(num_frames: int, num_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame sorted rows for `searchsorted`, CPU float64 (cached; never mutated).

    `neg_log_ds[f]`: `-log d^s[:, f]` with `+inf` appended for `t = T` (no completion
    starts there), ascending in t. `log_de[f]`: `log d^e[:, f]`, ascending in t.
    """
    log_ds, log_de = fopp_log_counts(num_frames, num_timesteps)
    inf = torch.full((num_frames, 1), float("inf"), dtype=torch.float64)
    neg_log_ds = torch.cat([-log_ds.T, inf], dim=1).contiguous()  # (F, T + 1)
    return neg_log_ds, log_de.T.contiguous()  # (F, T + 1), (F, T)


def _tables_on(
    num_frames: int, num_timesteps: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    neg_log_ds, log_de = _inverse_cdf_tables(num_frames, num_timesteps)
    return neg_log_ds.to(device), log_de.to(device)


# -----------------------------------------------------------------------------
# exact conditional steps (inverse CDF, vectorised over the batch)


def _step_forward(neg_log_ds_prev: torch.Tensor, t_prev: torch.Tensor, log_u: torch.Tensor) -> torch.Tensor:
    """Draw `t_j` given `t_{j-1}` uniformly over the completions (u >= t_{j-1}).

    `neg_log_ds_prev` is `-log d^s[:, j-1]` extended with `+inf` (`[T + 1]`). With
    `S(u) = d^s[u+1, j-1] / d^s[t_prev, j-1]` the survival function, inverse-CDF
    sampling returns the smallest `u` with `S(u) <= U`, i.e. `(#v: d^s[v, j-1] >
    U d^s[t_prev, j-1]) - 1`.
    """
    num_timesteps = neg_log_ds_prev.shape[0] - 1
    # index_select, not advanced indexing: same result, but a serial kernel at this size,
    # where `table[idx]` spawns threads (costly on busy CPUs).
    threshold = neg_log_ds_prev.index_select(0, t_prev) - log_u  # -(log d^s[t_prev] + log U), (B,)
    count = torch.searchsorted(neg_log_ds_prev, threshold, side="left")
    # Clamps only matter at U == 1 exactly (probability 2**-53), where rounding could
    # step one below t_prev.
    return torch.maximum(count - 1, t_prev).clamp(max=num_timesteps - 1)


def _step_backward(log_de_next: torch.Tensor, t_next: torch.Tensor, log_u: torch.Tensor) -> torch.Tensor:
    """Draw `t_j` given `t_{j+1}` uniformly over the prefixes (u <= t_{j+1}).

    `log_de_next` is `log d^e[:, j+1]`; the CDF is `d^e[u, j+1] / d^e[t_next, j+1]`, so
    the draw is the smallest `u` with `d^e[u, j+1] >= U d^e[t_next, j+1]`.
    """
    threshold = log_de_next.index_select(0, t_next) + log_u  # (B,)
    return torch.minimum(torch.searchsorted(log_de_next, threshold, side="left"), t_next)


def _log_uniform_open(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """log U with U ~ Uniform(0, 1] in float64 (never log 0)."""
    return torch.log1p(-torch.rand(shape, generator=generator, device=device, dtype=torch.float64))


# -----------------------------------------------------------------------------
# samplers


def sample_synchronous_timesteps(
    batch_size: int,
    num_frames: int,
    num_timesteps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One `t ~ U{0..T-1}` per sample, shared by all frames: `[B, F]` long."""
    work, out = _prepare(batch_size, num_frames, num_timesteps, generator, device)
    t = torch.randint(num_timesteps, (batch_size, 1), generator=generator, device=work)
    return t.expand(batch_size, num_frames).contiguous().to(out)


def sample_independent_timesteps(
    batch_size: int,
    num_frames: int,
    num_timesteps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """iid `t_f ~ U{0..T-1}` per frame (Diffusion Forcing; not non-decreasing): `[B, F]`."""
    work, out = _prepare(batch_size, num_frames, num_timesteps, generator, device)
    return torch.randint(num_timesteps, (batch_size, num_frames), generator=generator, device=work).to(out)


def sample_uniform_nondecreasing_timesteps(
    batch_size: int,
    num_frames: int,
    num_timesteps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniform over all `C(T+F-1, F)` non-decreasing compositions: `[B, F]` long.

    A uniform composition is the forward sweep of FoPP started from a virtual frame
    pinned at `t = 0` in front of the clip (so it uses the count tables of F+1 frames):
    every non-decreasing composition extends it in exactly one way.
    """
    work, out = _prepare(batch_size, num_frames, num_timesteps, generator, device)
    neg_log_ds, _ = _tables_on(num_frames + 1, num_timesteps, work)
    log_u = _log_uniform_open((num_frames, batch_size), generator, work)  # (F, B)
    t_prev = torch.zeros(batch_size, dtype=torch.long, device=work)  # the virtual frame
    frames = []
    for j in range(num_frames):
        t_prev = _step_forward(neg_log_ds[j], t_prev, log_u[j])  # frame j sits at j+1 in the F+1 tables
        frames.append(t_prev)
    return torch.stack(frames, dim=1).to(out)  # (B, F)


def sample_fopp_timesteps(
    batch_size: int,
    num_frames: int,
    num_timesteps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """FoPP (Algorithm 1): anchor `(f, t)` uniform, then a uniform completion: `[B, F]`.

    Earlier frames are drawn backwards from the anchor with the prefix counts `d^e`,
    later frames forwards with the suffix counts `d^s`; each draw is the exact
    conditional of a uniform composition given `t_f = t`.
    """
    work, out = _prepare(batch_size, num_frames, num_timesteps, generator, device)
    neg_log_ds, log_de = _tables_on(num_frames, num_timesteps, work)
    anchor_frame = torch.randint(num_frames, (batch_size,), generator=generator, device=work)  # (B,)
    anchor_t = torch.randint(num_timesteps, (batch_size,), generator=generator, device=work)  # (B,)
    log_u = _log_uniform_open((num_frames, batch_size), generator, work)  # (F, B); anchor's unused

    # Work on the batch grouped by anchor frame, so that the samples drawing frame j are
    # one contiguous slice (anchor > j backwards, anchor < j forwards): each sample
    # costs F-1 draws and no masks. Rows go back to their drawn order at the end.
    order = torch.argsort(anchor_frame, stable=True)  # (B,)
    # Rows first[f]:first[f+1] of the grouped batch have their anchor at frame f.
    first = [0] + torch.bincount(anchor_frame, minlength=num_frames).cumsum(0).tolist()
    grouped = anchor_t.repeat(num_frames, 1)  # (F, B): row j = t_j; anchors already in place
    log_u = log_u.index_select(1, order)  # pair each grouped row with its own uniforms
    for j in range(num_frames - 2, -1, -1):  # backwards: frame j given frame j+1
        rows = slice(first[j + 1], batch_size)  # anchor > j
        grouped[j, rows] = _step_backward(log_de[j + 1], grouped[j + 1, rows], log_u[j, rows])
    for j in range(1, num_frames):  # forwards: frame j given frame j-1
        rows = slice(0, first[j])  # anchor < j
        grouped[j, rows] = _step_forward(neg_log_ds[j - 1], grouped[j - 1, rows], log_u[j, rows])
    ungrouped = torch.empty(batch_size, num_frames, dtype=torch.long, device=work)
    return ungrouped.index_copy_(0, order, grouped.T).to(out)  # (B, F)


_SAMPLERS = {
    "synchronous": sample_synchronous_timesteps,
    "independent": sample_independent_timesteps,
    "uniform-nondecreasing": sample_uniform_nondecreasing_timesteps,
    "fopp": sample_fopp_timesteps,
}


def sample_timesteps(
    kind: TimestepSamplerKind,
    batch_size: int,
    num_frames: int,
    num_timesteps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-frame training timesteps `[B, F]` (long, 0..T-1) from the sampler `kind`.

    All kinds except `independent` return compositions non-decreasing in the frame
    index (earlier frames less noisy). With a `generator`, the draws are made on its
    device and are reproducible; the result is moved to `device`.
    """
    try:
        sampler = _SAMPLERS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown timestep sampler {kind!r}; valid: {', '.join(TIMESTEP_SAMPLERS)}") from None
    return sampler(batch_size, num_frames, num_timesteps, generator=generator, device=device)


# -----------------------------------------------------------------------------
# exact distribution of FoPP


def fopp_composition_probability(composition: torch.Tensor, num_timesteps: int) -> torch.Tensor:
    """Exact FoPP probability of compositions `[..., F]` (float64 `[...]`).

    `P(c) = (1/F) sum_f 1 / (T d^s[c_f, f] d^e[c_f, f])`: the anchor frame f is drawn
    with probability 1/F, its timestep with 1/T, and the rest of `c` is one of the
    `d^s d^e` compositions through `(f, c_f)`, all equally likely.
    """
    if composition.dtype.is_floating_point or composition.dtype == torch.bool:
        raise ValueError(f"composition must be an integer tensor, got dtype {composition.dtype}")
    if composition.dim() < 1 or composition.shape[-1] < 1:
        raise ValueError(f"composition must be [..., F] with F >= 1, got shape {tuple(composition.shape)}")
    _check_size("num_timesteps", num_timesteps)
    c = composition.cpu().long()
    if int(c.min()) < 0 or int(c.max()) >= num_timesteps:
        raise ValueError(
            f"composition timesteps must lie in 0..{num_timesteps - 1}, got range {int(c.min())}..{int(c.max())}"
        )
    if bool((c[..., 1:] < c[..., :-1]).any()):
        raise ValueError("composition must be non-decreasing in the frame index (FoPP never draws others)")
    num_frames = c.shape[-1]
    log_ds, log_de = fopp_log_counts(num_frames, num_timesteps)
    frame = torch.arange(num_frames).expand_as(c)
    log_paths = log_ds[c, frame] + log_de[c, frame]  # (..., F)
    per_anchor = torch.exp(-log_paths - torch.log(torch.tensor(float(num_timesteps), dtype=torch.float64)))
    return per_anchor.mean(dim=-1).to(composition.device)
