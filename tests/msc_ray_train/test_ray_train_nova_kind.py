"""NOVA through the training service (`kind: nova`): captions in, exact resume, sampling out.

A tiny text-conditional NOVA trains in-process through `run_training_loop` (the function
every Ray worker runs) on moving MNIST, whose batches carry each clip's caption, motion
score and fps from msc_data. A recording `prepare_model` hook sees every batch the model
trains on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from msc_core.interfaces import GenerationRequest
from msc_data.clip_format import make_clip_sample
from msc_data.motion import motion_score
from msc_data.moving_mnist import moving_mnist_caption, render_moving_mnist
from msc_ray_train.cli import main as msc_main
from msc_ray_train.job import job_from_dict, load_job
from msc_ray_train.sampling import load_trained_model
from msc_ray_train.train_loop import read_metrics, run_training_loop
from msc_ray_train.video_output import read_gif, video_to_rgb_frames

CPU = torch.device("cpu")
STEPS, BATCH = 24, 4
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def nova_job_dict(storage: Path, name: str, **changes: Any) -> dict[str, Any]:
    """A ~60k-parameter NOVA on 4-frame 16x16 one-digit moving MNIST (16 tokens per frame)."""
    job: dict[str, Any] = {
        "model": {
            "kind": "nova", "in_channels": 1, "patch_size": 4, "sample_size": [16, 16], "num_frames": 4,
            "dim": 32, "num_heads": 2, "temporal_depth": 1, "spatial_encoder_depth": 1, "spatial_decoder_depth": 1,
            "scale_shift_rank": 8, "head_width": 32, "head_depth": 2, "sampling_diffusion_steps": 10,
            "max_text_length": 40, "text_depth": 1, "motion_scale": 1.0,
        },
        "data": {"source": "moving-mnist", "frames": 4, "size": 32, "output_size": 16, "num_digits": 1,
                 "channels": 1},
        "optim": {"lr": 2e-3, "warmup_steps": 2},
        "ema": {"decay": 0.9},
        "steps": STEPS, "batch_size": BATCH, "checkpoint_every": 4, "keep_checkpoints": 8, "log_every": 4,
        "sample_every": STEPS, "sample_steps": 4, "seed": 3,
        "scaling": {"workers": 1},
        "run": {"name": name, "storage_path": str(storage)},
    }
    job.update(changes)
    return job


class RecordingLossModule(nn.Module):
    """Wraps the loss module like DDP would, and keeps a copy of every batch it sees."""

    def __init__(self, module: nn.Module, seen: list[dict[str, Any]]) -> None:
        super().__init__()
        self.module, self.seen = module, seen

    def forward(self, batch: dict[str, Any], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        self.seen.append({k: v.clone() if isinstance(v, torch.Tensor) else list(v) for k, v in batch.items()})
        return self.module(batch, generator)


def recording(seen: list[dict[str, Any]]) -> Any:
    return lambda module: RecordingLossModule(module, seen)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, raylike_run: Any) -> Any:
    """One uninterrupted run: its job, reporter and the batches of steps 0..STEPS-1."""
    job = job_from_dict(nova_job_dict(tmp_path_factory.mktemp("runs"), "straight"))
    reporter, seen = raylike_run.Reporter(job.run_dir), []
    assert run_training_loop(job, 0, 1, CPU, None, reporter, prepare_model=recording(seen)) == "finished"
    return job, reporter, seen


def test_nova_loss_decreases_on_captioned_moving_mnist(straight: Any) -> None:
    job, reporter, _ = straight
    losses = [r["loss"] for r in reporter.reports]
    assert [r["step"] for r in reporter.reports] == list(range(4, STEPS + 1, 4))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.6 * losses[0], losses
    logged = read_metrics(job.run_dir)
    assert {"loss_first_frame", "loss_later_frames"} <= set(logged[-1])


def test_batches_carry_each_clips_caption_motion_and_fps_from_msc_data(straight: Any) -> None:
    job, _, seen = straight
    assert len(seen) == STEPS
    clip_config = job.data.clip_config()
    for step in (0, 1, STEPS - 1):
        batch = seen[step]
        for i in range(BATCH):
            clip = render_moving_mnist(clip_config, job.seed, step * BATCH + i)  # rank 0 of 1 reads clips in order
            assert batch["caption"][i] == moving_mnist_caption(clip.labels, clip.speeds)
            assert batch["caption"][i].startswith(f"the digit {DIGIT_WORDS[clip.labels[0]]} ")
            assert batch["motion"][i].item() == pytest.approx(motion_score(clip.frames), rel=1e-6)
            assert batch["fps"][i].item() == clip_config.fps
    captions = {c for batch in seen for c in batch["caption"]}
    assert len(captions) >= 5  # many digits, not one fixed prompt


def test_resume_continues_bit_identically_on_the_same_batches(
    straight: Any, tmp_path: Path, raylike_run: Any
) -> None:
    job_a, reporter_a, seen_a = straight
    job = job_from_dict(nova_job_dict(tmp_path / "runs", "crashed", steps=12, sample_every=0))
    seen: list[dict[str, Any]] = []
    resumed = raylike_run.crash_and_resume(job, crash_at_step=12, prepare_model=recording(seen))
    # crashed while reporting step 12: steps 0..11 ran, then 8..11 again from checkpoint 8
    assert [r["start_step"] for r in resumed.reports] == [8]
    assert len(seen) == 12 + 4
    for before, after in zip(seen[8:12], seen[12:]):
        assert before["caption"] == after["caption"]
        assert torch.equal(before["video"], after["video"]) and torch.equal(before["motion"], after["motion"])
    # the straight run (same seed and data, longer schedule) saw exactly these batches too
    for step in range(12):
        assert seen[step]["caption"] == seen_a[step]["caption"]
        assert torch.equal(seen[step]["video"], seen_a[step]["video"])

    uninterrupted = job_from_dict(nova_job_dict(tmp_path / "runs", "uninterrupted", steps=12, sample_every=0))
    reporter = raylike_run.Reporter(uninterrupted.run_dir)
    assert run_training_loop(uninterrupted, 0, 1, CPU, None, reporter) == "finished"
    assert resumed.reports[-1]["loss"] == reporter.reports[-1]["loss"]
    raylike_run.assert_same_training_state(job, reporter.latest, resumed.latest)


def test_training_sample_is_the_ema_models_sample_for_the_caption_of_clip_0(straight: Any) -> None:
    job, _, _ = straight
    frames = read_gif(job.run_dir / "samples" / f"step-{STEPS:08d}.gif")
    caption = render_moving_mnist(job.data.clip_config(), job.seed, 0).caption
    model = load_trained_model(job.run_dir)  # the exported EMA weights at the last step
    video = model.generate(GenerationRequest(num_frames=4, seed=job.seed, num_steps=4, prompt=caption))[0]
    expected = video_to_rgb_frames(video, scale=4)
    assert frames.shape == expected.shape
    assert abs(frames.astype(int) - expected.astype(int)).max() <= 2  # GIF palette rounding
    other = model.generate(GenerationRequest(num_frames=4, seed=job.seed, num_steps=4, prompt="the digit"))[0]
    assert not torch.equal(video, other)  # the caption conditions the sample


def test_msc_sample_with_a_caption_writes_model_generate(straight: Any, tmp_path: Path) -> None:
    job, _, _ = straight
    out = tmp_path / "seven.gif"
    caption = "the digit seven bouncing around"
    code = msc_main([
        "sample", str(job.run_dir), "--frames", "6", "--caption", caption, "--steps", "4", "--guidance", "2",
        "--seed", "7", "--scale", "1", "--out", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    frames = read_gif(out)
    model = load_trained_model(job.run_dir / "model")
    request = GenerationRequest(num_frames=6, prompt=caption, num_steps=4, guidance_scale=2.0, seed=7)
    expected = video_to_rgb_frames(model.generate(request)[0].float().clamp(-1, 1), scale=1)
    assert frames.shape == (6, 16, 16, 3)  # 6 frames: past the 4-frame training window
    assert abs(frames.astype(int) - expected.astype(int)).max() <= 2


def test_msc_sample_refuses_more_set_by_set_steps_than_tokens(straight: Any, tmp_path: Path, capsys) -> None:
    job, _, _ = straight
    code = msc_main(["sample", str(job.run_dir), "--frames", "2", "--caption", "x", "--steps", "17",
                     "--out", str(tmp_path / "x.gif"), "--no-progress"])
    assert code == 2 and "num_steps=17 must be in 1..16" in capsys.readouterr().err


def _write_shard(path: Path, captions: list[str]) -> dict[str, float]:
    """A tar shard of 8-frame 16x16 clips with the given captions; caption -> motion score."""
    import webdataset as wds

    rng = torch.Generator().manual_seed(0)
    motions = {}
    with wds.TarWriter(str(path)) as sink:
        for i, caption in enumerate(captions):
            frames = (torch.rand(8, 16, 16, 3, generator=rng) * 255).to(torch.uint8).numpy()
            motions[caption] = 0.5 + i
            sink.write(make_clip_sample(f"clip{i:03d}", frames, source="test", caption=caption, fps=12.0,
                                        motion=motions[caption], start_frame=0, clip_format="npy"))
    return motions


def shard_job(tmp_path: Path, shard: Path, **model: Any) -> Any:
    job = nova_job_dict(tmp_path / "runs", shard.stem, steps=2, sample_every=0, checkpoint_every=2)
    job["model"] = {**job["model"], **model}
    job["data"] = {"source": "shards", "path": [str(shard)], "frames": 4, "size": 16, "channels": 1,
                   "shuffle_buffer": 0}
    return job_from_dict(job)


def test_shard_batches_carry_the_shards_captions_and_captionless_clips_are_refused(tmp_path: Path) -> None:
    captioned = tmp_path / "captioned.tar"
    motions = _write_shard(captioned, ["a red ball", "a blue cube", "a green cone"])
    seen: list[dict[str, Any]] = []
    run_training_loop(shard_job(tmp_path, captioned), 0, 1, CPU, None, lambda m, c: None,
                      prepare_model=recording(seen))
    for batch in seen:
        for caption, motion, fps in zip(batch["caption"], batch["motion"], batch["fps"]):
            assert motion.item() == motions[caption] and fps.item() == 12.0

    captionless = tmp_path / "captionless.tar"
    _write_shard(captionless, ["", ""])
    with pytest.raises(ValueError, match=r"data.source='shards'.*without a caption.*text-conditional"):
        run_training_loop(shard_job(tmp_path, captionless), 0, 1, CPU, None, lambda m, c: None)
    # without text (every caption dropped to the null token) the same shards train
    unconditional = shard_job(tmp_path, captionless, text_drop_prob=1.0)
    assert run_training_loop(unconditional, 0, 1, CPU, None, lambda m, c: None) == "finished"


def test_shipped_nova_job_trains_a_text_conditioned_nova_on_moving_mnist() -> None:
    job = load_job(Path(__file__).parents[2] / "services" / "ray-train" / "jobs" / "nova.yaml")
    assert job.model.kind == "nova" and job.model.text_drop_prob < 1.0
    assert job.data.source == "moving-mnist" and job.data.num_digits == 1
    assert job.sample_steps <= job.model.token_grid[0] * job.model.token_grid[1]


def test_msc_sample_refuses_a_caption_for_a_model_without_text(make_job_dict, tmp_path: Path, capsys) -> None:
    job = job_from_dict(make_job_dict("ardiffusion", steps=2))
    run_training_loop(job, 0, 1, CPU, None, lambda m, c: None)
    code = msc_main(["sample", str(job.run_dir), "--frames", "2", "--caption", "a digit", "--steps", "2",
                     "--out", str(tmp_path / "x.gif"), "--no-progress"])
    assert code == 2 and "--caption is for text-conditional models" in capsys.readouterr().err


def test_nova_without_caption_dropout_trains_under_ddp(tmp_path: Path, raylike_run: Any) -> None:
    """text_drop_prob=0 never uses the null-caption parameter: DDP (what Ray's workers wrap
    the model in) needs find_unused_parameters, which `data_parallel_options` turns on."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from msc_ray_train.train_loop import data_parallel_options

    def job_named(name: str) -> Any:
        job = nova_job_dict(tmp_path / "runs", name, steps=3, sample_every=0, checkpoint_every=3)
        job["model"] = {**job["model"], "text_drop_prob": 0.0}
        return job_from_dict(job)

    single = job_named("single")
    reporter = raylike_run.Reporter(single.run_dir)
    run_training_loop(single, 0, 1, CPU, None, reporter)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        job = job_named("ddp")
        options = data_parallel_options(job)
        assert options == {"find_unused_parameters": True}
        ddp = raylike_run.Reporter(job.run_dir)
        wrap = lambda module: DistributedDataParallel(module, **options)  # noqa: E731
        assert run_training_loop(job, 0, 1, CPU, None, ddp, prepare_model=wrap) == "finished"
        assert [r["loss"] for r in ddp.reports] == [r["loss"] for r in reporter.reports]
        with pytest.raises(RuntimeError, match="find_unused_parameters"):
            run_training_loop(job_named("plain"), 0, 1, CPU, None, lambda m, c: None,
                              prepare_model=DistributedDataParallel)
    finally:
        dist.destroy_process_group()
    assert data_parallel_options(job_from_dict(nova_job_dict(tmp_path, "dropout"))) == {}


def test_a_nova_job_whose_training_samples_would_fail_is_refused_up_front(tmp_path: Path) -> None:
    from msc_core.config import ConfigError

    # 16 tokens per frame: a sample takes at most 16 set-by-set steps
    assert job_from_dict(nova_job_dict(tmp_path, "ok", sample_steps=16)).sample_steps == 16
    with pytest.raises(ConfigError, match="sample_steps=17 but a nova sample takes at most 16 steps"):
        job_from_dict(nova_job_dict(tmp_path, "too-many", sample_steps=17))
    assert job_from_dict(nova_job_dict(tmp_path, "no-samples", sample_steps=17, sample_every=0)).sample_every == 0
