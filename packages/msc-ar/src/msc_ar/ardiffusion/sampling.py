"""AR-Diffusion generation (§3.4, eq. 5; Table 2): AD scheduler + DDIM over per-frame timesteps.

The loop (one iteration per row of `ad_schedule`):

1. the AD scheduler says, for every frame, how many of the `S` DDIM steps it has done
   before and after this iteration (`ad_step_transitions`); frames whose step does not
   change (waiting noise, finished frames, prefix frames) are never touched, so they stay
   bit-identical (§3.4 "we apply a mask to those frame latents for which the noise
   timesteps remain unchanged");
2. the model predicts x0 for the frames in flight, seeing the clean frames before them
   in the window (a clean frame is fed at timestep -1, which the model embeds at its
   `CLEAN_TIMESTEP`);
3. `msc_core.diffusion.ddim_step` moves each frame in flight from its timestep to the
   next one of the DDIM grid (`ddim_timestep_grid`).

Offset `s = request.scheduler.offset`: 0 is synchronous, `S` is frame-by-frame
autoregressive. Default `ceil(S / 5)`, the paper's best 16-frame setting (s = 10 of 50
DDIM steps, Table 2), raised to `ceil(S / window)` when generating past the window.

Continuation: `request.prefix` frames are clean from the start, returned unchanged, and
seen as context by every later frame; `request.num_frames` counts them (the output has
`num_frames` frames, the first `P` of which are the prefix).

Past the training length: the model sees a sliding window of `window` frames
(`request.scheduler.window`, default `config.data.num_frames`), the one ending at the
newest frame in flight; all frames in flight must fit in it
(`ad_schedule.check_sliding_window`: `s >= ceil(S / window)`). Frame positions are
WINDOW-RELATIVE (`frame_offset` = index in the window), so the frame-index embedding
only ever sees indices `0..window-1`, the range it was trained on with
`window = num_frames`: extrapolating to absolute indices never seen in training is what
would break a model trained on short clips.

Cache of finished frames (`use_cache=True`, default): a frame that became clean is fed
once through the transformer with `update_cache=True`, and from then on only the frames
in flight are run, attending to the cached keys/values. When the window slides, every
cached frame's position (and its context) changes, so the cache is rebuilt from the
clean frames of the new window in one call: the frames that left the window leave the
attention context exactly as in the recomputing path (`use_cache=False`), which runs the
whole window `[start, newest in-flight frame]` every iteration (frames after the newest
one cannot influence it: the model is frame-causal). Both paths draw the same noise from
one generator in a fixed order (initial noise frame by frame, then, if `eta > 0`, one
draw per moving frame per iteration), so with the same seed they agree to float
round-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import torch

from msc_core.diffusion import ddim_step, state_dtype
from msc_core.interfaces import GenerationRequest
from msc_core.validation import trusted_inputs

from msc_ar.ardiffusion.ad_schedule import ad_schedule, ad_step_transitions, ad_timesteps, check_sliding_window

CLEAN = -1  # timestep of a clean frame (msc_core.diffusion)


class ADSampledModel(Protocol):
    """What the sampler needs of a model (msc_ar.ardiffusion.model.ARDiffusion); a protocol,
    so that this module does not import the model (the model imports the sampler)."""

    config: Any
    alphas_cumprod: torch.Tensor

    @property
    def frame_dim(self) -> int: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def new_cache(self) -> list[Any]: ...

    def check_input(self, x: torch.Tensor, what: str = "x") -> torch.Tensor: ...

    def embed_condition(
        self, labels: torch.Tensor | None = None, text_embedding: torch.Tensor | None = None,
        batch_size: int | None = None, drop: torch.Tensor | None = None,
    ) -> torch.Tensor | None: ...

    def predict_x0(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, guidance_scale: float = 1.0,
        cache: list[Any] | None = None, update_cache: bool = False, frame_offset: int | None = None,
    ) -> torch.Tensor: ...


# -----------------------------------------------------------------------------
# plan: which frames move, at which timesteps, in which window (pure)


def default_offset(num_steps: int, num_frames: int, window: int) -> int:
    """`ceil(S / 5)` (Table 2's best 16-frame s), at least `ceil(S / window)` past the window."""
    offset = math.ceil(num_steps / 5)
    if num_frames > window:
        offset = max(offset, math.ceil(num_steps / window))
    return min(offset, num_steps)


@dataclass(frozen=True)
class ADSamplingPlan:
    """Per-iteration timesteps of all frames (prefix included) and the model's window.

    `t_before[n, f]` / `t_after[n, f]`: timestep of frame f before / after iteration n
    (-1 = clean); frames `first[n]..last[n]` move (a contiguous run: earlier frames are
    clean, later ones not started) and the model sees frames `window_start[n]..last[n]`.
    """

    num_frames: int
    num_prefix: int
    num_steps: int
    offset: int
    window: int
    t_before: torch.Tensor  # (N, F) long
    t_after: torch.Tensor  # (N, F) long
    first: tuple[int, ...]
    last: tuple[int, ...]
    window_start: tuple[int, ...]

    @property
    def num_iterations(self) -> int:
        return self.t_before.shape[0]


def plan_ad_sampling(
    num_frames: int,
    num_prefix: int,
    num_steps: int,
    offset: int | None,
    window: int,
    num_train_timesteps: int,
) -> ADSamplingPlan:
    """Validate the request's sizes and lay out the AD schedule over all frames."""
    if not 0 <= num_prefix < num_frames:
        raise ValueError(
            f"num_frames={num_frames} must exceed the {num_prefix} prefix frames (it counts them): "
            f"use num_frames >= {num_prefix + 1}"
        )
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    num_new = num_frames - num_prefix
    if offset is None:
        offset = default_offset(num_steps, num_frames, window)
    schedule = ad_schedule(num_new, num_steps, offset)  # (N, F_new), validates offset and steps
    if num_frames > window:
        check_sliding_window(num_new, num_steps, offset, window)
    before, after, moving = ad_step_transitions(schedule)
    clean = torch.full((schedule.shape[0], num_prefix), CLEAN, dtype=torch.long)  # the prefix

    def all_frames(steps: torch.Tensor) -> torch.Tensor:
        return torch.cat([clean, ad_timesteps(steps, num_train_timesteps, num_steps)], dim=1)  # (N, F)

    t_before, t_after = all_frames(before), all_frames(after)
    first, last, start = [], [], []
    for row in moving.tolist():  # one read of the (CPU) plan, not one per iteration
        idx = [num_prefix + i for i, is_moving in enumerate(row) if is_moving]
        lo, hi = idx[0], idx[-1]
        first.append(lo)
        last.append(hi)
        start.append(max(0, hi + 1 - window))
    return ADSamplingPlan(
        num_frames, num_prefix, num_steps, offset, window, t_before, t_after, tuple(first), tuple(last), tuple(start)
    )


# -----------------------------------------------------------------------------
# request -> tensors


def _condition(
    model: ADSampledModel, request: GenerationRequest, text_embedding: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    cfg, B = model.config, request.batch_size
    if request.prompt is not None and cfg.conditioning != "text":
        raise ValueError("request.prompt was given but this model is not text-conditional (text_embed_dim=None)")
    if request.prompt is not None and text_embedding is None:
        raise ValueError(
            "this model takes text embeddings, not strings: encode request.prompt with your text "
            "encoder and pass text_embedding=[B, text_embed_dim]"
        )
    labels = None
    if request.class_label is not None:
        if cfg.conditioning != "class":
            raise ValueError("request.class_label was given but this model is not class-conditional (num_classes=None)")
        given = request.class_label if isinstance(request.class_label, list) else [request.class_label] * B
        if len(given) != B:
            raise ValueError(f"class_label has {len(given)} labels for batch_size={B}")
        labels = torch.tensor(given, dtype=torch.long, device=device)
    if text_embedding is not None:
        text_embedding = text_embedding.to(device)
    if request.guidance_scale != 1.0 and labels is None and text_embedding is None:
        raise ValueError(
            f"guidance_scale={request.guidance_scale} needs a condition (class_label or text_embedding); "
            "use guidance_scale=1.0 for unconditional sampling"
        )
    return model.embed_condition(labels, text_embedding, batch_size=B)


def _prefix_frames(model: ADSampledModel, request: GenerationRequest, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    if request.prefix is None:
        return []
    prefix = request.prefix
    model.check_input(prefix, what="request.prefix")
    if prefix.shape[0] != request.batch_size:
        raise ValueError(f"request.prefix has batch {prefix.shape[0]}, but batch_size={request.batch_size}")
    return list(prefix.to(device=device, dtype=dtype).unbind(model.frame_dim))


# -----------------------------------------------------------------------------
# the loop


def generate(
    model: ADSampledModel,
    request: GenerationRequest,
    text_embedding: torch.Tensor | None = None,
    use_cache: bool = True,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Sample `request.num_frames` frames in the model layout (`[B, C, F, H, W]` or `[B, F, L, D]`).

    Reads `num_frames`, `batch_size`, `prefix`, `class_label` / `prompt` (with
    `text_embedding`), `guidance_scale`, `num_steps` (S DDIM steps per frame), `seed`,
    `scheduler.offset` (s), `scheduler.window`, `scheduler.eta`. `on_step(n, video)` is
    called after every iteration with the current frames (for progress or inspection).
    """
    frames = iter_frames(model, request, text_embedding, use_cache, on_step)
    return torch.stack(list(frames), dim=model.frame_dim)


@torch.no_grad()
def iter_frames(
    model: ADSampledModel,
    request: GenerationRequest,
    text_embedding: torch.Tensor | None = None,
    use_cache: bool = True,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    on_iteration: Callable[[int, int, int], None] | None = None,
) -> Iterator[torch.Tensor]:
    """The frames of `generate(request)`, each yielded as soon as it is final: `(B, C, H, W)`
    or `(B, L, D)`, in order, the prefix frames first.

    AD order: frame f is final after the iteration that takes it to the clean timestep,
    while later frames are still being denoised, so a consumer (a streaming decoder)
    gets the first frame long before the last one starts. Frames that left the model's
    window and were yielded are released (unless `on_step` asks for the whole video), so
    memory does not grow with the number of frames. `on_iteration(n, first, last)` is
    called before iteration n runs frames `first..last` (instrumentation).
    """
    cfg = model.config
    param = next(model.parameters())
    # the DDIM state (noise, x_t, x0) is float32 whatever the parameters' dtype; the model
    # casts its input to the parameters' dtype and its output back (precision contract)
    device, dtype = param.device, state_dtype(param.dtype)
    prefix = _prefix_frames(model, request, dtype, device)
    window = request.scheduler.window or cfg.data.num_frames
    plan = plan_ad_sampling(
        request.num_frames, len(prefix), request.num_steps, request.scheduler.offset, window, cfg.num_timesteps
    )
    cond = _condition(model, request, text_embedding, device)
    guidance, eta, fd = request.guidance_scale, request.scheduler.eta, model.frame_dim

    generator = torch.Generator()
    if request.seed is not None:
        generator.manual_seed(request.seed)
    else:
        generator.seed()
    frame_shape = (request.batch_size, *cfg.data.frame_shape())

    def draw() -> torch.Tensor:  # one frame of noise; CPU draws so every device gets the same video
        return torch.randn(frame_shape, generator=generator).to(device=device, dtype=dtype)

    # each (B, *frame); None once yielded and out of the window
    frames: list[torch.Tensor | None] = [*prefix, *(draw() for _ in range(plan.num_frames - plan.num_prefix))]
    keep_all = on_step is not None

    # the plan on the model's device once (a copy per step would sync a GPU), and which
    # frames are clean after each iteration as Python values (read once, not per step)
    t_before, t_after = plan.t_before.to(device), plan.t_after.to(device)
    clean_after = (plan.t_after == CLEAN).tolist()

    def timesteps(row: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return row[lo:hi][None].expand(request.batch_size, -1)  # (B, hi - lo)

    def stack(lo: int, hi: int) -> torch.Tensor:
        return torch.stack(frames[lo:hi], dim=fd)

    def predict_x0(*args: Any, **kwargs: Any) -> torch.Tensor:
        # the request was checked above and every later input is the sampler's own: the
        # model skips its value checks (a host sync each) in the loop
        with trusted_inputs():
            return model.predict_x0(*args, **kwargs)

    done = plan.num_prefix  # frames [0, done) are final and yielded
    yield from prefix
    cache: list[Any] | None = None
    cache_start = cache_end = 0  # frames [cache_start, cache_end) are in the cache
    for n in range(plan.num_iterations):
        first, last, start = plan.first[n], plan.last[n] + 1, plan.window_start[n]
        if on_iteration is not None:
            on_iteration(n, first, last - 1)
        t_row = t_before[n]
        if use_cache:
            if cache is None or start != cache_start:
                # positions are window-relative: a slid window invalidates every cached frame
                cache, cache_start, cache_end = model.new_cache(), start, start
            if cache_end < first:  # frames that became clean since the last iteration
                predict_x0(
                    stack(cache_end, first), timesteps(t_row, cache_end, first), cond, guidance,
                    cache=cache, update_cache=True, frame_offset=cache_end - start,
                )
                cache_end = first
            x_t = stack(first, last)
            x0 = predict_x0(
                x_t, timesteps(t_row, first, last), cond, guidance, cache=cache, frame_offset=first - start
            )
        else:
            x0 = predict_x0(stack(start, last), timesteps(t_row, start, last), cond, guidance, frame_offset=0)
            x0 = x0.narrow(fd, first - start, last - first)
            x_t = stack(first, last)
        noise = torch.stack([draw() for _ in range(first, last)], dim=fd) if eta > 0 else None
        with trusted_inputs():  # the plan's timesteps were checked when it was made
            x_next = ddim_step(
                x_t, x0, timesteps(t_row, first, last), timesteps(t_after[n], first, last),
                model.alphas_cumprod, fd, eta=eta, noise=noise,
            )
        frames[first:last] = x_next.unbind(fd)
        if on_step is not None:
            on_step(n, stack(0, plan.num_frames))
        while done < plan.num_frames and clean_after[n][done]:
            yield frames[done]
            done += 1
        if not keep_all:  # frames before the next window are never read again
            next_start = plan.window_start[n + 1] if n + 1 < plan.num_iterations else plan.num_frames
            for index in range(min(next_start, done)):
                frames[index] = None
