"""Ablations of the papers' claims at small scale, on bundled moving MNIST (pixels).
Last line: one JSON object.

Every configuration of a suite trains the same small class-conditional AR-Diffusion model
(MSC transformer, 8 frames of 32x32 gray pixels, patch 4: 8x8 tokens per frame) from the
same initialisation seed, on the same clips in the same order, for the same number of
steps; only the ablated field differs. Each (configuration, seed) runs in its own
single-threaded subprocess (`--jobs` at a time). Reported per configuration: mean and std
over `--seeds` of

- `heldout_loss`: the model's own training loss (x0 MSE for x0 models; for eps models the
  x0 MSE implied by their prediction, so the column compares like with like) on clips it
  never saw: moving-MNIST `test`-split digits (images never seen) on new trajectories,
  fixed noise and timesteps per batch (the same for every configuration);
- `recognition`: fraction of generated frames the offline digit classifier
  (`msc_data.digit_classifier`) reads as the requested digit, over one 16-frame sample
  (twice the training length, AD scheduler) per digit 0-9;
- `identity`: fraction of generated frames whose digit is their clip's majority digit;
- `frechet`: Fréchet distance between the classifier's per-frame features of those
  samples and of as many real test-split frames (FVD's recipe with an offline network);
- `attention_gflops`: forward FLOPs of the attention layers per clip (`msc_core.flops`,
  what the modules run), and `step_ms`: median wall time of a training step.

Suites (`--suite`):
- `attention`: dense frame-causal vs MSC default vs High-Res-heavy (3/4 of the heads) vs
  Low-Res-heavy (1/4) splits vs one branch alone (High-Res only, Low-Res only);
- `options`: MSC default vs each paper option of `MSCAttentionConfig` (light-cone window,
  anchored stride, key-aware gates) and the three together;
- `samplers`: AR-Diffusion's Table 4 counterparts: FoPP vs uniform non-decreasing vs
  independent vs synchronous timesteps, and eps instead of x0 (with FoPP);
- `offset`: one model per seed (the base config), sampled with AD offsets s in
  {0, 5, 10, 25, S} for 2x the training length (`--sample-steps` = S);
- `all` (default): every suite at once, the base configuration trained once per seed;
  `core`: dense, the base and the samplers.

    .venv/bin/python bench/ablations.py --suite all --seeds 3 --steps 400 --jobs 2 --out ablations.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BASE_MODEL: dict[str, Any] = dict(
    data=dict(input_layout="grid", channels=1, num_frames=8, height=32, width=32),
    transformer=dict(patch_size=4, dim=64, depth=3, num_heads=4, window=3, temporal_window=2, pool=2,
                     max_pool=None, temporal_stride=2),
    num_classes=10,
    timestep_sampler="fopp",
    prediction="x0",
    clip_denoised=True,
)
DATA = dict(source="moving-mnist", frames=8, size=64, output_size=32, num_digits=1, digits_per_class=1,
            speed_min=1.0, speed_max=2.0, channels=1)
TRAIN_SEED, HELDOUT_SEED, BATCH = 0, 1_000_003, 16

BASE = "base: MSC (1/2 High-Res heads), FoPP, x0"
SUITES: dict[str, dict[str, dict[str, Any]]] = {
    "attention": {
        "dense frame-causal": {"transformer": {"attention": "dense"}},
        BASE: {},
        "MSC, 3/4 High-Res heads": {"transformer": {"high_res_head_ratio": 0.75}},
        "MSC, 1/4 High-Res heads": {"transformer": {"high_res_head_ratio": 0.25}},
        "High-Res branch only": {"transformer": {"high_res_head_ratio": 1.0}},
        "Low-Res branch only": {"transformer": {"high_res_head_ratio": 0.0}},
    },
    "options": {
        BASE: {},
        "MSC, light cone (growth 1)": {"transformer": {"light_cone_growth": 1}},
        "MSC, anchored stride": {"transformer": {"stride_anchor": "fixed"}},
        "MSC, key-aware gates": {"transformer": {"gate_keys": True}},
        "MSC, the three options": {"transformer": {"light_cone_growth": 1, "stride_anchor": "fixed", "gate_keys": True}},
    },
    "samplers": {
        BASE: {},
        "uniform non-decreasing": {"timestep_sampler": "uniform-nondecreasing"},
        "independent": {"timestep_sampler": "independent"},
        "synchronous": {"timestep_sampler": "synchronous"},
        "FoPP, eps prediction": {"prediction": "eps"},
    },
    "offset": {BASE: {}},
}
# `all`: every configuration once (the base is shared), the base also sampled at every offset
SUITES["all"] = {name: changes for suite in ("attention", "options", "samplers") for name, changes in SUITES[suite].items()}
# `core`: dense vs the base and the timestep samplers
SUITES["core"] = {"dense frame-causal": SUITES["attention"]["dense frame-causal"], **SUITES["samplers"]}


def merged(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- worker


def run_one(changes: dict, seed: int, steps: int, sample_steps: int, offsets: list[int] | None, out_dir: Path) -> dict:
    """Train one configuration, score its held-out loss, save its samples (`out_dir`)."""
    import torch

    torch.set_num_threads(1)
    from msc_ar.ardiffusion import ARDiffusion, ARDiffusionConfig
    from msc_core import GenerationRequest
    from msc_core.flops import dense_frame_causal_flops, msc_attention_flops
    from msc_core.interfaces import SchedulerParams
    from msc_ray_train.clip_batches import make_clip_batches
    from msc_ray_train.job import MovingMNISTSource

    config = ARDiffusionConfig.preset("demo", **merged(BASE_MODEL, changes))
    torch.manual_seed(seed)
    model = ARDiffusion(config)
    source = MovingMNISTSource(**DATA)
    train = make_clip_batches(source, TRAIN_SEED, 0, 1, BATCH, 0, with_labels=True, with_captions=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    warmup = min(50, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    gen = torch.Generator().manual_seed(seed)
    times = []
    model.train()
    for step in range(steps):
        batch = train.batch(step)
        start = time.perf_counter()
        loss = model.training_losses(batch, generator=gen)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        times.append(time.perf_counter() - start)
    model.eval()

    # held-out loss: test-split digits, new trajectories, fixed noise per batch
    heldout_source = MovingMNISTSource(**{**DATA, "split": "test", "digits_per_class": None})
    held = make_clip_batches(heldout_source, HELDOUT_SEED, 0, 1, BATCH, 0, with_labels=True, with_captions=False)
    losses = []
    with torch.no_grad():
        for b in range(4):
            out = model.training_losses(held.batch(b), generator=torch.Generator().manual_seed(10_000 + b))
            losses.append(float(out["x0_mse"] if "x0_mse" in out else out["loss"]))

    def sample(offset: int | None) -> torch.Tensor:
        request = GenerationRequest(num_frames=16, seed=seed, num_steps=sample_steps, batch_size=10,
                                    class_label=list(range(10)), scheduler=SchedulerParams(offset=offset))
        with torch.no_grad():
            return model.generate(request)

    def attention_gflops() -> float:
        t = config.transformer
        T, h, w = config.data.num_frames, config.data.height // t.patch_size, config.data.width // t.patch_size
        total = 0
        for layer in range(t.depth):
            attn = t.attention_config(layer)
            if t.attention == "dense":
                total += dense_frame_causal_flops(1, T, h, w, t.dim, t.num_heads)["total"]
            else:
                total += msc_attention_flops(attn, 1, T, h, w)["total"]
        return total / 1e9

    result = {
        "seed": seed, "steps": steps, "train_loss_last": float(loss),
        "heldout_loss": statistics.mean(losses), "attention_gflops": attention_gflops(),
        "step_ms": 1000 * statistics.median(times), "train_s": sum(times),
    }
    samples = {"default": sample(None)}  # the default offset (msc_ar.ardiffusion.sampling.default_offset)
    errors = {}
    for s in offsets or []:
        try:
            samples[str(s)] = sample(s)
        except ValueError as err:  # e.g. s = 0 cannot slide a window past the training length
            errors[str(s)] = str(err)
    result["offset_errors"] = errors
    # the real test clips the samples are compared with: 20 clips, 160 frames
    samples["real"] = torch.cat([held.batch(b)["video"] for b in range(2)])[:20]
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(samples, out_dir / "samples.pt")
    (out_dir / "result.json").write_text(json.dumps(result))
    return result


def score_samples(run: dict, out_dir: Path) -> dict:
    """Classifier metrics of a run's saved samples (the shipped offline digit classifier)."""
    import torch

    from msc_data.digit_classifier import load_digit_classifier
    from msc_data.video_metrics import classifier_frechet_distance, identity_consistency, recognition_rate

    classifier = load_digit_classifier()
    samples = torch.load(out_dir / "samples.pt", weights_only=True)  # tensors only: no pickle execution
    real, labels = samples.pop("real"), torch.arange(10)

    def metrics(video: torch.Tensor) -> dict:
        rate = recognition_rate(video, labels, classifier)
        return {"recognition": rate.overall, "recognition_per_frame": rate.per_frame,
                "identity": identity_consistency(video, classifier),
                "frechet": classifier_frechet_distance(video, real, classifier, per="frame")}

    run = dict(run)
    run.update(metrics(samples.pop("default")))
    if samples or run.get("offset_errors"):
        run["offsets"] = {s: metrics(v) for s, v in samples.items()}
        run["offsets"].update({s: {"error": e} for s, e in run.get("offset_errors", {}).items()})
        run["offsets"] = dict(sorted(run["offsets"].items(), key=lambda kv: int(kv[0])))
    return run


# --------------------------------------------------------------------------- driver


def summarise(runs: list[dict]) -> dict:
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs]}
    keys = [k for k in ("heldout_loss", "recognition", "identity", "frechet", "attention_gflops", "step_ms")
            if all(k in r for r in runs)]
    for key in keys:
        values = [r[key] for r in runs]
        out[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    if runs and all("offsets" in r for r in runs):
        out["offsets"] = {}
        for s in runs[0]["offsets"]:
            ok = [r["offsets"][s] for r in runs if "error" not in r["offsets"][s]]
            if not ok:
                out["offsets"][s] = {"error": runs[0]["offsets"][s]["error"]}
                continue
            out["offsets"][s] = {
                k: {"mean": statistics.mean(o[k] for o in ok), "std": statistics.stdev([o[k] for o in ok]) if len(ok) > 1 else 0.0}
                for k in ("recognition", "identity", "frechet")
            }
    return out


# the papers' numbers beside our rows (AR-Diffusion Table 3, Sky-Timelapse FVD)
PAPER = {BASE: "FVD 62.8 (full AR-Diffusion)", "uniform non-decreasing": "FVD 101.0 (−FoPP)",
         "independent": "FVD 272.5 (−non-decreasing)", "synchronous": "—", "FoPP, eps prediction": "FVD 257.6 (−x0 loss)"}


def markdown(report: dict) -> str:
    """The report's tables: one per suite present, then the AD offsets of the base."""
    configs = report["configs"]

    def cell(stats: dict, key: str, digits: int) -> str:
        v = stats.get(key)
        return "—" if not isinstance(v, dict) else f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"

    def table(names: list[str], paper: bool) -> list[str]:
        head = "| configuration | seeds | held-out loss (x0 MSE) | recognition | identity | Fréchet (frames) | attention GFLOPs/clip | step ms |"
        rows = [head + (" paper |" if paper else ""), "|---" * (8 + paper) + "|"]
        for name in names:
            c = configs[name]
            seeds = sum("error" not in r for r in c["runs"])
            row = (f"| {name} | {seeds} | {cell(c, 'heldout_loss', 4)} | {cell(c, 'recognition', 3)} | "
                   f"{cell(c, 'identity', 3)} | {cell(c, 'frechet', 0)} | {cell(c, 'attention_gflops', 3)} | "
                   f"{cell(c, 'step_ms', 0)} |")
            rows.append(row + (f" {PAPER.get(name, '')} |" if paper else ""))
        return rows

    out = [f"<!-- bench/ablations.py --suite {report['suite']} --seeds {report['seeds']} --steps {report['steps']} "
           f"--sample-steps {report['sample_steps']}; {report.get('train_minutes_total')} min of training -->"]
    for suite, title in (("attention", "Attention"), ("options", "MSC options"),
                         ("samplers", "Timestep samplers and prediction target")):
        names = [n for n in report["suites"].get(suite, []) if n in configs]
        if len(names) > 1:
            out += ["", f"### {title}", "", *table(names, suite == "samplers")]
    for name, c in configs.items():
        if "offsets" in c:
            out += ["", f"### AD offset s ({name}; 16 frames = 2x the training length, S = {report['sample_steps']})",
                    "", "| s | recognition | identity | Fréchet (frames) |", "|---|---|---|---|"]
            for s, o in c["offsets"].items():
                if "error" in o:
                    out.append(f"| {s} | not possible: {o['error'].split(';')[0]} | | |")
                else:
                    out.append(f"| {s} | {cell(o, 'recognition', 3)} | {cell(o, 'identity', 3)} | {cell(o, 'frechet', 0)} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=list(SUITES), default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--config", action="append", default=None, metavar="NAME",
                        help="run only this configuration of the suite (exact name; repeat for several)")
    parser.add_argument("--steps", type=int, default=400, help="training steps of every run (the same budget)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="instead of --steps: time a 20-step probe of the first configuration and give "
                             "every run the steps that fit this many minutes")
    parser.add_argument("--sample-steps", type=int, default=30, help="denoising steps per frame (S)")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--work", type=Path, default=Path("ablation-runs"),
                        help="where each run keeps its result and samples (a finished run is reused)")
    parser.add_argument("--score-only", action="store_true",
                        help="score the runs already in --work, train nothing (missing runs are listed)")
    parser.add_argument("--train-only", action="store_true",
                        help="train and sample every run, skip the classifier scoring")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the tables of docs/reproduction.md (mean ± std per configuration) here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work = args.work.resolve()

    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(run_one(spec["changes"], spec["seed"], spec["steps"], spec["sample_steps"],
                                 spec.get("offsets"), Path(spec["out_dir"]))))
        return

    configs = SUITES[args.suite]
    if args.config:
        unknown = [name for name in args.config if name not in configs]
        if unknown:
            parser.error(f"--config {unknown[0]!r} is not in suite {args.suite!r}; valid: {', '.join(map(repr, configs))}")
        configs = {name: configs[name] for name in args.config}
    offsets = sorted({0, 5, 10, 25, args.sample_steps} & set(range(args.sample_steps + 1)))

    def run_dir(name: str, seed: int, steps: int) -> Path:
        slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
        return args.work / f"{slug}-steps{steps}-S{args.sample_steps}" / f"seed{seed}"

    def launch(name: str, seed: int, steps: int) -> dict:
        changes = configs[name]
        out_dir = run_dir(name, seed, steps)
        if (out_dir / "result.json").exists():  # finished before: reuse (the runs are deterministic)
            return json.loads((out_dir / "result.json").read_text())
        if args.score_only:
            return {"seed": seed, "error": "not trained (--score-only)"}
        spec = {"changes": changes, "seed": seed, "steps": steps, "sample_steps": args.sample_steps,
                "offsets": offsets if changes == {} and args.suite in ("offset", "all", "core") else None,
                "out_dir": str(out_dir)}
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                              capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            return {"seed": seed, "error": " | ".join(done.stderr.strip().splitlines()[-3:])}
        return json.loads(lines[-1])

    steps = args.steps
    if args.minutes is not None:
        probe = launch(next(iter(configs)), 0, 20)
        steps = max(20, int(args.minutes * 60 / (probe["step_ms"] / 1000)))
    start = time.time()
    jobs = [(name, seed) for seed in range(args.seeds) for name in configs]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda job: (job[0], launch(job[0], job[1], steps)), jobs))
    if args.train_only:
        print(json.dumps({"trained": len(results), "errors": [r for _, r in results if "error" in r]}))
        return
    by_config: dict[str, list[dict]] = {name: [] for name in configs}
    for name, run in results:
        by_config[name].append(run if "error" in run else score_samples(run, run_dir(name, run["seed"], steps)))
    report = {
        "suite": args.suite, "suites": {k: list(v) for k, v in SUITES.items() if k not in ("all", "core")}, "steps": steps, "seeds": args.seeds, "sample_steps": args.sample_steps,
        "batch": BATCH, "base_model": BASE_MODEL, "data": DATA, "wall_s": round(time.time() - start, 1),
        "configs": {name: {"changes": configs[name],
                           **(summarise([r for r in runs if "error" not in r]) if any("error" not in r for r in runs) else {}),
                           "errors": [r["error"] for r in runs if "error" in r] or None,
                           "runs": runs}
                    for name, runs in by_config.items()},
    }
    report["train_minutes_total"] = round(
        sum(r.get("train_s", 0.0) for runs in by_config.values() for r in runs) / 60, 1
    )  # the runs' own training time (wall_s is this invocation's, ~0 when the runs are reused)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(report))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
