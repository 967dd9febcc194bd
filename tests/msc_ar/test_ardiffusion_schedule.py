"""AD inference scheduler of AR-Diffusion (§3.4, eq. 5; Table 2 offsets)."""

from __future__ import annotations

import math

import pytest
import torch

from msc_ar.ardiffusion.ad_schedule import (
    NOT_STARTED,
    ad_schedule,
    ad_step_transitions,
    ad_timesteps,
    check_sliding_window,
    frames_in_flight,
)
from msc_core.diffusion import ddim_step, make_alphas_cumprod


def eq5_reference(num_frames: int, num_steps: int, offset: int) -> torch.Tensor:
    """Eq. 5 applied literally, one iteration at a time, in timestep units `T = S`.

    Frame 1 (or a frame whose predecessor was clean when the iteration began) takes
    one denoising step; any other frame is set to `min(t_prev_new + s, T)`.
    """
    t = [num_steps] * num_frames  # everything starts as pure noise
    rows = []
    while any(v > 0 for v in t):
        old = list(t)
        for i in range(num_frames):
            if i == 0 or old[i - 1] == 0:
                t[i] = max(old[i] - 1, 0)
            else:
                t[i] = min(t[i - 1] + offset, num_steps)
        rows.append([num_steps - v for v in t])  # steps done
        assert len(rows) <= num_frames * num_steps, "eq. 5 reference did not terminate"
    return torch.tensor(rows, dtype=torch.long)


@pytest.mark.parametrize("offset", [0, 1, 5, 10, 25, 50])
def test_schedule_shape_and_invariants(offset: int) -> None:
    frames, steps = 16, 50
    schedule = ad_schedule(frames, steps, offset)
    assert schedule.dtype == torch.long
    assert schedule.shape == (steps + (frames - 1) * offset, frames)
    first = [1] * frames if offset == 0 else [1] + [NOT_STARTED] * (frames - 1)
    assert schedule[0].tolist() == first
    assert bool((schedule[-1] == steps).all()), "every frame must end finished"
    assert not bool((schedule[-2] == steps).all()), "no idle iteration at the end"
    # A frame never gets noisier, and advances at most one sampler step per iteration.
    increments = schedule.diff(dim=0)
    assert bool(((increments == 0) | (increments == 1)).all())
    # Earlier frames are never noisier than later ones: inference compositions are
    # non-decreasing in timestep, the training constraint.
    assert bool((schedule[:, 1:] <= schedule[:, :-1]).all())
    # Frames start exactly `offset` iterations apart and take exactly S iterations.
    started = (schedule > NOT_STARTED).to(torch.long).argmax(dim=0)
    finished = (schedule == steps).to(torch.long).argmax(dim=0)
    assert started.tolist() == [i * offset for i in range(frames)]
    assert (finished - started + 1).tolist() == [steps] * frames


@pytest.mark.parametrize(
    "frames,steps,offset", [(16, 50, 0), (16, 50, 1), (16, 50, 10), (16, 50, 50), (5, 7, 3), (1, 4, 2), (6, 3, 2)]
)
def test_schedule_equals_eq5_recurrence(frames: int, steps: int, offset: int) -> None:
    assert torch.equal(ad_schedule(frames, steps, offset), eq5_reference(frames, steps, offset))


def test_transitions_mark_exactly_the_frames_that_move() -> None:
    schedule = ad_schedule(6, 8, 3)
    before, after, moving = ad_step_transitions(schedule)
    assert torch.equal(after, schedule)
    assert bool((before[0] == NOT_STARTED).all())
    assert torch.equal(before[1:], schedule[:-1])
    assert torch.equal(moving, after == before + 1)
    assert torch.equal(moving, after != before)
    # Each frame is moved in exactly S iterations.
    assert moving.sum(dim=0).tolist() == [8] * 6


def test_timesteps_follow_the_ddim_grid() -> None:
    frames, steps, train_steps = 5, 10, 1000
    before, after, moving = ad_step_transitions(ad_schedule(frames, steps, 4))
    t, t_next = ad_timesteps(before, train_steps, steps), ad_timesteps(after, train_steps, steps)
    assert bool((t[0] == train_steps - 1).all()), "sampling starts from pure noise at T-1"
    assert bool((t_next[-1] == -1).all()), "every frame ends clean"
    assert torch.equal(moving, t_next < t)
    assert torch.equal(~moving, t_next == t)
    # Visited compositions (ignoring clean frames) are non-decreasing across frames.
    assert bool((t_next[:, 1:] >= t_next[:, :-1]).all())


def test_sampler_loop_with_ddim_step_leaves_waiting_frames_untouched() -> None:
    # The usage the AR-Diffusion sampler relies on: drive ddim_step with the schedule;
    # frames that do not move stay bit-identical, and an exact x0 prediction ends at x0.
    g = torch.Generator().manual_seed(0)
    frames, steps, train_steps = 4, 6, 100
    alphas_cumprod = make_alphas_cumprod("linear", train_steps)
    x0 = torch.randn(2, frames, 3, 5, generator=g)  # (B, F, L, D)
    x = torch.randn(2, frames, 3, 5, generator=g)
    before, after, moving = ad_step_transitions(ad_schedule(frames, steps, 2))
    t_all, t_next_all = ad_timesteps(before, train_steps, steps), ad_timesteps(after, train_steps, steps)
    for i in range(before.shape[0]):
        t, t_next = t_all[i].expand(2, frames), t_next_all[i].expand(2, frames)
        x_new = ddim_step(x, x0, t, t_next, alphas_cumprod, frame_dim=1)
        assert torch.equal(x_new[:, ~moving[i]], x[:, ~moving[i]])
        assert not torch.equal(x_new[:, moving[i]], x[:, moving[i]])
        x = x_new
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [7, 50])
def test_frames_in_flight_matches_schedule(steps: int) -> None:
    frames = 40
    for offset in range(0, steps + 1):
        _, _, moving = ad_step_transitions(ad_schedule(frames, steps, offset))
        widest = int(moving.sum(dim=1).max())
        assert widest == frames_in_flight(frames, steps, offset)
        expected = frames if offset == 0 else min(frames, math.ceil(steps / offset))
        assert widest == expected


@pytest.mark.parametrize("window", [1, 3, 8, 16])
def test_sliding_window_check(window: int) -> None:
    steps, long_video = 50, 64
    need = math.ceil(steps / window)
    for offset in range(0, steps + 1):
        fits = frames_in_flight(long_video, steps, offset) <= window
        assert fits == (offset >= need and offset > 0)
        if fits:
            check_sliding_window(long_video, steps, offset, window)
        else:
            message = rf"offset={offset} .* use offset >= ceil\(num_steps / window\) = {need}"
            with pytest.raises(ValueError, match=message):
                check_sliding_window(long_video, steps, offset, window)
    # Within the window any offset, synchronous included, is fine.
    check_sliding_window(window, steps, 0, window)


def test_invalid_inputs_raise_value_errors() -> None:
    with pytest.raises(ValueError, match=r"offset must be an integer in 0\.\.50, got 51 .*same as offset=50"):
        ad_schedule(16, 50, 51)
    with pytest.raises(ValueError, match=r"offset must be an integer in 0\.\.50, got -1"):
        ad_schedule(16, 50, -1)
    with pytest.raises(ValueError, match="num_frames must be an integer >= 1, got 0"):
        ad_schedule(0, 50, 5)
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1, got 0"):
        ad_schedule(4, 0, 0)
    with pytest.raises(ValueError, match="offset must be .* got True"):
        ad_schedule(4, 5, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window must be an integer >= 1, got 0"):
        check_sliding_window(8, 50, 10, 0)
    with pytest.raises(ValueError, match=r"steps_done must lie in 0\.\.5, got range 0\.\.6"):
        ad_timesteps(torch.tensor([0, 6]), 1000, 5)
    with pytest.raises(ValueError, match="LongTensor"):
        ad_step_transitions(torch.zeros(3, 2))
