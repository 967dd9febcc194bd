"""AD timestep scheduler of AR-Diffusion for inference (§3.4, eq. 5; Table 2).

The scheduler decides, for every iteration of the sampler, which timestep each frame
is at. It is written in *sampler-step units*: with a sampler of `S` steps (e.g. 50 DDIM
steps) a frame's state is the number of steps it has completed, `0..S`:

- `NOT_STARTED = 0`: still pure noise (timestep `T-1` on the DDIM grid);
- `S` (`num_steps`): finished, i.e. clean (timestep `-1` in `msc_core.diffusion`).

Eq. 5 (its `t_i + 1` read as one denoising step, `t_i - 1`): the first frame, or a
frame whose predecessor was already clean when the iteration began, denoises by one
step per iteration; any other frame stays `s` steps behind its predecessor's new
timestep, `t_i = min(t_{i-1} + s, T)`. In steps done this is
`k_i = max(k_{i-1} - s, 0)`, and by induction after iteration `n` (1-based)

    k_i(n) = clamp(n - i * s, 0, S),

so frame `i` starts at iteration `i*s + 1`, frames start exactly `s` iterations apart,
every frame takes `S` iterations and the last one finishes after
`S + (F - 1) * s` iterations. `s = 0` is synchronous diffusion (`S` iterations),
`s = S` is frame-by-frame autoregressive generation (`F * S` iterations). Each column
never decreases (a frame never gets noisier) and each row is non-increasing in the
frame index, so every composition visited at inference is non-decreasing in timestep:
the constraint the model was trained on (`timesteps.py`).

A frame whose state does not change in an iteration (waiting or finished) must not be
touched by the sampler (§3.4: "we apply a mask to those frame latents for which the
noise timesteps remain unchanged"); `ad_step_transitions` returns that mask and
`msc_core.diffusion.ddim_step` leaves such frames bit-identical.
"""

from __future__ import annotations

import math
import numbers

import torch

from msc_core.diffusion import ddim_timestep_grid

NOT_STARTED = 0  # steps completed by a frame that is still pure noise; finished = num_steps


def _check_int(name: str, value: int, low: int, high: int | None = None, why: str = "") -> None:
    bad = isinstance(value, bool) or not isinstance(value, numbers.Integral)
    bad = bad or value < low or (high is not None and value > high)
    if bad:
        valid = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"
        raise ValueError(f"{name} must be {valid}, got {value!r}{why}")


def _check_offset(num_steps: int, offset: int) -> None:
    _check_int(
        "offset",
        offset,
        0,
        num_steps,
        why=(
            f" (num_steps={num_steps}: 0 is synchronous, {num_steps} is fully autoregressive; a larger "
            f"offset only makes a frame wait after its predecessor is already clean, and eq. 5 then "
            f"starts it anyway, so it is the same as offset={num_steps})"
        ),
    )


def ad_schedule(num_frames: int, num_steps: int, offset: int) -> torch.Tensor:
    """Steps completed by each frame after each iteration: LongTensor `[N, F]`.

    Row `n` (0-based) is the state after iteration `n + 1`; before the first iteration
    every frame is `NOT_STARTED`. Entries are in `0..num_steps` (`num_steps` =
    finished) and `N = num_steps + (num_frames - 1) * offset`.

    For video continuation, schedule only the frames to generate: the given prefix
    frames stay clean (timestep -1) as context, and since the first generated frame
    then follows a clean frame, eq. 5 has it denoise by itself from iteration 1,
    which is column 0 here.
    """
    _check_int("num_frames", num_frames, 1)
    _check_int("num_steps", num_steps, 1)
    _check_offset(num_steps, offset)
    num_iterations = num_steps + (num_frames - 1) * offset
    n = torch.arange(1, num_iterations + 1, dtype=torch.long)[:, None]  # (N, 1)
    i = torch.arange(num_frames, dtype=torch.long)[None, :]  # (1, F)
    return (n - i * offset).clamp(NOT_STARTED, num_steps)  # (N, F)


def ad_step_transitions(schedule: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(steps before, steps after, frames that move) for every iteration, each `[N, F]`.

    In iteration `n` frame `f` goes from sampler step `before[n, f]` to `after[n, f]`
    (one step when it moves); `moving[n, f]` is False for frames that wait or are
    finished, which the sampler must leave untouched. Use `ad_timesteps` to turn the
    steps into diffusion timesteps for `ddim_step(x, x0, t=before, t_next=after)`.
    """
    if schedule.dim() != 2 or schedule.dtype != torch.long or schedule.shape[0] < 1:
        raise ValueError(
            f"schedule must be a LongTensor [N, F] from ad_schedule, got {schedule.dtype} {tuple(schedule.shape)}"
        )
    start = torch.full_like(schedule[:1], NOT_STARTED)  # (1, F): every frame is noise at first
    before = torch.cat([start, schedule[:-1]], dim=0)  # (N, F)
    return before, schedule, before != schedule


def ad_timesteps(steps_done: torch.Tensor, num_train_timesteps: int, num_steps: int) -> torch.Tensor:
    """Diffusion timesteps of frames that have completed `steps_done` DDIM steps.

    Uses the DDIM grid of `msc_core.diffusion.ddim_timestep_grid` ("trailing": 0 steps
    = `T-1`, pure noise; `num_steps` = `-1`, clean). Same shape as `steps_done`.
    """
    if steps_done.dtype.is_floating_point or steps_done.dtype == torch.bool:
        raise ValueError(f"steps_done must be an integer tensor, got dtype {steps_done.dtype}")
    grid = ddim_timestep_grid(num_train_timesteps, num_steps).to(steps_done.device)  # (S + 1,)
    if steps_done.numel() and (int(steps_done.min()) < NOT_STARTED or int(steps_done.max()) > num_steps):
        raise ValueError(
            f"steps_done must lie in {NOT_STARTED}..{num_steps}, got range "
            f"{int(steps_done.min())}..{int(steps_done.max())}"
        )
    return grid[steps_done.long()]


# -----------------------------------------------------------------------------
# generation past the training length


def frames_in_flight(num_frames: int, num_steps: int, offset: int) -> int:
    """Most frames being denoised at once (started, not finished) in the AD schedule.

    Frame `i` is in flight during iterations `i*s + 1 .. i*s + S`, so in iteration `n`
    the frames in flight are those with `(n - S)/s <= i < n/s`: at most `ceil(S/s)` of
    them (an interval of length `S/s`), a bound reached once the pipeline is full. With
    `s = 0` all frames are in flight together.
    """
    _check_int("num_frames", num_frames, 1)
    _check_int("num_steps", num_steps, 1)
    _check_offset(num_steps, offset)
    if offset == 0:
        return num_frames
    return min(num_frames, math.ceil(num_steps / offset))


def check_sliding_window(num_frames: int, num_steps: int, offset: int, window: int) -> None:
    """Raise ValueError unless a `window`-frame model can generate `num_frames` frames.

    Past the training length the model sees a sliding window of `window` frames, which
    must hold every frame still being denoised (plus clean context in the free
    slots). By `frames_in_flight`, `ceil(S/s)` frames are in flight at once, so
    generating more than `window` frames needs `ceil(S/s) <= window`, i.e.
    `s >= ceil(S / window)`; `s = 0` (synchronous) needs all frames in one window.
    """
    _check_int("window", window, 1)
    in_flight = frames_in_flight(num_frames, num_steps, offset)
    if in_flight > window:
        need = math.ceil(num_steps / window)
        raise ValueError(
            f"offset={offset} with num_steps={num_steps} keeps {in_flight} frames in flight at once, "
            f"more than the window of {window} frames; to generate {num_frames} frames use "
            f"offset >= ceil(num_steps / window) = {need}, or at most {window} frames"
        )
