"""The per-worker training loop that Ray Train's `TorchTrainer` runs (one DDP process each).

Each worker builds the model from the job (same seed, so the same init on every rank;
DDP also broadcasts rank 0's weights), restores the newest valid checkpoint of the run
(a re-run of the same job name, or a restart after a worker failure; see
`restore_latest`), and trains on its own slice of the data (`clip_batches`):

- randomness: step `k` of rank `r` draws its timesteps and noise from a generator
  seeded with `rank_seed(seed + k, r)`, so a resumed run draws exactly what an
  uninterrupted one would have;
- step: forward under bf16 autocast (GPU, optional), backward, global grad-norm
  clipping, AdamW, LR schedule, EMA. A step whose loss or grad norm is not finite on
  any rank is skipped by every rank (the decision is all-reduced), counted, and after
  `max_nonfinite_steps` in a row the run stops with status "diverged";
- every `log_every` / `checkpoint_every` steps all ranks call `ray.train.report` with
  metrics averaged over ranks (loss terms, lr, grad norm, samples/s, tokens/s,
  skipped samples and steps); rank 0 alone writes the checkpoint
  (`train_checkpoint`), refreshes the exported EMA model `<run>/model/`, appends to
  `<run>/metrics.jsonl` and, optionally, TensorBoard. Every rank writes a heartbeat
  `<run>/workers/rank-<r>.json` (pid, host, step).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import socket
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
import torch.distributed as dist
from torch import nn

from msc_core.checkpoint import atomic_write_text
from msc_core.interfaces import GenerationRequest
from msc_core.pipeline import VideoPipeline
from msc_core.runtime import rank_seed
from msc_core.validation import finite_checks

from msc_ray_train.clip_batches import make_clip_batches
from msc_ray_train.ema import ExponentialMovingAverage
from msc_ray_train.job import LatentCacheSource, TrainJob
from msc_ray_train.latent_kinds import LatentBatches, is_latent_model, load_frozen_tokenizer
from msc_ray_train.model_kinds import build_model, model_kind, tokens_per_clip
from msc_ray_train.optimization import build_optimizer, build_scheduler
from msc_ray_train.sampling import PIPELINE_DIR, reproduce_beside_clip
from msc_ray_train.train_checkpoint import (
    CorruptCheckpointError,
    TrainerState,
    checkpoint_dirs,
    export_model,
    latest_valid_checkpoint,
    load_checkpoint,
    verify_checkpoint,
    write_checkpoint,
)
from msc_ray_train.video_output import video_to_rgb_frames, write_gif

logger = logging.getLogger("msc_ray_train")

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
WORKERS_DIR = "workers"
SAMPLES_DIR = "samples"


class TrainingLossModule(nn.Module):
    """Makes `training_losses` the `forward` of the model, so DDP can hook it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.takes_generator = "generator" in inspect.signature(model.training_losses).parameters

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        if self.takes_generator:
            return self.model.training_losses(batch, generator=generator)
        if generator is None:
            return self.model.training_losses(batch)
        # A model that draws from the global RNG (the tokenizers' posterior sample): seed it
        # from the step's generator inside a fork, so its draws are a function of
        # (seed, step, rank) as well and the caller's RNG state is left as it was.
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        cuda = [generator.device] if generator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            return self.model.training_losses(batch)


# --------------------------------------------------------------------------- one step


@dataclass
class StepResult:
    losses: dict[str, float]
    grad_norm: float
    applied: bool


def _all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """True only when `flag` is True on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0.5)


def training_step(
    loss_module: nn.Module,
    model: nn.Module,
    ema: ExponentialMovingAverage,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainerState,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator | None,
    grad_clip: float | None,
    autocast: Callable[[], ContextManager[Any]] = nullcontext,
) -> StepResult:
    """One optimizer step; skipped (weights, optimizer and EMA untouched) when non-finite.

    Backward always runs, so DDP's gradient all-reduce stays in lock-step across ranks;
    the decision to apply the update is taken on the loss and the global grad norm and
    all-reduced, so every rank applies or skips together.
    """
    # the hot path: a non-finite batch or loss is this step's to skip and count (never an
    # exception), and the entry points' NaN checks would cost a host sync per call
    with autocast(), finite_checks(False):
        losses = loss_module(batch, generator)
    loss = losses["loss"]
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf)
    finite = bool(torch.isfinite(loss.detach()).item()) and bool(torch.isfinite(grad_norm).item())
    applied = _all_ranks_agree(finite, loss.device)
    if applied:
        optimizer.step()
        ema.update(model, state.ema_updates)
        state.ema_updates += 1
        state.nonfinite_in_a_row = 0
    else:
        state.nonfinite_total += 1
        state.nonfinite_in_a_row += 1
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    state.step += 1
    return StepResult({k: float(v.detach()) for k, v in losses.items()}, float(grad_norm), applied)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of step `step` on rank `rank`: a pure function of (seed, step, rank)."""
    return torch.Generator(device=device).manual_seed(rank_seed(seed + step, rank))


# --------------------------------------------------------------------------- metrics


@dataclass
class MetricWindow:
    """Sums since the last report; `reduce` averages them over steps and ranks."""

    loss_sums: dict[str, float] = field(default_factory=dict)
    applied: int = 0
    steps: int = 0
    grad_norm_sum: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, result: StepResult) -> None:
        self.steps += 1
        if result.applied:
            self.applied += 1
            self.grad_norm_sum += result.grad_norm
            for name, value in result.losses.items():
                self.loss_sums[name] = self.loss_sums.get(name, 0.0) + value

    def reduce(self, loss_names: list[str], device: torch.device, world_size: int) -> dict[str, float | None]:
        values = torch.tensor(
            [self.loss_sums.get(n, 0.0) for n in loss_names] + [self.grad_norm_sum, float(self.applied)],
            dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device,
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(values)
        *sums, grad_sum, applied = values.tolist()
        out: dict[str, float | None] = {
            name: (s / applied if applied else None) for name, s in zip(loss_names, sums)
        }
        out["grad_norm"] = grad_sum / applied if applied else None
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        out["steps_per_s"] = self.steps / elapsed
        return out


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of `<run>/metrics.jsonl`; for a step logged twice (a restart redid it) the last wins."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a killed writer
        by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def write_heartbeat(run_dir: Path, rank: int, step: int) -> None:
    record = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "step": step, "time": time.time()}
    atomic_write_text(run_dir / WORKERS_DIR / f"rank-{rank}.json", json.dumps(record))


# --------------------------------------------------------------------------- resume


def restore_latest(
    run_dir: Path,
    ray_checkpoint_dir: str | None,
    model: nn.Module,
    ema: ExponentialMovingAverage,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[TrainerState, Path | None, dict[str, str]]:
    """Load the newest checkpoint of the run that verifies and loads; a new run when there
    is none. Returns the state, the checkpoint and `{name: why}` of each one skipped.

    Ray Train hands over the latest checkpoint it registered. The run directory can hold
    a newer complete one: Ray registers a checkpoint only once its controller has
    collected the report from every worker, and a worker group that dies in between
    leaves it written but unregistered. A checkpoint whose files do not match their
    manifest, or that does not load (weights that do not fit, an optimizer state
    `torch.load(weights_only=True)` refuses), is skipped for the one before it.
    """
    skipped: dict[str, str] = {}
    candidates: list[tuple[int, Path]] = []
    for directory in checkpoint_dirs(run_dir):
        try:
            candidates.append((int(verify_checkpoint(directory)["step"]), directory))
        except CorruptCheckpointError as err:
            skipped[directory.name] = str(err)
    for _, directory in sorted(candidates, key=lambda c: c[0], reverse=True):
        try:
            return load_checkpoint(directory, model, ema.model, optimizer, scheduler), directory, skipped
        except CorruptCheckpointError as err:
            skipped[directory.name] = str(err)
    if candidates or ray_checkpoint_dir is not None:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise CorruptCheckpointError(
            f"no checkpoint of {run_dir} verifies and loads ({reasons}); restore one, or delete the run directory "
            "to start over"
        )
    return TrainerState(), None, skipped


# --------------------------------------------------------------------------- the loop


def _is_report_step(job: TrainJob, step: int) -> bool:
    return step % job.log_every == 0 or step % job.checkpoint_every == 0 or step == job.steps


def _write_training_sample(
    job: TrainJob, ema_model: nn.Module, run_dir: Path, step: int, prompt: str | None = None,
    clip: torch.Tensor | None = None, tokenizer: nn.Module | None = None,
) -> None:
    """`<run>/samples/step-N.gif`: a generator's seeded sample (decoded by the tokenizer for a
    latent model), or, for a clip-to-clip model (tokenizer, cascade), its version of `clip`
    (B=1) beside the clip itself."""
    if model_kind(job.model.kind).reproduce_clip is not None:
        if clip is None:
            raise ValueError(f"a {job.model.kind} training sample needs the clip it reproduces")
        video = reproduce_beside_clip(ema_model, clip, job.seed, job.sample_steps)
        write_gif(run_dir / SAMPLES_DIR / f"step-{step:08d}.gif", video_to_rgb_frames(video, scale=4), fps=8.0)
        return
    label = job.seed % 10 if job.class_conditional else None  # a fixed digit, to watch it improve
    request = GenerationRequest(num_frames=job.clip_shape()[1], seed=job.seed, num_steps=job.sample_steps,
                                class_label=label, prompt=prompt)
    if tokenizer is not None:  # a latent model: generate latents, decode them with the tokenizer
        video = VideoPipeline(ema_model, tokenizer, job.model.latent_normalization)(request)[0]
    else:
        video = ema_model.generate(request)[0]  # (C, T, H, W)
    write_gif(run_dir / SAMPLES_DIR / f"step-{step:08d}.gif", video_to_rgb_frames(video, scale=4), fps=8.0)


ReportFn = Callable[[dict[str, Any], "str | None"], None]


def run_training_loop(
    job: TrainJob,
    rank: int,
    world_size: int,
    device: torch.device,
    restore_from: str | None,
    report: ReportFn,
    prepare_model: Callable[[nn.Module], nn.Module] = lambda module: module,
) -> str:
    """Train `job` on this rank until `job.steps`; returns the final status.

    `restore_from`: the checkpoint directory Ray Train handed over (None when it has
    none); the run resumes from the newest valid checkpoint of the run (`restore_latest`).
    `report(metrics, checkpoint_dir)`: called on every rank at every report step;
    `checkpoint_dir` is a directory rank 0 has just written (None otherwise), valid only
    during the call. `prepare_model` wraps the loss module for data parallelism (DDP).
    """
    run_dir = job.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(job.seed)  # the same initial weights on every rank
    model = build_model(job.model).to(device)
    ema = ExponentialMovingAverage(model, job.ema)
    optimizer = build_optimizer(model, job.optim)
    scheduler = build_scheduler(optimizer, job.optim, job.steps)
    state, restored, skipped = restore_latest(run_dir, restore_from, model, ema, optimizer, scheduler)
    start_step = state.step
    loss_module = prepare_model(TrainingLossModule(model))
    kind = model_kind(job.model.kind)
    batches = make_clip_batches(
        job.data, job.seed, rank, world_size, job.batch_size, start_step, with_labels=job.class_conditional,
        with_captions=kind.with_captions(job.model), needs_captions=kind.needs_captions(job.model),
    )
    tokenizer = None  # a latent model's frozen tokenizer: encodes pixel clips, decodes rank 0's samples
    if is_latent_model(job.model):
        encodes = not isinstance(job.data, LatentCacheSource)
        if encodes or rank == 0:
            tokenizer = load_frozen_tokenizer(job.model.tokenizer_path, device)
        batches = LatentBatches(batches, tokenizer if encodes else None, job.model.latent_normalization, device)
    use_bf16 = job.precision == "bf16" and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext
    clip_tokens = tokens_per_clip(job.model, job.clip_shape())
    sample_clip: torch.Tensor | None = None  # the first clip this worker trains on (clip-to-clip samples)
    writer = _tensorboard_writer(run_dir) if job.tensorboard and rank == 0 else None
    if rank == 0:
        _append_jsonl(run_dir / EVENTS_FILE, {
            "event": "start", "time": time.time(), "step": start_step, "world_size": world_size,
            "resumed_from": str(restored) if restored else None, "damaged_checkpoints": skipped,
        })

    loss_names: list[str] | None = None
    window = MetricWindow()
    status = "finished" if state.step >= job.steps else "running"
    while state.step < job.steps:
        batch = {  # captions stay lists of str
            k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batches.batch(state.step).items()
        }
        if sample_clip is None and "video" in batch:
            sample_clip = batch["video"][:1].detach().clone()
        generator = step_generator(job.seed, state.step, rank, device)
        result = training_step(
            loss_module, model, ema, optimizer, scheduler, state, batch, generator, job.optim.grad_clip, autocast
        )
        loss_names = loss_names or sorted(result.losses)
        window.add(result)
        diverged = state.nonfinite_in_a_row >= job.max_nonfinite_steps
        if diverged:
            status = "diverged"
        elif state.step >= job.steps:
            status = "finished"
        if not (diverged or _is_report_step(job, state.step)):
            continue

        reduced = window.reduce(loss_names, device, world_size)
        samples_per_s = reduced.pop("steps_per_s") * job.batch_size * world_size
        metrics: dict[str, Any] = {
            "step": state.step,
            **reduced,
            "lr": scheduler.get_last_lr()[0],
            "samples_per_s": samples_per_s,
            "tokens_per_s": samples_per_s * clip_tokens,
            "corrupt_skipped": _sum_over_ranks(batches.corrupt_skipped, device),
            "nonfinite_skipped": state.nonfinite_total,
            "start_step": start_step,
            "world_size": world_size,
            "status": status,
        }
        if diverged:
            metrics["message"] = (
                f"stopped at step {state.step}: the loss or gradient was not finite for "
                f"{state.nonfinite_in_a_row} steps in a row (max_nonfinite_steps={job.max_nonfinite_steps}); "
                f"lower optim.lr, enable optim.grad_clip or check the data"
            )
        window = MetricWindow()
        write_heartbeat(run_dir, rank, state.step)
        save = not diverged and (state.step % job.checkpoint_every == 0 or state.step >= job.steps)
        with tempfile.TemporaryDirectory(prefix="msc-checkpoint-") as tmp:
            written = None
            if rank == 0:
                if save:
                    state.data_position = batches.position(state.step)
                    written = str(write_checkpoint(tmp, model, ema.model, optimizer, scheduler, state, job))
                    export_model(ema.model, run_dir, state.step)
                    if tokenizer is not None:  # `msc sample <run>` and VideoPipeline.from_pretrained read it
                        VideoPipeline(ema.model, tokenizer, job.model.latent_normalization).save_pretrained(
                            run_dir / PIPELINE_DIR
                        )
                _append_jsonl(run_dir / METRICS_FILE, {**metrics, "time": time.time()})
                if writer is not None:
                    for name, value in metrics.items():
                        if isinstance(value, (int, float)) and name != "step":
                            writer.add_scalar(name, value, state.step)
            report(metrics, written)
        if diverged:
            break
        if rank == 0 and job.sample_every and state.step % job.sample_every == 0:
            with finite_checks(False):  # a sample of a model that is going wrong is still worth writing
                _write_training_sample(job, ema.model, run_dir, state.step, batches.sample_caption, sample_clip,
                                       tokenizer)

    if status == "finished" and state.step == start_step:
        # nothing left to train (the run had already reached `steps`): still report once
        report({"step": state.step, "status": "finished", "start_step": start_step, "world_size": world_size}, None)
    if writer is not None:
        writer.close()
    return status


def data_parallel_options(job: TrainJob) -> dict[str, Any]:
    """Keyword arguments of `DistributedDataParallel` for the job's model."""
    if model_kind(job.model.kind).find_unused_parameters(job.model):
        return {"find_unused_parameters": True}
    return {}


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: `loop_config = {"job": TrainJob as a dict}`."""
    import ray.train
    import ray.train.torch

    _quiet_ray_train_reports()
    job = TrainJob.from_dict(loop_config["job"])
    context = ray.train.get_context()

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    checkpoint = ray.train.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint is not None else nullcontext(None)) as restore_from:
        run_training_loop(
            job, context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device(),
            restore_from, report,
            prepare_model=functools.partial(
                ray.train.torch.prepare_model, parallel_strategy_kwargs=data_parallel_options(job) or None
            ),
        )


def _quiet_ray_train_reports() -> None:
    """Ray Train logs every report and checkpoint at INFO (one on a logger named after its
    file); keep warnings and errors only."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as ray_train_context
    except ImportError:  # another Ray version: its logging stays as it is
        return
    logging.getLogger(ray_train_context.__file__).setLevel(logging.WARNING)


def _sum_over_ranks(count: int, device: torch.device) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return count
    value = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(value)
    return int(value.item())


def _tensorboard_writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # checked by the launcher as well; a worker may lack it on a cluster
        raise ModuleNotFoundError(
            "tensorboard: true needs the `tensorboard` package on every worker: pip install 'msc-ray-train[tensorboard]'"
        ) from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
