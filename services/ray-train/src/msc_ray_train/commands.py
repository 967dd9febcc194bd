"""`msc train`, `msc sample`, `msc demo`: the subcommands this service adds to `msc`.

    msc train JOB [--workers N] [--gpu] [--address ADDR] [--storage-path DIR]
    msc train --list
    msc sample MODEL --frames N --out video.mp4 [--prefix video.mp4] [--offset s] [--caption TEXT]
    msc demo [--out DIR] [--steps N]

JOB is a job YAML file or the name of a job shipped in this package (`msc train demo`,
`msc train --list`). MODEL is a run folder, an exported `model/` folder or a
`checkpoint_*` folder. This module stays cheap to import (`msc --help`): torch, Ray and
the models are imported when a command runs.

Registered under the `msc.commands` entry-point group (msc_core.cli). User mistakes (a
missing file, an invalid job, a damaged checkpoint) print one `msc: error: ...` line and
exit with status 2; a failed or diverged training run exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from msc_core.cli import (
    Command,
    add_device_flag,
    add_model_argument,
    add_progress_flag,
    add_threads_flag,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    set_threads,
)

JOB_SUFFIXES = (".yaml", ".yml")

# --------------------------------------------------------------------------- shipped jobs


def shipped_jobs() -> dict[str, Path]:
    """The job files shipped inside this package (`msc_ray_train/jobs/*.yaml`), by name."""
    folder = resources.files("msc_ray_train") / "jobs"
    return {Path(entry.name).stem: Path(str(entry)) for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(JOB_SUFFIXES)}


def job_summary(path: Path) -> str:
    """The first comment line of a job file (what it trains)."""
    for line in path.read_text().splitlines():
        text = line.lstrip("#").strip()
        if line.startswith("#") and text:
            return text
    return ""


def resolve_job(text: str) -> Path:
    """A job argument: an existing file, else the name of a shipped job."""
    path = Path(text)
    if path.is_file():
        return path
    jobs = shipped_jobs()
    name = path.stem if path.suffix in JOB_SUFFIXES and path.parent == Path(".") else text
    if name in jobs and path.parent == Path("."):
        return jobs[name]
    names = ", ".join(jobs)
    if path.suffix in JOB_SUFFIXES or len(path.parts) > 1:
        raise FileNotFoundError(f"job file not found: {text} (shipped jobs: {names})")
    raise ValueError(f"unknown job {text!r}: no such file and no shipped job of that name; shipped jobs: {names} "
                     "(msc train --list)")


# --------------------------------------------------------------------------- msc train


def _configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs="?", metavar="JOB",
                        help="job YAML file, or the name of a shipped job (msc train --list)")
    parser.add_argument("--list", action="store_true", help="list the jobs shipped with msc-ray-train and exit")
    parser.add_argument("--workers", type=positive_int, help="override scaling.workers")
    parser.add_argument("--gpu", action="store_true", help="override scaling.use_gpu to true")
    parser.add_argument("--storage-path", metavar="DIR",
                        help="override run.storage_path (relative paths resolve against this directory; a cluster "
                        "run needs a path every node shares)")
    parser.add_argument("--address", help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: a private "
                        "local Ray on this machine, even when another Ray runs here; RAY_ADDRESS is read too)")
    add_progress_flag(parser)
    parser.add_argument("--ray-logs", action="store_true", help="show the output of Ray's workers and controller")


def _run_train(args: argparse.Namespace) -> int:
    if args.list:
        for name, path in shipped_jobs().items():
            print(f"{name:<14} {job_summary(path)}")
        return 0
    if args.job is None:
        raise ValueError("give a job file or a shipped job name (msc train --list shows them)")
    from msc_ray_train.job import load_job
    from msc_ray_train.launch import run_training
    from msc_ray_train.model_kinds import missing_model_files

    job_path = resolve_job(args.job)
    overrides: dict[str, object] = {}
    if args.workers is not None:
        overrides["scaling.workers"] = args.workers
    if args.gpu:
        overrides["scaling.use_gpu"] = True
    if args.storage_path is not None:
        overrides["run.storage_path"] = args.storage_path
    job = load_job(job_path, overrides=overrides)
    missing = missing_model_files(job.model)
    if missing:  # e.g. the cascade's VAE: refused here, before Ray starts
        raise FileNotFoundError(f"{args.job}: the model reads files that do not exist: {'; '.join(missing)}")
    outcome = run_training(job, address=args.address, progress=not args.no_progress, ray_logs=args.ray_logs)
    loss = outcome.metrics.get("loss")
    print(
        f"run {job.run.name!r}: step {outcome.step}/{job.steps}"
        + (f" (resumed from step {outcome.start_step})" if outcome.start_step else "")
        + (f", loss {loss:.4f}" if isinstance(loss, float) else "")
        + f", {outcome.wall_time_s:.0f} s\n"
        f"  run:        {outcome.run_dir}\n"
        f"  checkpoint: {outcome.checkpoint_dir}\n  model:      {outcome.model_dir}"
    )
    return 0


TRAIN = Command(
    name="train",
    help="run a training job on Ray Train (re-running it resumes)",
    description="Train the model of a job on Ray Train. JOB is a YAML file or the name of a shipped job. "
    "Re-running the same job (same run.name and run.storage_path) resumes from its latest checkpoint. "
    "Relative paths in the job resolve against the directory msc train runs in.",
    configure=_configure_train,
    run=_run_train,
    example="msc train resume --storage-path ./msc-runs --no-progress",
)


# --------------------------------------------------------------------------- msc sample


def _configure_sample(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, positional=True)
    parser.add_argument("--frames", type=positive_int, required=True, help="frames of the output (prefix included)")
    parser.add_argument("--out", required=True, type=Path, help="output .mp4 or .gif")
    parser.add_argument("--prefix", type=Path, help="video to continue: its first frames are kept")
    parser.add_argument("--prefix-frames", type=positive_int,
                        help="how many frames of --prefix to keep (default: all up to frames - 1)")
    parser.add_argument("--offset", type=non_negative_int,
                        help="AD scheduler offset s (0: synchronous, steps: autoregressive)")
    parser.add_argument("--steps", type=positive_int,
                        help="denoising steps per frame (default 50; NOVA: set-by-set steps per frame, default "
                        "the smaller of 8 and its tokens per frame)")
    parser.add_argument("--eta", type=non_negative_float, default=0.0,
                        help="DDIM noise: 0 deterministic (default), 1 ancestral")
    parser.add_argument("--class-label", type=int, help="class to generate (class-conditional models)")
    parser.add_argument("--guidance", type=non_negative_float, default=1.0,
                        help="classifier-free guidance scale with --class-label (default 1: none)")
    parser.add_argument("--caption", help="text prompt (caption) of a text-conditional model (NOVA); with "
                        "--guidance, classifier-free guidance against the null caption")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--fps", type=positive_float, default=8.0, help="frame rate of the written video (default 8)")
    parser.add_argument("--scale", type=positive_int, help="enlarge frames by this integer factor (default: to >= 128 px)")
    parser.add_argument("--stream", action="store_true",
                        help="write each frame as soon as it is final: --out an .mp4 that grows, or a folder of "
                        "numbered PNGs; prints the time to the first frame and frames/s")
    parser.add_argument("--decoder", choices=("torch", "onnx"), default="torch",
                        help="a latent model's decoder: its tokenizer in PyTorch, or tokenizer/decoder.onnx in "
                        "ONNX Runtime (msc export)")
    add_device_flag(parser)
    add_threads_flag(parser)
    add_progress_flag(parser)


def _output_file(out: Path, stream: bool = False) -> Path:
    if stream:  # an .mp4 that grows, or a folder of numbered PNGs
        if out.suffix.lower() == ".gif":
            raise ValueError(f"--stream cannot grow a GIF ({out}); name an .mp4 file or a folder for PNG frames")
        if out.suffix and out.suffix.lower() != ".mp4":
            raise ValueError(f"--stream writes an .mp4 or a folder of PNG frames, got {out}")
        if out.suffix.lower() == ".mp4" and out.is_dir():
            raise IsADirectoryError(f"--out {out} is a directory; name an .mp4 file")
        if not out.suffix and out.exists() and not out.is_dir():
            raise NotADirectoryError(f"--out {out} is a file; --stream writes PNG frames into a folder")
        return out
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"--out must name a .mp4 or .gif file, got {out}")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory; name a .mp4 or .gif file")
    return out


def default_sample_steps(config: Any) -> int:
    """`msc sample`'s steps per frame when `--steps` is not given: 50 DDIM steps; for NOVA
    the set-by-set steps, which cannot exceed a frame's tokens (8, or fewer tokens)."""
    if config.kind == "nova":
        rows, cols = config.token_grid
        return min(8, rows * cols)
    return 50


def _run_sample(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    out = _output_file(args.out, args.stream)
    from msc_core.pipeline import VideoPipeline
    from msc_core.runtime import resolve_device
    from msc_ray_train.model_kinds import model_kind
    from msc_ray_train.sampling import (
        find_pipeline,
        generate_video,
        load_trained_model,
        pipeline_frame_shape,
        read_prefix_video,
        read_video_clip,
    )
    from msc_ray_train.video_output import video_to_rgb_frames, write_video_file

    device = resolve_device(args.device)
    pipeline_dir = find_pipeline(args.model)
    if pipeline_dir is not None:  # a latent model: generator + tokenizer
        model = VideoPipeline.from_pretrained(pipeline_dir, device=device, decoder=args.decoder)
        config = model.generator.config
    else:
        if args.decoder != "torch":
            raise ValueError(f"--decoder {args.decoder} decodes a latent model's pipeline; {args.model} has none")
        model = load_trained_model(args.model, device=device)
        config = model.config
    if args.caption is not None and not model_kind(config.kind).with_captions(config):
        raise ValueError(
            f"--caption is for text-conditional models (kind 'nova'); {args.model} holds a {config.kind!r} model"
        )
    if pipeline_dir is None and model_kind(config.kind).reproduce_clip is not None:
        args.steps = args.steps or 50
        return _write_reproduction(args, model, out)
    if args.steps is None:
        args.steps = default_sample_steps(config)
    prefix = None
    if args.prefix is not None:
        max_frames = args.prefix_frames or args.frames - 1
        if pipeline_dir is not None:
            channels, height, width = pipeline_frame_shape(model)
            prefix = read_video_clip(args.prefix, channels, height, width, max_frames)
        else:
            prefix = read_prefix_video(args.prefix, model, max_frames=max_frames)
        if prefix.shape[2] >= args.frames:
            raise ValueError(f"--frames {args.frames} must exceed the {prefix.shape[2]} prefix frames it includes")
    if args.stream:
        return _stream_sample(args, model, out, prefix)
    video = generate_video(
        model, args.frames, seed=args.seed, num_steps=args.steps, offset=args.offset, eta=args.eta, prefix=prefix,
        class_label=args.class_label, guidance_scale=args.guidance,
        progress=not args.no_progress, prompt=args.caption,
    )
    height = video.shape[-2]
    scale = args.scale or max(1, 128 // height)
    write_video_file(out, video_to_rgb_frames(video, scale=scale), args.fps)
    print(f"wrote {out} ({video.shape[1]} frames, {height * scale}x{video.shape[-1] * scale})")
    return 0


def _stream_sample(args: argparse.Namespace, model: Any, out: Path, prefix: Any) -> int:
    """`msc sample --stream`: each frame written as soon as it is final."""
    from PIL import Image

    from msc_core.interfaces import GenerationRequest, SchedulerParams
    from msc_data.video_io import VideoWriter
    from msc_ray_train.sampling import stream_video
    from msc_ray_train.video_output import video_to_rgb_frames

    request = GenerationRequest(
        num_frames=args.frames, seed=args.seed, num_steps=args.steps, prefix=prefix, class_label=args.class_label,
        guidance_scale=args.guidance, scheduler=SchedulerParams(offset=args.offset, eta=args.eta),
        prompt=args.caption,
    )
    writer = VideoWriter(out, args.fps) if out.suffix else None
    if writer is None:
        out.mkdir(parents=True, exist_ok=True)
    count = 0

    def write(frame: Any) -> None:  # (C, H, W) in [-1, 1]
        nonlocal count
        scale = args.scale or max(1, 128 // frame.shape[-2])
        rgb = video_to_rgb_frames(frame[:, None].cpu(), scale=scale)[0]
        if writer is not None:
            writer.write(rgb)
        else:
            Image.fromarray(rgb).save(out / f"frame-{count:05d}.png")
        count += 1
        if not args.no_progress:
            print(f"frame {count}/{args.frames}", file=sys.stderr, flush=True)

    try:
        report = stream_video(model, request, write)
    finally:
        if writer is not None and writer.frames:
            writer.close()
    print(f"wrote {out} ({report.frames} frames, streamed): first frame after {report.first_frame_s:.2f} s, "
          f"{report.frames} frames in {report.total_s:.2f} s ({report.frames_per_s:.1f} frames/s)")
    return 0


def _write_reproduction(args: argparse.Namespace, model: Any, out: Path) -> int:
    """`msc sample` of a clip-to-clip model (tokenizer, cascade): its version of the first
    `--frames` frames of `--prefix`, left, beside them, right."""
    from msc_ray_train.sampling import read_prefix_video, reproduce_beside_clip
    from msc_ray_train.video_output import video_to_rgb_frames, write_video_file

    if args.prefix is None:
        raise ValueError(
            f"a {model.config.kind!r} model reproduces a clip instead of generating one: give the clip as "
            "--prefix VIDEO (its first --frames frames are used)"
        )
    clip = read_prefix_video(args.prefix, model, max_frames=args.frames)
    if clip.shape[2] != args.frames:
        raise ValueError(f"--prefix {args.prefix} has {clip.shape[2]} frames, fewer than --frames {args.frames}")
    video = reproduce_beside_clip(model, clip.to(next(model.parameters()).device), seed=args.seed,
                                  num_steps=args.steps)  # (C, T, H, 2W)
    height = video.shape[-2]
    scale = args.scale or max(1, 128 // height)
    write_video_file(out, video_to_rgb_frames(video.cpu(), scale=scale), args.fps)
    print(f"wrote {out} ({video.shape[1]} frames; left: the {model.config.kind} output, right: the input clip)")
    return 0


SAMPLE = Command(
    name="sample",
    help="generate a video with a trained model",
    description="Generate a video with a trained model (AD scheduler for AR-Diffusion), optionally continuing "
    "a given video; a tokenizer or cascade model shows its version of --prefix beside it. MODEL is a run "
    "folder, an exported model/ folder or a checkpoint_* folder.",
    configure=_configure_sample,
    run=_run_sample,
    example="msc sample demo-out/runs/demo --frames 16 --class-label 3 --guidance 2 --out three.gif",
)


# --------------------------------------------------------------------------- msc demo


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("msc-demo"), help="output directory (default ./msc-demo)")
    parser.add_argument("--steps", type=positive_int,
                        help="train this many steps instead of the demo's 3500 (a quick look; the samples need "
                        "the full run to show digits)")
    parser.add_argument("--address", help="Ray cluster address (default: a private local Ray)")
    add_threads_flag(parser)
    add_progress_flag(parser)
    parser.add_argument("--ray-logs", action="store_true", help="show the output of Ray's workers and controller")


def _run_demo(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(f"--out {args.out} is a file; msc demo writes a folder")
    from msc_ray_train.demo import run_demo

    summary = run_demo(args.out, address=args.address, progress=not args.no_progress, ray_logs=args.ray_logs,
                       steps=args.steps)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out / 'sample.mp4'}, sample.gif, real.gif, loss.png, metrics.json "
          f"and the run {args.out / 'runs' / 'demo'}")
    return 0


DEMO = Command(
    name="demo",
    help="train a tiny model on moving MNIST with Ray and sample it (CPU, minutes)",
    description="Train a tiny class-conditional AR-Diffusion model on bundled moving MNIST with 2 Ray Train "
    "CPU workers, then sample every digit at twice the training length. Writes sample.mp4, sample.gif, "
    "real.gif, loss.png and metrics.json to --out. Re-running with the same --out resumes or reuses the run.",
    configure=_configure_demo,
    run=_run_demo,
    example="msc demo --out demo-out",
)
