"""Held-out loss of trained runs: the training objective on clips the run never saw.
Last line: one JSON object.

For each run folder (a finished `msc train` / `msc demo` run), the exported EMA model
(`model/`; for a latent model, its exported pipeline's generator, with the tokenizer and
the normalisation it trained with) is scored with its own `training_losses` on:

- `train`: the job's own clip stream (the same seed: clips it trained on);
- `heldout`: the job's data with another seed (new trajectories, speeds and digit
  draws; with `digits_per_class: 1` the same digit images), and
- `test_digits`: the moving-MNIST `test` split (digit images never seen).

Each loss is the mean over `--batches` batches of 8 clips with a fixed noise generator
per batch, so two runs are scored on the same noise. The loss is in the model's own
space (pixels for a pixel model, normalised latents for a latent model): compare a run
with itself (train vs held-out), not a latent run with a pixel run.

    .venv/bin/python bench/heldout.py msc-runs/latent-ardiffusion-arvae demo-out/runs/demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from msc_core.checkpoint import from_pretrained
from msc_ray_train.clip_batches import make_clip_batches
from msc_ray_train.job import MovingMNISTSource, job_from_dict
from msc_ray_train.latent_kinds import LatentBatches, is_latent_model, load_frozen_tokenizer
from msc_ray_train.model_kinds import model_kind
from msc_ray_train.train_checkpoint import latest_valid_checkpoint, read_job_dict

HELDOUT_SEED = 1_000_003


def score(run_dir: Path, batches_per_split: int, batch_size: int) -> dict:
    checkpoint = latest_valid_checkpoint(run_dir)
    if checkpoint is None:
        raise SystemExit(f"{run_dir}: no valid checkpoint")
    job = job_from_dict(read_job_dict(checkpoint))
    if not isinstance(job.data, MovingMNISTSource):
        raise SystemExit(f"{run_dir}: scores moving-MNIST runs only, got data.source={job.data.source}")
    kind = model_kind(job.model.kind)
    model = from_pretrained(kind.model_class, run_dir / "model").eval()
    tokenizer = load_frozen_tokenizer(job.model.tokenizer_path) if is_latent_model(job.model) else None
    splits = {
        "train": (job.data, job.seed),
        "heldout": (job.data, HELDOUT_SEED),
        "test_digits": (job.data.model_copy(update={"split": "test"}), HELDOUT_SEED),
    }
    result: dict = {"run": str(run_dir), "kind": job.model.kind, "latent": tokenizer is not None,
                    "steps": read_job_dict(checkpoint)["steps"]}
    for name, (data, seed) in splits.items():
        batches = make_clip_batches(data, seed, 0, 1, batch_size, 0, with_labels=job.class_conditional,
                                    with_captions=kind.with_captions(job.model))
        if tokenizer is not None:
            batches = LatentBatches(batches, tokenizer, job.model.latent_normalization, torch.device("cpu"))
        losses = []
        with torch.no_grad():
            for step in range(batches_per_split):
                batch = batches.batch(step)
                generator = torch.Generator().manual_seed(step)
                losses.append(float(model.training_losses(batch, generator=generator)["loss"]))
        result[f"{name}_loss"] = round(sum(losses) / len(losses), 5)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [score(run.resolve(), args.batches, args.batch_size) for run in args.runs]
    for r in results:
        print(r, file=sys.stderr)
    print(json.dumps({"runs": results}))


if __name__ == "__main__":
    main()
