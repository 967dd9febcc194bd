"""The training loop without Ray: schedule, EMA, non-finite steps, exact resume, divergence.

`run_training_loop` is the function every Ray worker runs; here it runs in-process on
one rank, with a `report` that persists checkpoints the way Ray does (a copy into the
run directory), so a crash and a resume can be replayed exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from msc_core.testing import assert_state_dicts_equal
from msc_ray_train.ema import ExponentialMovingAverage, ema_decay
from msc_ray_train.job import EMAConfig, OptimConfig, job_from_dict
from msc_ray_train.model_kinds import build_model
from msc_ray_train.optimization import build_optimizer, build_scheduler, learning_rate_factor
from msc_ray_train.train_checkpoint import TrainerState, latest_valid_checkpoint, read_trainer_state
from msc_ray_train.train_loop import TrainingLossModule, read_metrics, run_training_loop, training_step

CPU = torch.device("cpu")


def built(job):
    torch.manual_seed(job.seed)
    model = build_model(job.model)
    ema = ExponentialMovingAverage(model, job.ema)
    optimizer = build_optimizer(model, job.optim)
    scheduler = build_scheduler(optimizer, job.optim, job.steps)
    return model, ema, optimizer, scheduler


def test_learning_rate_warms_up_linearly_then_follows_a_cosine() -> None:
    optim = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [learning_rate_factor(s, optim, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate_factor(4, optim, 14) == pytest.approx(1.0)
    assert learning_rate_factor(9, optim, 14) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert learning_rate_factor(14, optim, 14) == pytest.approx(0.1)
    assert learning_rate_factor(50, optim, 14) == pytest.approx(0.1)  # held at the floor
    constant = OptimConfig(lr=1.0, warmup_steps=2, schedule="constant")
    assert [learning_rate_factor(s, constant, 10) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]


def test_optimizer_steps_use_the_scheduled_learning_rate(make_job_dict) -> None:
    job = job_from_dict(make_job_dict(optim={"lr": 2e-3, "warmup_steps": 3, "weight_decay": 0.1}))
    model, _, optimizer, scheduler = built(job)
    for step in range(job.steps):
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(2e-3 * learning_rate_factor(step, job.optim, job.steps))
        optimizer.step()
        scheduler.step()
    decayed, undecayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and undecayed["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in undecayed["params"])


def test_ema_is_the_exponential_average_of_the_weights() -> None:
    config = EMAConfig(decay=0.9, warmup=True)
    assert [ema_decay(config, n) for n in (0, 1, 80, 1000)] == [0.1, 2 / 11, 0.9, 0.9]
    model = torch.nn.Linear(3, 2)
    ema = ExponentialMovingAverage(model, config)
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model, n)
        d = ema_decay(config, n)
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
    for got, want in zip(ema.model.parameters(), expected):
        torch.testing.assert_close(got, want)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_non_finite_step_changes_nothing_and_is_counted(make_job_dict) -> None:
    job = job_from_dict(make_job_dict())
    model, ema, optimizer, scheduler = built(job)
    loss_module = TrainingLossModule(model)
    state = TrainerState()
    good = {"video": torch.rand(2, 1, 4, 16, 16) * 2 - 1}
    training_step(loss_module, model, ema, optimizer, scheduler, state, good, None, 1.0)
    weights, averaged = build_model(job.model), build_model(job.model)
    weights.load_state_dict(model.state_dict())
    averaged.load_state_dict(ema.model.state_dict())
    adam_steps = [s["step"].item() for s in optimizer.state.values()]

    bad = {"video": good["video"].clone()}
    bad["video"][0, 0, 1, 3, 3] = float("nan")
    for expected_in_a_row in (1, 2):
        result = training_step(loss_module, model, ema, optimizer, scheduler, state, bad, None, 1.0)
        assert not result.applied and math.isnan(result.losses["loss"])
        assert state.nonfinite_in_a_row == expected_in_a_row
    assert_state_dicts_equal(model, weights)
    assert_state_dicts_equal(ema.model, averaged)
    assert [s["step"].item() for s in optimizer.state.values()] == adam_steps
    assert all(p.grad is None for p in model.parameters())
    assert (state.step, state.ema_updates, state.nonfinite_total) == (3, 1, 2)

    result = training_step(loss_module, model, ema, optimizer, scheduler, state, good, None, 1.0)
    assert result.applied and state.nonfinite_in_a_row == 0 and state.nonfinite_total == 2


def test_gradient_clipping_bounds_the_update_norm(make_job_dict) -> None:
    job = job_from_dict(make_job_dict())
    model, ema, optimizer, scheduler = built(job)
    batch = {"video": torch.rand(2, 1, 4, 16, 16) * 2 - 1}
    result = training_step(TrainingLossModule(model), model, ema, optimizer, scheduler, TrainerState(), batch,
                           torch.Generator().manual_seed(0), grad_clip=1e-3)
    assert result.applied and result.grad_norm > 1e-3  # the reported norm is the one before clipping


def test_crash_and_resume_gives_exactly_the_uninterrupted_run(make_job_dict, raylike_run) -> None:
    changes = dict(steps=6, checkpoint_every=2, log_every=1)
    straight_job = job_from_dict(make_job_dict("straight", **changes))
    straight = raylike_run.Reporter(straight_job.run_dir)
    assert run_training_loop(straight_job, 0, 1, CPU, None, straight) == "finished"

    job = job_from_dict(make_job_dict("crashed", **changes))
    resumed = raylike_run.crash_and_resume(job, crash_at_step=5)

    assert [r["start_step"] for r in resumed.reports] == [4, 4]
    assert [r["step"] for r in resumed.reports] == [5, 6]
    assert [r["loss"] for r in resumed.reports] == [r["loss"] for r in straight.reports[4:]]
    assert read_trainer_state(resumed.latest).step == 6
    raylike_run.assert_same_training_state(job, straight.latest, resumed.latest)
    assert [r["step"] for r in read_metrics(job.run_dir)] == [1, 2, 3, 4, 5, 6]


def test_run_stops_after_k_non_finite_steps_in_a_row(make_job_dict, raylike_run) -> None:
    # lr = 1e30 blows the weights up after one Adam step: every later loss is inf/nan. A job
    # file may not ask for it (optim.lr <= 1), so the loop gets it past validation here: this
    # tests what the loop does once losses stop being finite, whatever the cause
    job = job_from_dict(make_job_dict(optim={"warmup_steps": 0}, steps=50, max_nonfinite_steps=3,
                                      log_every=10, checkpoint_every=10))
    job = job.model_copy(update={"optim": job.optim.model_copy(update={"lr": 1e30})})
    reporter = raylike_run.Reporter(job.run_dir)
    assert run_training_loop(job, 0, 1, CPU, None, reporter) == "diverged"
    last = reporter.reports[-1]
    assert last["status"] == "diverged" and last["step"] == 4 and last["nonfinite_skipped"] == 3
    assert "3 steps in a row (max_nonfinite_steps=3)" in last["message"]
    assert reporter.checkpoints == [] and latest_valid_checkpoint(job.run_dir) is None


def test_finished_run_reports_once_and_trains_no_further(make_job_dict, raylike_run) -> None:
    job = job_from_dict(make_job_dict("done", steps=2))
    first = raylike_run.Reporter(job.run_dir)
    run_training_loop(job, 0, 1, CPU, None, first)
    again = raylike_run.Reporter(job.run_dir)
    assert run_training_loop(job, 0, 1, CPU, first.latest, again) == "finished"
    assert again.reports == [{"step": 2, "status": "finished", "start_step": 2, "world_size": 1}]
    assert again.checkpoints == []


def test_training_samples_are_the_ema_models_seeded_samples(make_job_dict, raylike_run) -> None:
    from msc_core.interfaces import GenerationRequest
    from msc_ray_train.sampling import load_trained_model
    from msc_ray_train.video_output import read_gif, video_to_rgb_frames

    job = job_from_dict(make_job_dict("sampled", steps=2, sample_every=2, sample_steps=3, seed=5))
    run_training_loop(job, 0, 1, CPU, None, raylike_run.Reporter(job.run_dir))
    frames = read_gif(job.run_dir / "samples" / "step-00000002.gif")
    ema_model = load_trained_model(job.run_dir)  # the exported EMA weights at step 2
    video = ema_model.generate(GenerationRequest(num_frames=4, seed=5, num_steps=3))[0]
    expected = video_to_rgb_frames(video, scale=4)
    assert frames.shape[1:] == (64, 64, 3)
    assert abs(frames[0].astype(int) - expected[0].astype(int)).max() <= 2  # GIF palette rounding


def test_moving_mnist_batches_follow_the_datasets_stream_split_by_rank(make_job_dict) -> None:
    from msc_data import MovingMNIST
    from msc_ray_train.clip_batches import MovingMNISTBatches, downsample_video

    job = job_from_dict(make_job_dict(model={**make_job_dict()["model"], "num_classes": 10}))
    for rank in (0, 1):
        batches = MovingMNISTBatches(job.data, 3, rank, 2, 2, with_labels=True)
        stream = MovingMNIST(job.data.clip_config(), seed=3, channels=1, with_motion=False, rank=rank, world_size=2)
        loader = iter(torch.utils.data.DataLoader(stream, batch_size=2))
        for step in range(3):
            expected = next(loader)
            got = batches.batch(step)
            assert torch.equal(got["video"], downsample_video(expected["video"], 16))
            assert torch.equal(got["label"], expected["labels"][:, 0])
        assert batches.position(3) == {"source": "moving-mnist", "next_clip": 3 * 2 * 2 + rank}
