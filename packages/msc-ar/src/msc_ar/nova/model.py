"""NOVA: autoregressive video generation without vector quantization (NOVA §3).

One model, three autoregressions (Fig. 1):

1. temporal, frame by frame (§3.2): a block-causal transformer over
   `[text, motion, BOV, S_1, ..., S_{F-1}]`; the input is shifted by one frame, so the
   output at slot `s` (BOV is slot 0) predicts frame `s`. Frames get a 1-D sine-cosine
   embedding of their slot and a 2-D sine-cosine embedding of each token's position.
2. Scaling-and-Shift (§3.3): the BOV output is the anchor; frame `f`'s temporal
   features modulate it into the indicator features `S'_f` (identity for `f = 0`).
3. spatial, set by set (§3.3): a MAR encoder/decoder reveals the frame's tokens in a
   random order, conditioned on `S'_f`, and a per-token diffusion MLP (§3.4) samples
   each revealed token.

Tasks from the same weights (§4.3): text-to-video, text-to-image (`num_frames=1`),
image-to-video and video continuation (prefill the given frames), and generation past
the training length by shifting the frame window behind the text and BOV (the anchor
and the cached text/BOV keys stay, the frames slide and are re-fed at the trained slots).

Patchify and the 2-D sine-cosine positions are `msc_core.transformer`'s (DiT's).

Sections: helpers / temporal context of one generation / model.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from msc_core.interfaces import GenerationRequest, LatentSpec
from msc_core.transformer import frame_index_embedding, patchify, spatial_sincos_embedding, unpatchify
from msc_core.validation import check_finite, check_positive_int, check_tensor, check_values, check_video

from msc_ar.nova.config import NovaConfig
from msc_ar.nova.diffusion_head import DiffusionHead
from msc_ar.nova.masking import (
    guidance_at,
    mask_from_order,
    num_masked_for_ratio,
    random_orders,
    reveal_schedule,
    sample_mask_ratio,
)
from msc_ar.nova.post_norm_block import init_transformer_weights
from msc_ar.nova.spatial import SpatialMaskedTransformer
from msc_ar.nova.temporal import ScaleShiftLayer, TemporalKVCache, TemporalTransformer
from msc_ar.nova.text_encoder import ByteTextEncoder, HFTextEncoder, TextEncoder

Grid = tuple[int, int]

# -----------------------------------------------------------------------------
# helpers


def _pad_keys(x: torch.Tensor, valid: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a prefix `(B, N, D)` and its validity `(B, N)` with invalid keys to `length`."""
    pad = length - x.shape[1]
    if pad == 0:
        return x, valid
    return (
        torch.cat([x, x.new_zeros(x.shape[0], pad, x.shape[2])], dim=1),
        torch.cat([valid, valid.new_zeros(valid.shape[0], pad)], dim=1),
    )


# -----------------------------------------------------------------------------
# temporal context of one generation


class TemporalContext:
    """Features `h_n` predicting frame `n`, from the frames generated so far (one generation).

    A window of `window` slots (BOV + `window - 1` frames) is what the model saw in
    training. Frame `n < window` is predicted at slot `n` from frames `0..n-1`. Past the
    window, frames `n-window+1..n-1` are (re-)fed at slots `1..window-1` behind the same
    text and BOV. With a cache, text + motion + BOV are fed once and kept; inside the
    window each step feeds a single frame; past it the frame keys are dropped and the
    window is re-fed, because every frame's slot (its time embedding) has moved.
    """

    def __init__(
        self, model: "NOVA", prefix: torch.Tensor, valid: torch.Tensor, grid: Grid, window: int, use_cache: bool
    ) -> None:
        self.model, self.prefix, self.valid, self.grid = model, prefix, valid, grid
        self.window, self.use_cache = window, use_cache
        self.cache: TemporalKVCache | None = None
        self.bov_output: torch.Tensor | None = None
        self.num_fixed_keys = 0
        self.next_frame = 0

    def features(self, n: int, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        """`h_n` `(B, L, D)`; `frames` are the `n` frames so far, each `(B, L, Dt)`.

        Call it for n = 0, 1, 2, ... in order: the cache holds what earlier calls fed.
        """
        if n != self.next_frame or len(frames) != n:
            raise ValueError(
                f"expected frame {self.next_frame} with {self.next_frame} earlier frames, got {n} and {len(frames)}"
            )
        self.next_frame += 1
        first = max(0, n - self.window + 1)
        context = list(frames[first:n])  # fed at slots 1..len(context)
        if not self.use_cache:
            stacked = torch.stack(context, dim=1) if context else None
            return self.model.temporal_features(self.prefix, self.valid, stacked, self.grid)[:, -1]
        if self.cache is None:
            self.cache = self.model.temporal.new_cache()
            prefix_out = self.model.temporal_features(self.prefix, self.valid, None, self.grid, cache=self.cache)
            self.bov_output = prefix_out[:, 0]
            self.num_fixed_keys = self.cache.num_tokens  # text + motion + BOV
        if n == 0 or not context:
            return self.bov_output
        if first == 0:  # inside the window: feed the newest frame at slot n
            new = context[-1][:, None]
            return self.model.temporal_features(None, None, new, self.grid, cache=self.cache, first_slot=n)[:, -1]
        self.cache.truncate(self.num_fixed_keys)
        stacked = torch.stack(context, dim=1)
        return self.model.temporal_features(None, None, stacked, self.grid, cache=self.cache, first_slot=1)[:, -1]


# -----------------------------------------------------------------------------
# model


class NOVA(nn.Module):
    """NOVA text-to-video model; `training_losses(batch)` and `generate(request)`."""

    config_class = NovaConfig

    def __init__(self, config: NovaConfig) -> None:
        super().__init__()
        self.config = config
        D = config.dim
        if config.text_encoder == "bytes":
            self.text_encoder: TextEncoder = ByteTextEncoder(
                D, config.text_depth, config.num_heads, config.max_text_length, config.mlp_ratio
            )
        else:
            # Frozen and external: set past nn.Module registration so its weights stay out
            # of NOVA's state dict (the config holds its path).
            object.__setattr__(self, "text_encoder", HFTextEncoder(config.text_encoder_path, config.max_text_length))
        self.text_proj = nn.Linear(self.text_encoder.dim, D)
        self.null_text = nn.Parameter(torch.zeros(1, 1, D))  # the "no caption" token, for CFG
        self.motion_embed = nn.Sequential(nn.Linear(2, D), nn.SiLU(), nn.Linear(D, D))  # (flow score, fps)
        self.prefix_norm = nn.LayerNorm(D, eps=1e-6)

        self.bov = nn.Parameter(torch.zeros(1, 1, 1, D))  # one learned token, repeated over the frame grid
        self.frame_embed = nn.Linear(config.token_dim, D)
        self.frame_norm = nn.LayerNorm(D, eps=1e-6)
        self.temporal = TemporalTransformer(D, config.temporal_depth, config.num_heads, config.mlp_ratio)
        self.scale_shift = ScaleShiftLayer(D, config.scale_shift_rank)

        self.spatial = SpatialMaskedTransformer(
            config.token_dim, D, config.spatial_encoder_depth, config.spatial_decoder_depth,
            config.num_heads, config.mlp_ratio,
        )  # fmt: skip
        self.head = DiffusionHead(
            config.token_dim, D, config.head_width, config.head_depth,
            config.num_train_timesteps, config.noise_schedule,
        )  # fmt: skip
        self._init_weights()

    def _init_weights(self) -> None:
        transformers = [self.text_proj, self.motion_embed, self.prefix_norm, self.frame_embed, self.frame_norm]
        transformers += [self.temporal, self.spatial]
        if isinstance(self.text_encoder, nn.Module):
            transformers.append(self.text_encoder.blocks)
        for module in transformers:
            module.apply(init_transformer_weights)
        for param in (self.null_text, self.bov, self.spatial.mask_token):
            nn.init.normal_(param, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.bov.device

    # frames <-> tokens ---------------------------------------------------------

    def to_tokens(self, frames: torch.Tensor, what: str = "frames") -> tuple[torch.Tensor, Grid]:
        """Frames in the model's layout -> tokens `(B, T, L, Dt)` and the token grid."""
        c = self.config
        check_tensor(what, frames, floating=False, allow_empty=True)
        if c.layout == "grid":
            if frames.dim() != 5 or frames.shape[1] != c.in_channels:
                raise ValueError(
                    f"{what} must be [B, {c.in_channels}, T, H, W] (layout='grid'), got {tuple(frames.shape)}"
                )
            tokens = patchify(frames, c.patch_size)  # (B, T, h, w, p*p*C)
            return tokens.flatten(2, 3), tuple(tokens.shape[2:4])
        if frames.dim() != 4 or frames.shape[3] != c.in_channels:
            raise ValueError(f"{what} must be [B, T, L, {c.in_channels}] (layout='tokens'), got {tuple(frames.shape)}")
        return frames, (1, frames.shape[2])

    def from_tokens(self, tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
        c = self.config
        if c.layout == "grid":
            return unpatchify(tokens.unflatten(2, grid), c.patch_size, c.in_channels)
        return tokens

    # conditions --------------------------------------------------------------

    def encode_conditions(
        self,
        batch_size: int,
        captions: Sequence[str] | None = None,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        motion: torch.Tensor | float | None = None,
        fps: torch.Tensor | float | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition prefix `(B, N_text + 1, D)` and key validity: text tokens, then the motion token.

        Text comes from `captions`, pre-tokenised `text_tokens`, or pre-computed
        `text_features` (`(B, N, text_encoder.dim)`); with none, or where `drop_text` is
        True, the caption is the learned null token.
        """
        device, B = self.device, batch_size
        if text_features is not None:
            check_values("text_features", text_features)
        if text_features is not None or text_tokens is not None:
            given = text_features if text_features is not None else text_tokens
            if given.shape[0] != B:
                raise ValueError(f"text for {given.shape[0]} samples, batch has {B}")
            if text_mask is None:
                mask = torch.ones(given.shape[:2], dtype=torch.bool, device=device)
            else:
                mask = text_mask.bool().to(device)
            feats = text_features if text_features is not None else self.text_encoder.encode_tokens(text_tokens, mask)
        elif captions is not None:
            if len(captions) != B:
                raise ValueError(f"{len(captions)} captions for a batch of {B}")
            tokens, mask = self.text_encoder.tokenize(captions, device)
            feats = self.text_encoder.encode_tokens(tokens, mask)
        else:
            feats, mask = None, None
        if feats is None:
            text, mask = self.null_text.expand(B, 1, -1), torch.ones(B, 1, dtype=torch.bool, device=device)
        else:
            text = self.text_proj(feats.to(self.null_text.dtype))  # (B, N, D)
            if drop_text is not None:
                only_first = torch.zeros_like(mask)
                only_first[:, 0] = True
                text = torch.where(drop_text[:, None, None], self.null_text.expand_as(text), text)
                mask = torch.where(drop_text[:, None], only_first, mask)
        scores = torch.stack([self._per_sample("motion", motion, self.config.default_motion, B) / self.config.motion_scale,
                              self._per_sample("fps", fps, self.config.default_fps, B) / self.config.fps_scale], dim=-1)
        motion_token = self.motion_embed(scores.to(text.dtype))[:, None]  # (B, 1, D)
        prefix = self.prefix_norm(torch.cat([text, motion_token], dim=1))
        return prefix, torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)

    def _per_sample(self, name: str, value: torch.Tensor | float | None, default: float, batch: int) -> torch.Tensor:
        if value is None:
            value = default
        if isinstance(value, torch.Tensor):
            check_tensor(name, value, floating=False)
        value = torch.as_tensor(value, dtype=torch.float32, device=self.device).flatten()
        check_finite(name, value)
        if value.numel() == 1:
            return value.expand(batch)
        if value.numel() != batch:
            raise ValueError(f"motion/fps must be one value or one per sample ({batch}), got {value.numel()}")
        return value

    # temporal ------------------------------------------------------------------

    def positions(self, grid: Grid) -> torch.Tensor:
        """2-D sine-cosine embedding `(L, D)` of a frame's token grid, any size (extrapolates)."""
        pos = spatial_sincos_embedding(*grid, self.config.dim, self.device)  # (h, w, D)
        return pos.flatten(0, 1).to(self.bov.dtype)

    def temporal_features(
        self,
        prefix: torch.Tensor | None,
        prefix_valid: torch.Tensor | None,
        frames: torch.Tensor | None,
        grid: Grid,
        cache: TemporalKVCache | None = None,
        first_slot: int = 1,
    ) -> torch.Tensor:
        """Temporal outputs per slot `(B, S, L, D)` for `[prefix, BOV, frames]` (block-causal).

        `frames` `(B, F, L, Dt)` sit at slots `first_slot..first_slot+F-1`. With a prefix,
        the BOV set is slot 0 and is included in the output (so `S = 1 + F`); a call
        without a prefix continues a cache that already holds text, motion and BOV.
        """
        L, D, device = grid[0] * grid[1], self.config.dim, self.device
        dtype = self.bov.dtype
        pos = self.positions(grid)  # (L, D)
        parts, blocks, valid = [], [], []
        if prefix is not None:
            B = prefix.shape[0]
            bov = self.bov.expand(B, 1, L, D) + pos + frame_index_embedding(0, 1, D, device).to(dtype)
            parts += [prefix, self.frame_norm(bov).flatten(1, 2)]
            blocks += [torch.zeros(prefix.shape[1], dtype=torch.long, device=device),
                       torch.ones(L, dtype=torch.long, device=device)]
            valid += [prefix_valid, torch.ones(B, L, dtype=torch.bool, device=device)]
        if frames is not None:
            B, F = frames.shape[:2]
            slots = torch.arange(first_slot, first_slot + F, device=device)
            time = frame_index_embedding(first_slot, F, D, device).to(dtype)[None, :, None]  # (1, F, 1, D)
            x = self.frame_norm(self.frame_embed(frames) + pos + time)  # (B, F, L, D)
            parts.append(x.flatten(1, 2))
            blocks.append((slots + 1).repeat_interleave(L))
            valid.append(torch.ones(B, F * L, dtype=torch.bool, device=device))
        out = self.temporal(torch.cat(parts, dim=1), torch.cat(blocks), torch.cat(valid, dim=1), cache)
        num_prefix = prefix.shape[1] if prefix is not None else 0
        return out[:, num_prefix:].unflatten(1, (-1, L))  # (B, S, L, D)

    def indicator_features(self, features: torch.Tensor, first_frame: int = 0) -> torch.Tensor:
        """Scaling-and-Shift of the anchor (slot 0 of `features` `(B, T, L, D)`) -> `S'` `(B, T, L, D)`."""
        frame_index = torch.arange(first_frame, first_frame + features.shape[1], device=features.device)
        return self.scale_shift(features[:, 0], features, frame_index)

    # training ------------------------------------------------------------------

    def training_losses(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Diffusion loss on the masked tokens of every frame.

        `batch`: `"video"` (floating pixels in [-1, 1]) or `"latents"` (floating, no
        range), in the model's layout (`[B, C, T, H, W]` grids or `[B, T, L, D]` tokens),
        cast to the parameters' dtype; optional `"caption"`
        (list[str]) or `"text_tokens"` / `"text_features"` (+ `"text_mask"`), `"motion"`
        and `"fps"` (`[B]` floats). Returns `"loss"` (optimise this) and detached
        `"loss_first_frame"` / `"loss_later_frames"` (text-to-image vs. frame-to-frame).
        """
        keys = [k for k in ("video", "latents") if k in batch]
        if len(keys) != 1:
            raise ValueError(f"batch needs exactly one of 'video' or 'latents', got keys {sorted(batch)}")
        c, device = self.config, self.device
        what = f"batch[{keys[0]!r}]"
        given = batch[keys[0]]
        check_tensor(what, given, floating=False, allow_empty=True)
        if keys[0] == "video":
            check_video(what, given)
        else:
            check_values(what, given)
        x, grid = self.to_tokens(given.to(device, self.bov.dtype), what=what)
        B, T, L, _ = x.shape
        drop = None
        if self.training and c.text_drop_prob > 0:
            gen_device = generator.device if generator is not None else device
            drop = torch.rand(B, generator=generator, device=gen_device).to(device) < c.text_drop_prob
        prefix, valid = self.encode_conditions(
            B, batch.get("caption"), batch.get("text_tokens"), batch.get("text_mask"), batch.get("text_features"),
            batch.get("motion"), batch.get("fps"), drop,
        )  # fmt: skip
        features = self.temporal_features(prefix, valid, x[:, :-1], grid)  # (B, T, L, D): slot s predicts frame s
        indicator = self.indicator_features(features).flatten(0, 1)  # (B*T, L, D)

        ratio = float(sample_mask_ratio(1, c.mask_ratio_min, 1.0, 1.0, c.mask_ratio_std, generator, device)[0])
        orders = random_orders(B * T, L, device, generator)
        mask = mask_from_order(orders, num_masked_for_ratio(L, ratio))  # (B*T, L), True = masked
        tokens = x.flatten(0, 1)  # (B*T, L, Dt)
        z = self.spatial(tokens, mask, indicator, self.positions(grid))
        per_token = self.head.loss(tokens[mask], z[mask], c.diffusion_batch_mul, generator)  # (n_masked,)

        frame_of_token = torch.arange(T, device=device).repeat(B)[:, None].expand(B * T, L)[mask]
        losses = {"loss": per_token.mean(), "loss_first_frame": per_token[frame_of_token == 0].mean().detach()}
        if T > 1:
            losses["loss_later_frames"] = per_token[frame_of_token > 0].mean().detach()
        return losses

    # generation ----------------------------------------------------------------

    @torch.no_grad()
    def sample_frame(
        self,
        indicator: torch.Tensor,
        grid: Grid,
        num_steps: int,
        guidance_scale: float = 1.0,
        indicator_uncond: torch.Tensor | None = None,
        temperature: float = 1.0,
        diffusion_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Set-by-set generation of one frame's tokens `(B, L, Dt)` from indicator features `(B, L, D)`.

        Tokens are revealed in a random order per sample over `num_steps` cosine-scheduled
        steps; each revealed token is drawn by the diffusion head. With
        `indicator_uncond`, guidance ramps linearly from 1 to `guidance_scale` with the
        revealed fraction.
        """
        B, L = indicator.shape[:2]
        counts = reveal_schedule(L, num_steps)
        diffusion_steps = self._diffusion_steps(diffusion_steps)
        pos = self.positions(grid)
        tokens = indicator.new_zeros(B, L, self.config.token_dim)
        mask = torch.ones(B, L, dtype=torch.bool, device=self.device)
        orders = random_orders(B, L, self.device, generator)
        cond = indicator if indicator_uncond is None else torch.cat([indicator, indicator_uncond])
        doubled = indicator_uncond is not None
        for masked_after in counts:
            if doubled:  # both branches see the same revealed tokens
                z = self.spatial(torch.cat([tokens, tokens]), torch.cat([mask, mask]), cond, pos)  # (2B, L, D)
            else:
                z = self.spatial(tokens, mask, cond, pos)  # (B, L, D)
            next_mask = mask_from_order(orders, masked_after)
            to_predict = mask & ~next_mask
            z_uncond = z[B:][to_predict] if doubled else None
            scale = guidance_at(guidance_scale, L, masked_after)
            tokens[to_predict] = self.head.sample(
                z[:B][to_predict], diffusion_steps, temperature, scale, z_uncond, generator, self.config.x0_clamp
            ).to(tokens.dtype)
            mask = next_mask
        return tokens

    def _diffusion_steps(self, diffusion_steps: int | None) -> int:
        """`diffusion_steps` checked (1..num_train_timesteps; 0 is not "the default"), or the config's."""
        steps = check_positive_int("diffusion_steps", diffusion_steps)
        if steps is None:
            return self.config.sampling_diffusion_steps
        if steps > self.config.num_train_timesteps:
            raise ValueError(
                f"diffusion_steps={steps} exceeds num_train_timesteps={self.config.num_train_timesteps}; "
                f"use 1..{self.config.num_train_timesteps} or None for sampling_diffusion_steps="
                f"{self.config.sampling_diffusion_steps}"
            )
        return steps

    def _request_grid(self, request: GenerationRequest) -> Grid:
        """Token grid of the generated frames: the prefix's, else the config's sample size.

        Checks the prefix (a floating, finite tensor in the model's layout, no zero-sized axis)."""
        if request.prefix is None:
            return self.config.token_grid
        prefix = request.prefix
        grid_layout = self.config.layout == "grid"
        first = prefix  # a wrong number of dimensions: to_tokens names the layout
        if prefix.ndim == (5 if grid_layout else 4):
            first = prefix[:, :, :1] if grid_layout else prefix[:, :1]
        grid = self.to_tokens(first, what="request.prefix")[1]  # the layout first: it names the shape
        check_values("request.prefix", prefix)
        return grid

    def _request_captions(self, request: GenerationRequest) -> tuple[list[str] | None, int]:
        prompt, batch = request.prompt, request.batch_size
        if prompt is None:
            return None, batch
        if isinstance(prompt, str):
            return [prompt] * batch, batch
        if batch not in (1, len(prompt)):
            raise ValueError(f"batch_size={batch} does not match the {len(prompt)} prompts")
        return list(prompt), len(prompt)

    @torch.no_grad()
    def iter_frames(
        self,
        request: GenerationRequest,
        motion: float | torch.Tensor | None = None,
        fps: float | torch.Tensor | None = None,
        diffusion_steps: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Yield the frames of `generate(request)` one at a time as tokens `(B, L, Dt)`.

        `request.num_steps` is the number of set-by-set steps per frame (at most the
        frame's token count), `request.scheduler.temperature` the DDPM noise temperature,
        `request.scheduler.window` the temporal window in slots (default
        `config.num_frames`). Prefix frames are yielded as given. `diffusion_steps`: DDPM
        steps of the diffusion head per token (None: `config.sampling_diffusion_steps`).
        """
        diffusion_steps = self._diffusion_steps(diffusion_steps)
        if request.class_label is not None:
            raise ValueError("NOVA is conditioned on text, not class labels: pass `prompt` instead of `class_label`")
        if request.scheduler.offset is not None:
            raise ValueError("scheduler.offset is an AR-Diffusion setting; NOVA reads temperature and window only")
        captions, B = self._request_captions(request)
        grid = self._request_grid(request)
        prefix_tokens = None
        if request.prefix is not None:
            prefix_tokens, _ = self.to_tokens(request.prefix.to(self.device, self.bov.dtype), what="request.prefix")
            if prefix_tokens.shape[0] != B:
                raise ValueError(f"prefix has batch {prefix_tokens.shape[0]}, the request asks for {B}")
            if prefix_tokens.shape[1] > request.num_frames:
                raise ValueError(
                    f"prefix has {prefix_tokens.shape[1]} frames, more than num_frames={request.num_frames}"
                )
        L = grid[0] * grid[1]
        reveal_schedule(L, request.num_steps)  # validate num_steps against the frame's token count
        window = request.scheduler.window or self.config.num_frames
        generator = None
        if request.seed is not None:
            # a CPU generator whatever the model's device: a seed gives the same video on every
            # device (precision contract); the draws are moved to the model's device
            generator = torch.Generator().manual_seed(request.seed)

        guided = request.guidance_scale != 1.0
        prefix, valid = self.encode_conditions(B, captions, motion=motion, fps=fps)
        if guided:  # the unconditional branch: null caption, same motion; shares every frame
            null, null_valid = self.encode_conditions(B, None, motion=motion, fps=fps)
            length = max(prefix.shape[1], null.shape[1])
            (prefix, valid), (null, null_valid) = _pad_keys(prefix, valid, length), _pad_keys(null, null_valid, length)
            prefix, valid = torch.cat([prefix, null]), torch.cat([valid, null_valid])
        context = TemporalContext(self, prefix, valid, grid, window, use_cache)

        frames: list[torch.Tensor] = []  # as fed to the temporal model (doubled when guided)
        anchor = None
        for n in range(request.num_frames):
            features = context.features(n, frames)  # (B or 2B, L, D)
            if n == 0:
                anchor = features
            if prefix_tokens is not None and n < prefix_tokens.shape[1]:
                frame = prefix_tokens[:, n]
            else:
                index = torch.tensor([n], device=self.device)
                indicator = self.scale_shift(anchor, features[:, None], index)[:, 0]  # (B or 2B, L, D)
                cond, uncond = indicator.chunk(2) if guided else (indicator, None)
                frame = self.sample_frame(
                    cond, grid, request.num_steps, request.guidance_scale, uncond,
                    request.scheduler.temperature, diffusion_steps, generator,
                )  # fmt: skip
            frames.append(torch.cat([frame, frame]) if guided else frame)
            yield frame

    @torch.no_grad()
    def generate(
        self,
        request: GenerationRequest,
        motion: float | torch.Tensor | None = None,
        fps: float | torch.Tensor | None = None,
        diffusion_steps: int | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Generate `request.num_frames` frames (prefix frames included) in the model's layout.

        Text-to-video: a prompt; text-to-image: `num_frames=1`; image-to-video and
        continuation: `request.prefix` (clean frames, same layout); unconditional: no
        prompt. `guidance_scale != 1` runs classifier-free guidance against the null
        caption. `use_cache=False` recomputes the temporal sequence for every frame (the
        reference the KV cache must match).
        """
        frames = list(self.iter_frames(request, motion, fps, diffusion_steps, use_cache))
        return self.from_tokens(torch.stack(frames, dim=1), self._request_grid(request))

    def check_latent_space(self, spec: LatentSpec) -> None:
        """Refuse a tokenizer whose latents this model cannot read (`NovaConfig.check_latent_space`)."""
        self.config.check_latent_space(spec)

    def generate_frames(
        self,
        request: GenerationRequest,
        motion: float | torch.Tensor | None = None,
        fps: float | torch.Tensor | None = None,
        diffusion_steps: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[torch.Tensor]:
        """The frames of `generate(request)` one at a time, each as soon as it is sampled, in
        the model's layout without the frame axis: `(B, C, H, W)` or `(B, L, D)`."""
        grid = self._request_grid(request)
        frame_dim = 2 if self.config.layout == "grid" else 1
        for tokens in self.iter_frames(request, motion, fps, diffusion_steps, use_cache):
            yield self.from_tokens(tokens[:, None], grid).select(frame_dim, 0)
