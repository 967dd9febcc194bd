"""`msc demo`: train a tiny AR-Diffusion model on moving MNIST with Ray Train, then sample.

Runs the bundled job `jobs/demo.yaml` (2 CPU workers, pixel-space MSC transformer on
32x32 moving digits, 8-frame clips), then generates a video twice the training length
with the AD scheduler (sliding window past the training length) and writes to `out/`:

    sample.mp4, sample.gif   generated 16-frame videos, one per digit (class-conditional job;
                             else 4 seeds) side by side, enlarged 3x
    real.gif                 training clips of the same digits, for comparison
    loss.png                 the training loss curve
    metrics.json             steps, final loss, wall time, samples/s, ... and, for a
                             class-conditional job, the recognition rate of the sampled
                             digits by msc-data's offline digit classifier
    runs/demo/               the Ray Train run: checkpoints, model/, metrics.jsonl

Re-running with the same `out/` resumes (or, when finished, reuses) the run.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msc_core.checkpoint import atomic_write_text

from msc_ray_train.clip_batches import MovingMNISTBatches
from msc_ray_train.model_kinds import model_kind
from msc_ray_train.job import MovingMNISTSource, TrainJob, load_job
from msc_ray_train.launch import run_training
from msc_ray_train.sampling import generate_video, load_trained_model
from msc_ray_train.train_loop import read_metrics
from msc_ray_train.video_output import frame_grid, video_to_rgb_frames, write_gif, write_mp4

SAMPLE_LENGTH_FACTOR = 2  # the demo samples twice the training clip length
SAMPLE_STEPS = 50  # DDIM steps per frame
# Half-way autoregressive: a frame starts when the previous one is half denoised.
SAMPLE_OFFSET = 25
SAMPLE_ETA = 0.0  # deterministic DDIM
GUIDANCE = 2.0  # classifier-free guidance toward each sample's digit (class-conditional job)
UNCONDITIONAL_SAMPLES = 4  # samples (seeds) shown by an unconditional job
GRID_COLUMNS = 5  # videos per row of sample.gif / real.gif
VIEW_SCALE = 3  # 32x32 frames are shown at 96x96
FPS = 8.0


def demo_job_path() -> Path:
    """The bundled demo job file (also at services/ray-train/jobs/demo.yaml)."""
    return Path(str(resources.files("msc_ray_train") / "jobs" / "demo.yaml"))


def plot_loss(records: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if points:
        steps, losses = zip(*points)
        ax.plot(steps, losses, lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (x0 MSE)")
    ax.set_yscale("log")
    ax.set_title("msc demo: AR-Diffusion on moving MNIST")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def real_clips(job: TrainJob, labels: list[int | None]) -> list[torch.Tensor]:
    """Clips `(C, T, H, W)` of the training stream: for each label the first clip of that
    digit (class-conditional jobs), else the first clips."""
    if not isinstance(job.data, MovingMNISTSource):
        raise ValueError("the demo job must use the moving-mnist data source")
    stream = MovingMNISTBatches(job.data, job.seed, 0, 1, 1, with_labels=job.class_conditional)
    wanted, found = set(labels), {}
    for index in range(100 * len(labels)):
        batch = stream.batch(index)
        label = int(batch["label"][0]) if "label" in batch else index
        if label in wanted and label not in found:
            found[label] = batch["video"][0]
        if len(found) == len(wanted):
            break
    return [found.get(label if label is not None else i, batch["video"][0]) for i, label in enumerate(labels)]


def side_by_side(videos: list[torch.Tensor]) -> np.ndarray:
    """Videos `(C, T, H, W)` in [-1, 1] tiled into one RGB video `(T, H', W', 3)`, 5 per row."""
    frames = [video_to_rgb_frames(v, scale=VIEW_SCALE) for v in videos]  # each (T, h, w, 3)
    columns = min(len(frames), GRID_COLUMNS)
    return np.stack([frame_grid(np.stack([f[t] for f in frames]), columns=columns) for t in range(len(frames[0]))])


def shortened(job: TrainJob, steps: int) -> TrainJob:
    """`job` trained for `steps` steps: warm-up at most a tenth of them, a log line at least
    every tenth, a checkpoint at least at the end."""
    return job.replace(
        steps=steps,
        optim=job.optim.replace(warmup_steps=min(job.optim.warmup_steps, steps // 10)),
        log_every=min(job.log_every, max(1, steps // 10)),
        checkpoint_every=min(job.checkpoint_every, steps),
    )


def digit_metrics(job: TrainJob, videos: list[torch.Tensor], labels: list[int | None]) -> dict[str, Any]:
    """Recognition of the sampled digits by msc-data's offline digit classifier
    (`msc_data.video_metrics`): the fraction of generated frames read as the requested
    digit (overall and per frame position) and the fraction read as their clip's majority
    digit. Only for class-conditional moving-MNIST jobs with one digit per clip."""
    data = job.data
    if not (isinstance(data, MovingMNISTSource) and data.num_digits == 1 and all(x is not None for x in labels)):
        return {}
    from msc_data.video_metrics import identity_consistency, recognition_rate

    batch = torch.stack(videos)  # (B, C, T, H, W) in [-1, 1]
    rate = recognition_rate(batch, torch.tensor(labels))
    return {
        "recognition_rate": rate.overall,
        "recognition_rate_per_frame": [round(r, 3) for r in rate.per_frame],
        "identity_consistency": identity_consistency(batch),
    }


def run_demo(
    out: str | Path,
    job_path: str | Path | None = None,
    address: str | None = None,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    ray_logs: bool = False,
    steps: int | None = None,
) -> dict[str, Any]:
    """Train the demo job into `out/runs/`, sample, and write the files listed above.

    `steps`: train this many steps instead of the job's (warm-up, logging and checkpoint
    cadence shrink with it); a re-run with more steps continues the same run."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    job = load_job(job_path or demo_job_path(), overrides={"run.storage_path": str(out / "runs"), **(overrides or {})})
    if steps is not None:
        job = shortened(job, steps)
    outcome = run_training(job, address=address, progress=progress, ray_logs=ray_logs)
    train_done = time.perf_counter()

    model = load_trained_model(outcome.model_dir)
    num_classes = model_kind(job.model.kind).num_classes(job.model)
    labels: list[int | None] = list(range(num_classes)) if num_classes else [None] * UNCONDITIONAL_SAMPLES
    guidance = GUIDANCE if num_classes else 1.0
    num_frames = SAMPLE_LENGTH_FACTOR * job.data.frames
    videos = [
        generate_video(
            model, num_frames, seed=job.seed + i, num_steps=SAMPLE_STEPS, offset=SAMPLE_OFFSET, eta=SAMPLE_ETA,
            class_label=label, guidance_scale=guidance, progress=progress,
        )
        for i, label in enumerate(labels)
    ]
    frames = side_by_side(videos)  # (2T, H', W', 3)
    write_mp4(out / "sample.mp4", frames, FPS)
    write_gif(out / "sample.gif", frames, FPS)
    write_gif(out / "real.gif", side_by_side(real_clips(job, labels)), FPS)
    records = read_metrics(outcome.run_dir)
    plot_loss(records, out / "loss.png")

    losses = [r["loss"] for r in records if r.get("loss") is not None]
    speeds = [r["samples_per_s"] for r in records if r.get("samples_per_s") is not None]
    summary = {
        "steps": outcome.step,
        "resumed_from_step": outcome.start_step,
        "workers": job.scaling.workers,
        "batch_size_per_worker": job.batch_size,
        "train_frames": job.data.frames,
        "sample_frames": num_frames,
        "sample_digits": labels if num_classes else None,
        "sample_seeds": [job.seed + i for i in range(len(labels))],
        "sampler": {"steps": SAMPLE_STEPS, "offset": SAMPLE_OFFSET, "eta": SAMPLE_ETA, "guidance_scale": guidance},
        "frame_size": job.data.frame_size,
        **digit_metrics(job, videos, labels),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "samples_per_s": sum(speeds) / len(speeds) if speeds else None,
        "tokens_per_s": outcome.metrics.get("tokens_per_s"),
        "nonfinite_skipped": outcome.metrics.get("nonfinite_skipped"),
        "train_wall_time_s": round(train_done - started, 1),
        "sample_wall_time_s": round(time.perf_counter() - train_done, 1),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "run_dir": str(outcome.run_dir),
    }
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2))
    return summary
