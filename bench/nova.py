"""NOVA inference benchmark: KV-cached vs. uncached per-frame latency (NOVA §3.2, §4.4).

NOVA's temporal model is block-causal, so the keys/values of text, BOV and earlier frames
are computed once and cached: the cost of a new frame should not grow with its index.
Without the cache every frame re-runs the whole `[text, motion, BOV, frames...]` sequence
and its latency grows with the index ("a linear increase in latency with the number of
video frames", §4.4). This script generates 16 frames of a tiny model both ways and also
checks that both give the same video.

Prints one JSON object (last line):
- `per_frame_ms_cached` / `per_frame_ms_uncached`: median ms to produce frame 1..16
  (temporal step + set-by-set spatial sampling), over `--repeats` runs;
  `cached_last_over_first`, `uncached_last_over_first`: frame 16 / frame 1;
- `temporal_ms_cached` / `temporal_ms_uncached`: the temporal step alone, per frame;
- `cache_equivalence_max_err`: max |cached - uncached| over the generated video;
- `mask_schedule_counts`: tokens still masked after each of N=64 steps for L=256.

Usage: `flock /tmp/msc-bench.lock .venv/bin/python bench/nova.py [--repeats 3] [--threads 1]`
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from msc_core.interfaces import GenerationRequest

from msc_ar.nova import NOVA, NovaConfig, TemporalContext, reveal_schedule

NUM_FRAMES = 16


def bench_config() -> NovaConfig:
    # The tiny preset on 16x16 frames (64 tokens), with a 16-frame window so no frame
    # falls outside the cache: the uncached sequence grows to 16 x 64 frame tokens.
    return NovaConfig.tiny(num_frames=NUM_FRAMES, sample_size=(16, 16), temporal_depth=4)


def perturb_zero_inits(model: NOVA, std: float = 0.02) -> None:
    """An untrained head is adaLN-Zero (eps = 0 whatever the condition), so its samples
    would not depend on the temporal features and cached/uncached would agree trivially.
    Small random weights in the zero-initialised parts (Scaling-and-Shift MLP, diffusion
    head) make every generated token depend on the text, the frames and the cache."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in (model.scale_shift, model.head):
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def time_frames(model: NOVA, request: GenerationRequest, use_cache: bool) -> tuple[list[float], torch.Tensor]:
    """ms spent producing each frame, and the generated tokens `(B, T, L, Dt)`."""
    times, frames = [], []
    iterator = model.iter_frames(request, use_cache=use_cache, diffusion_steps=10)
    start = time.perf_counter()
    for frame in iterator:
        now = time.perf_counter()
        times.append(1e3 * (now - start))
        frames.append(frame)
        start = time.perf_counter()
    return times, torch.stack(frames, dim=1)


def time_temporal(model: NOVA, use_cache: bool) -> list[float]:
    """ms of the temporal step alone for frames 1..16, fed random frames."""
    grid = model.config.token_grid
    L = grid[0] * grid[1]
    prefix, valid = model.encode_conditions(1, ["a red square moving right"])
    context = TemporalContext(model, prefix, valid, grid, NUM_FRAMES, use_cache)
    frames = [torch.randn(1, L, model.config.token_dim) for _ in range(NUM_FRAMES)]
    times = []
    with torch.no_grad():
        for n in range(NUM_FRAMES):
            start = time.perf_counter()
            context.features(n, frames[:n])
            times.append(1e3 * (time.perf_counter() - start))
    return times


def median_runs(runs: list[list[float]]) -> list[float]:
    return [round(statistics.median(values), 3) for values in zip(*runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = NOVA(bench_config()).eval()
    perturb_zero_inits(model)
    request = GenerationRequest(num_frames=NUM_FRAMES, prompt="a red square moving right", num_steps=4, seed=0)

    time_frames(model, request, use_cache=True)  # warm-up
    cached_runs, uncached_runs, temporal_cached, temporal_uncached = [], [], [], []
    for _ in range(args.repeats):
        times, cached = time_frames(model, request, use_cache=True)
        cached_runs.append(times)
        times, uncached = time_frames(model, request, use_cache=False)
        uncached_runs.append(times)
        temporal_cached.append(time_temporal(model, use_cache=True))
        temporal_uncached.append(time_temporal(model, use_cache=False))
    per_frame_cached, per_frame_uncached = median_runs(cached_runs), median_runs(uncached_runs)
    result = {
        "model": "NovaConfig.tiny(num_frames=16, sample_size=(16, 16), temporal_depth=4)",
        "tokens_per_frame": model.config.token_grid[0] * model.config.token_grid[1],
        "num_steps": request.num_steps,
        "diffusion_steps": 10,
        "threads": args.threads,
        "per_frame_ms_cached": per_frame_cached,
        "per_frame_ms_uncached": per_frame_uncached,
        "cached_last_over_first": round(per_frame_cached[-1] / per_frame_cached[0], 3),
        "uncached_last_over_first": round(per_frame_uncached[-1] / per_frame_uncached[0], 3),
        "temporal_ms_cached": median_runs(temporal_cached),
        "temporal_ms_uncached": median_runs(temporal_uncached),
        "cache_equivalence_max_err": float((cached - uncached).abs().max()),
        "mask_schedule_counts": reveal_schedule(256, 64),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
