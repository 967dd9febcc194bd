"""The `msc` command line: `msc train`, `msc sample`, `msc demo`.

    msc train JOB.yaml [--workers N] [--gpu] [--address ADDR]
    msc sample CHECKPOINT --frames N --out video.mp4 [--prefix video.mp4] [--offset s] [--caption TEXT]
    msc demo [--out DIR]

User mistakes (a missing file, an invalid job, a damaged checkpoint) print one
`msc: error: ...` line and exit with status 2; a failed or diverged training run exits
with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from msc_core.config import ConfigError
from msc_data.package_data import MissingExtraError

EXIT_USAGE = 2
EXIT_FAILED = 1


def _cmd_train(args: argparse.Namespace) -> int:
    from msc_ray_train.job import load_job
    from msc_ray_train.launch import run_training
    from msc_ray_train.model_kinds import missing_model_files

    overrides: dict[str, object] = {}
    if args.workers is not None:
        overrides["scaling.workers"] = args.workers
    if args.gpu:
        overrides["scaling.use_gpu"] = True
    job = load_job(args.job, overrides=overrides)
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
        f"  checkpoint: {outcome.checkpoint_dir}\n  model:      {outcome.model_dir}"
    )
    return 0


def _set_threads(threads: int) -> None:
    """Intra-op CPU threads of this process (Ray's workers already get one per CPU)."""
    import torch

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def _cmd_sample(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    from msc_ray_train.model_kinds import model_kind
    from msc_ray_train.sampling import generate_video, load_trained_model, read_prefix_video
    from msc_ray_train.video_output import video_to_rgb_frames, write_video_file

    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"--out must name a .mp4 or .gif file, got {out}")
    model = load_trained_model(args.checkpoint)
    if args.caption is not None and not model_kind(model.config.kind).with_captions(model.config):
        raise ValueError(
            f"--caption is for text-conditional models (kind 'nova'); {args.checkpoint} holds a "
            f"{model.config.kind!r} model"
        )
    if model_kind(model.config.kind).reproduce_clip is not None:
        return _write_reproduction(args, model, out)
    prefix = None
    if args.prefix is not None:
        prefix = read_prefix_video(args.prefix, model, max_frames=args.prefix_frames or args.frames - 1)
        if prefix.shape[2] >= args.frames:
            raise ValueError(f"--frames {args.frames} must exceed the {prefix.shape[2]} prefix frames it includes")
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
    video = reproduce_beside_clip(model, clip, seed=args.seed, num_steps=args.steps)  # (C, T, H, 2W)
    height = video.shape[-2]
    scale = args.scale or max(1, 128 // height)
    write_video_file(out, video_to_rgb_frames(video, scale=scale), args.fps)
    print(f"wrote {out} ({video.shape[1]} frames; left: the {model.config.kind} output, right: the input clip)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    from msc_ray_train.demo import run_demo

    summary = run_demo(args.out, address=args.address, progress=not args.no_progress, ray_logs=args.ray_logs)
    print(json.dumps(summary, indent=2))
    print(f"wrote {Path(args.out) / 'sample.mp4'}, sample.gif, real.gif, loss.png, metrics.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msc", description="Train and sample msc video models with Ray Train.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="run a training job (resumes when its run name exists)",
                                description="Train the model of a job YAML on Ray Train. Re-running the same "
                                "job (same run.name and run.storage_path) resumes from its latest checkpoint.")
    train.add_argument("job", type=Path, help="job YAML file (see services/ray-train/jobs/)")
    train.add_argument("--workers", type=int, help="override scaling.workers")
    train.add_argument("--gpu", action="store_true", help="override scaling.use_gpu to true")
    train.add_argument("--address", help="Ray cluster address (default: start a local Ray on this machine)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--ray-logs", action="store_true", help="show the output of Ray's workers and controller")
    train.set_defaults(run=_cmd_train)

    sample = commands.add_parser("sample", help="generate a video from a trained model",
                                 description="Generate a video with a trained model (AD scheduler for "
                                 "AR-Diffusion), optionally continuing a given video.")
    sample.add_argument("checkpoint", type=Path,
                        help="run directory, exported model/ directory or checkpoint_* directory")
    sample.add_argument("--frames", type=int, required=True, help="frames of the output (prefix included)")
    sample.add_argument("--out", required=True, help="output .mp4 or .gif")
    sample.add_argument("--prefix", type=Path, help="video to continue: its first frames are kept")
    sample.add_argument("--prefix-frames", type=int, help="how many frames of --prefix to keep (default: all "
                        "up to frames - 1)")
    sample.add_argument("--offset", type=int, help="AD scheduler offset s (0: synchronous, steps: autoregressive)")
    sample.add_argument("--steps", type=int, default=50, help="denoising steps per frame (default 50)")
    sample.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic (default), 1 ancestral")
    sample.add_argument("--class-label", type=int, help="class to generate (class-conditional models)")
    sample.add_argument("--guidance", type=float, default=1.0,
                        help="classifier-free guidance scale with --class-label (default 1: none)")
    sample.add_argument("--caption", help="text prompt (caption) of a text-conditional model (NOVA); with "
                        "--guidance, classifier-free guidance against the null caption")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--fps", type=float, default=8.0)
    sample.add_argument("--scale", type=int, help="enlarge frames by this integer factor (default: to >= 128 px)")
    sample.add_argument("--threads", type=int, default=1, help="intra-op CPU threads for sampling (default 1: small models run fastest on one "
                        "thread, more threads only contend on a busy machine)")
    sample.add_argument("--no-progress", action="store_true", help="no progress bar")
    sample.set_defaults(run=_cmd_sample)

    demo = commands.add_parser("demo", help="train a tiny model on moving MNIST and sample it (CPU, minutes)",
                               description="Train a tiny AR-Diffusion model on bundled moving MNIST with 2 "
                               "Ray Train CPU workers, then sample a video twice the training length. Writes "
                               "sample.mp4, sample.gif, real.gif, loss.png and metrics.json to --out.")
    demo.add_argument("--out", type=Path, default=Path("msc-demo"), help="output directory (default ./msc-demo)")
    demo.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    demo.add_argument("--threads", type=int, default=1, help="intra-op CPU threads for sampling (default 1: small models run fastest on one "
                        "thread, more threads only contend on a busy machine)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--ray-logs", action="store_true", help="show the output of Ray's workers and controller")
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from msc_ray_train.launch import TrainingDiverged, TrainingFailed

    try:
        return args.run(args)
    except (FileNotFoundError, ConfigError, MissingExtraError, ValueError) as err:
        print(f"msc: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (TrainingFailed, TrainingDiverged) as err:
        print(f"msc: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("msc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
