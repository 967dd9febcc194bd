"""AR-Diffusion generation (§3.4): AD scheduler + DDIM, cached == recomputed, sliding
window past the training length, continuation, untouched frames, determinism, CFG."""

from __future__ import annotations

import math

import pytest
import torch

from msc_ar.ardiffusion.ad_schedule import ad_schedule, ad_step_transitions
from msc_ar.ardiffusion.model import ARDiffusion, ARDiffusionConfig
from msc_ar.ardiffusion.sampling import default_offset, plan_ad_sampling
from msc_core.interfaces import GenerationRequest, SchedulerParams

STEPS = 4  # DDIM steps per frame: small, the schedule logic is the same for 50


def make_model(seed: int = 0, **overrides) -> ARDiffusion:
    """Tiny model (training length 4 frames of 4x8x8) with every weight nudged off its init.

    DiT's zero init makes a fresh model predict x0 = 0 everywhere, so cached and
    recomputed runs would agree trivially.
    """
    torch.manual_seed(seed)
    config = ARDiffusionConfig.preset("tiny", **{"data": {"num_frames": 4}, **overrides})
    model = ARDiffusion(config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> ARDiffusion:
    return make_model()


def request(num_frames: int, offset: int | None, seed: int = 0, **kwargs) -> GenerationRequest:
    window = kwargs.pop("window", None)
    eta = kwargs.pop("eta", 0.0)
    return GenerationRequest(
        num_frames=num_frames, num_steps=STEPS, seed=seed,
        scheduler=SchedulerParams(offset=offset, window=window, eta=eta), **kwargs,
    )


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# -----------------------------------------------------------------------------
# cache of finished frames


@pytest.mark.parametrize("offset", [0, 1, STEPS], ids=["s=0", "s=1", "s=S"])
def test_cached_generation_equals_recomputation(model: ARDiffusion, offset: int) -> None:
    req = request(4, offset, batch_size=2)
    cached = model.generate(req)
    recomputed = model.generate(req, use_cache=False)
    assert cached.shape == (2, 4, 4, 8, 8)
    assert max_err(cached, recomputed) <= 1e-5
    assert torch.equal(model.generate(req), cached), "same seed, different video"
    assert not torch.allclose(model.generate(request(4, offset, seed=1, batch_size=2)), cached)


def test_cached_equals_recomputed_past_the_training_length_with_a_sliding_window(model: ARDiffusion) -> None:
    # 9 frames through a 4-frame window (the training length): s >= ceil(4 / 4) = 1
    for offset in (1, 3):
        assert max(plan_ad_sampling(9, 0, STEPS, offset, 4, 1000).window_start) == 5, "the window must slide"
        req = request(9, offset)
        cached, recomputed = model.generate(req), model.generate(req, use_cache=False)
        assert cached.shape[2] == 9 and torch.isfinite(cached).all()
        assert max_err(cached, recomputed) <= 1e-5, f"s={offset}"


def test_cached_equals_recomputed_with_ddim_noise_and_guidance() -> None:
    model = make_model(num_classes=3)
    req = request(6, 2, class_label=[0, 2], batch_size=2, guidance_scale=2.5, eta=0.7)
    cached, recomputed = model.generate(req), model.generate(req, use_cache=False)
    assert max_err(cached, recomputed) <= 1e-5


def test_the_cache_runs_only_the_frames_in_flight(model: ARDiffusion) -> None:
    """The backbone sees the moving frames each iteration, and each finished frame once."""
    calls: list[tuple[int, bool]] = []
    hook = model.backbone.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append((args[0].shape[2], kwargs["update_cache"])), with_kwargs=True
    )
    try:
        model.generate(request(4, STEPS))  # autoregressive: one frame in flight at a time
    finally:
        hook.remove()
    denoise = [frames for frames, update in calls if not update]
    commits = [frames for frames, update in calls if update]
    _, _, moving = ad_step_transitions(ad_schedule(4, STEPS, STEPS))
    assert denoise == moving.sum(dim=1).tolist() == [1] * (4 * STEPS)
    assert commits == [1, 1, 1], "frames 0..2 are each committed once; frame 3 finishes last"

    calls.clear()
    hook = model.backbone.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append((args[0].shape[2], kwargs["update_cache"])), with_kwargs=True
    )
    try:
        model.generate(request(4, STEPS), use_cache=False)
    finally:
        hook.remove()
    assert [frames for frames, _ in calls] == [f + 1 for f in range(4) for _ in range(STEPS)]


# -----------------------------------------------------------------------------
# AD scheduler semantics


@pytest.mark.parametrize("use_cache", [True, False])
def test_frames_whose_timestep_does_not_change_are_not_touched(model: ARDiffusion, use_cache: bool) -> None:
    snapshots: list[torch.Tensor] = []
    req = request(5, 2)
    initial = model.generate(req, use_cache=use_cache, on_step=lambda n, v: snapshots.append(v))
    plan = plan_ad_sampling(5, 0, STEPS, 2, 4, 1000)
    moving = plan.t_before != plan.t_after  # (N, F)
    gen = torch.Generator().manual_seed(0)
    noise = torch.stack([torch.randn(1, 4, 8, 8, generator=gen) for _ in range(5)], dim=2)
    previous = noise
    for n, video in enumerate(snapshots):
        for f in range(5):
            same = torch.equal(video[:, :, f], previous[:, :, f])
            assert same != bool(moving[n, f]), f"iteration {n}, frame {f}: moving={bool(moving[n, f])}"
        previous = video
    assert torch.equal(snapshots[-1], initial)


def test_a_longer_generation_starts_with_the_shorter_one(model: ARDiffusion) -> None:
    """Frame-causal model + per-frame noise in frame order: length does not change early frames."""
    short = model.generate(request(3, 2))
    long = model.generate(request(4, 2))
    assert max_err(long[:, :, :3], short) <= 1e-5
    assert long.shape[2] == 4


def test_default_offset_follows_table_2_and_the_window() -> None:
    assert default_offset(50, 16, 16) == 10  # s = 10 of 50 steps
    assert default_offset(50, 64, 8) == 10  # ceil(50 / 8) = 7 <= 10
    assert default_offset(50, 64, 4) == 13  # raised to ceil(50 / 4)
    assert default_offset(4, 9, 4) == 1


def test_a_sliding_window_too_small_for_the_frames_in_flight_is_refused(model: ARDiffusion) -> None:
    # S=4 steps, window 2: ceil(4 / 2) = 2 frames in flight need s >= 2
    with pytest.raises(ValueError, match=r"offset >= ceil\(num_steps / window\) = 2"):
        model.generate(request(5, 1, window=2))
    with pytest.raises(ValueError, match="more than the window of 2 frames"):
        model.generate(request(5, 0, window=2))
    assert model.generate(request(5, 2, window=2)).shape[2] == 5


# -----------------------------------------------------------------------------
# continuation


@pytest.mark.parametrize("use_cache", [True, False])
def test_continuation_keeps_the_prefix_and_depends_on_it(model: ARDiffusion, use_cache: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    prefix = torch.rand(2, 4, 2, 8, 8, generator=gen) * 2 - 1  # (B, C, P, H, W)
    other = prefix.clone()
    other[:, :, 0] = -other[:, :, 0]  # change only the first prefix frame
    out = model.generate(request(6, 2, batch_size=2, prefix=prefix), use_cache=use_cache)
    out_other = model.generate(request(6, 2, batch_size=2, prefix=other), use_cache=use_cache)
    assert out.shape == (2, 4, 6, 8, 8)
    assert torch.equal(out[:, :, :2], prefix) and torch.equal(out_other[:, :, :2], other)
    per_frame_change = (out - out_other)[:, :, 2:].abs().amax(dim=(0, 1, 3, 4))
    assert bool((per_frame_change > 1e-4).all()), f"generated frames ignored the prefix: {per_frame_change}"
    if use_cache:
        assert max_err(out, model.generate(request(6, 2, batch_size=2, prefix=prefix), use_cache=False)) <= 1e-5


def test_continuation_past_the_window_with_token_latents() -> None:
    model = make_model(
        data=dict(input_layout="tokens", channels=4, num_frames=3, tokens_per_frame=8, latent_grid=(2, 4)),
        transformer={"patch_size": 1},
    )
    prefix = torch.randn(1, 2, 8, 4, generator=torch.Generator().manual_seed(0))  # (B, P, L, D)
    req = request(7, 2, prefix=prefix)
    out = model.generate(req)
    assert out.shape == (1, 7, 8, 4) and torch.equal(out[:, :2], prefix)
    assert max_err(out, model.generate(req, use_cache=False)) <= 1e-5


# -----------------------------------------------------------------------------
# conditioning and request errors


def test_guidance_scale_one_samples_the_conditional_model() -> None:
    model = make_model(num_classes=3)
    conditional = model.generate(request(3, 1, class_label=1))
    assert torch.equal(model.generate(request(3, 1, class_label=1, guidance_scale=1.0)), conditional)
    guided = model.generate(request(3, 1, class_label=1, guidance_scale=3.0))
    other_label = model.generate(request(3, 1, class_label=2))
    assert not torch.allclose(guided, conditional) and not torch.allclose(other_label, conditional)


def test_bad_requests_raise_value_errors_naming_the_problem(model: ARDiffusion) -> None:
    prefix = torch.zeros(1, 4, 3, 8, 8)
    with pytest.raises(ValueError, match="must exceed the 3 prefix frames"):
        model.generate(request(3, 1, prefix=prefix))
    with pytest.raises(ValueError, match="batch 1, but batch_size=2"):
        model.generate(request(5, 1, prefix=prefix, batch_size=2))
    with pytest.raises(ValueError, match=r"request.prefix must be a float tensor \[B, 4, T, 8, 8\]"):
        model.generate(request(5, 1, prefix=torch.zeros(1, 3, 2, 8, 8)))
    with pytest.raises(ValueError, match="not class-conditional"):
        model.generate(request(3, 1, class_label=0))
    with pytest.raises(ValueError, match="not text-conditional"):
        model.generate(request(3, 1, prompt="a red square"))
    with pytest.raises(ValueError, match="needs a condition"):
        model.generate(request(3, 1, guidance_scale=2.0))
    with pytest.raises(ValueError, match="offset must be an integer in 0..4"):
        model.generate(request(3, 5))
    text_model = make_model(text_embed_dim=6)
    with pytest.raises(ValueError, match="pass text_embedding"):
        text_model.generate(request(3, 1, prompt="a red square"))
    out = text_model.generate(request(3, 1, prompt="a red square"), text_embedding=torch.randn(1, 6))
    assert torch.isfinite(out).all() and not math.isnan(out.sum().item())


# -----------------------------------------------------------------------------
# frame by frame (streaming)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "recomputed"])
def test_generate_frames_yields_the_frames_of_generate_in_order_each_when_final(
    model: ARDiffusion, use_cache: bool
) -> None:
    # 9 frames through the 4-frame window, continuing a 2-frame prefix
    prefix = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(7))
    req = request(9, 2, window=4, prefix=prefix)
    whole = model.generate(req, use_cache=use_cache)
    moving: list[tuple[int, int]] = []  # (first, last) frame denoised by each iteration
    frames = []
    for frame in model.generate_frames(req, use_cache=use_cache,
                                       on_iteration=lambda n, first, last: moving.append((first, last))):
        frames.append((len(moving), frame))
    assert len(frames) == 9 and all(torch.equal(f, whole[:, :, i]) for i, (_, f) in enumerate(frames))
    assert [n for n, _ in frames[:2]] == [0, 0]  # the prefix comes first, before any iteration
    for index, (iterations_run, _) in enumerate(frames[2:], start=2):
        # yielded right after the iteration that finished it: no later iteration touched it ...
        assert all(first > index for first, _ in moving[iterations_run:])
        # ... and it was yielded before frames after it were done (they were still in flight)
        assert any(last > index for _, last in moving[iterations_run:]) or index == 8
