"""CascadeModel: the trainable LDM-VAE stage of CascadeV (§3.3, §3.4 ii, §4.4).

Base and target share ONE latent space, that of a frozen `CausalVAE3D` (§3.4 ii,
Fig. 4b): the target is the VAE latent (posterior mean) of a clip and the base is

- `mode="sr"` (super-resolution): the VAE latent of the clip downsized `factor`x in space
  (area averaging by default), so the base latent has `factor`x fewer rows and columns;
- `mode="fps"` (frame rate): the VAE latent of every `factor`-th frame of the clip.

The DiT (`msc_cascade.dit`) denoises the target given the base upsampled to the target
size (`upsample_base_latent`) and is trained with an x0 (or eps) MSE loss. Sampling is
DDIM with eta = 0 over `sample_steps` steps (`cascade_sampling`).

Frame arithmetic for `fps` with a causal VAE (`1 + tc k` frames -> `1 + k` latent frames):
a training clip has `N = 1 + factor * tc * j` frames; every `factor`-th frame gives
`1 + tc j` frames (base latent `1 + j`); the clip's latent has `1 + factor j` frames.

The VAE is loaded from `config.vae_path` and frozen. It is kept OUT of the module's
registration: not in `parameters()`, `state_dict()` or checkpoints (a checkpoint
references it by path), but it follows `.to(device/dtype)`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msc_cascade.cascade_sampling import (
    CascadeMode,
    cascade_ddim_step,
    cascade_prediction,
    ddim_refine,
    initial_noise,
    target_latent_size,
)
from msc_cascade.dit import CascadeDiT, CascadeDiTConfig, upsample_base_latent
from msc_core.checkpoint import from_pretrained
from msc_core.config import Config
from msc_core.diffusion import BETA_SCHEDULES, ddim_timestep_grid, make_alphas_cumprod, q_sample, state_dtype
from msc_core.interfaces import LatentSpec
from msc_core.validation import check_positive_int, check_tensor, check_values, check_video, trusted_inputs
from msc_tokenizers import CausalVAE3D

# -----------------------------------------------------------------------------
# config


class CascadeConfig(Config):
    """Cascade decoder: mode, DiT, the frozen VAE it works in, diffusion and clip settings.

    `num_frames`, `height`, `width` describe the pixel training clips (what a trainer
    feeds as `batch["video"]`); they are checked against the VAE's frame rule when the
    model is built.
    """

    kind: Literal["cascade"] = "cascade"
    mode: CascadeMode = "sr"
    factor: int = Field(4, ge=2, description="4x resolution (sr) or 4x frame rate (fps)")
    dit: CascadeDiTConfig
    vae_path: str = Field(description="save_pretrained directory of the frozen CausalVAE3D")
    noise_schedule: str = "linear"
    num_timesteps: int = Field(1000, ge=1)
    prediction: Literal["x0", "eps"] = "x0"
    sample_steps: int = Field(8, ge=1, description="DDIM steps when sampling (4-16 is the useful range)")
    latent_scale: float = Field(1.0, gt=0, description="latents are multiplied by this before diffusion")
    downsample: Literal["area", "bicubic"] = Field("area", description="sr mode: how the base video is downsized")
    conditioning: Literal["latent", "pixel"] = Field(
        "latent",
        description="how the base latent becomes the DiT's condition: 'latent' upsamples it in latent space "
        "(CascadeV); 'pixel' decodes it, upsamples the video in pixels (bicubic for sr, linear frame blending "
        "for fps), re-encodes it, and the DiT predicts x0 as a correction of that latent",
    )
    num_frames: int = Field(9, ge=1, description="training clip frames")
    height: int = Field(64, gt=0, description="training clip height (pixels)")
    width: int = Field(64, gt=0, description="training clip width (pixels)")

    @model_validator(mode="after")
    def _check(self) -> "CascadeConfig":
        if self.noise_schedule not in BETA_SCHEDULES:
            raise ValueError(f"noise_schedule {self.noise_schedule!r} is not one of {BETA_SCHEDULES}")
        if self.sample_steps > self.num_timesteps:
            raise ValueError(f"sample_steps={self.sample_steps} exceeds num_timesteps={self.num_timesteps}")
        if self.conditioning == "pixel" and self.prediction != "x0":
            raise ValueError("conditioning='pixel' predicts x0 as a correction of the condition: use prediction='x0'")
        return self

    @property
    def residual(self) -> bool:
        """The DiT predicts a correction of its condition (pixel conditioning)."""
        return self.conditioning == "pixel"

    def clip_rules(self, spec: LatentSpec) -> tuple[int, int]:
        """(frames step, size multiple) of valid clips for a VAE with latent spec `spec`:
        clips have `1 + step * j` frames and sides divisible by the multiple."""
        tc, s = spec.temporal_compression, spec.spatial_compression
        if self.mode == "fps":
            return self.factor * tc, s
        return tc, self.factor * s


def cascade_target_size(config: CascadeConfig, spec: LatentSpec, base_latents: torch.Tensor) -> tuple[int, int, int]:
    """`(T, H, W)` of the target latent for base latents `[B, C, t, h, w]`, after checking them."""
    check_tensor("base_latents", base_latents, floating=False, allow_empty=True)
    if base_latents.ndim != 5 or base_latents.shape[1] != spec.channels:
        raise ValueError(f"base latents must be [B, {spec.channels}, t, h, w], got {tuple(base_latents.shape)}")
    size = target_latent_size(config.mode, config.factor, tuple(base_latents.shape[2:]))
    p = config.dit.patch_size
    if size[1] % p or size[2] % p:
        raise ValueError(f"target latent size {size[1]}x{size[2]} is not divisible by dit.patch_size={p}")
    return size


# -----------------------------------------------------------------------------
# frozen VAE holder


class FrozenModuleRef:
    """Holds a frozen module outside its owner's registration (no parameters, no state_dict,
    no train()/eval() changes). Deep copies (an EMA copy of the owner) share it."""

    __slots__ = ("module",)

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __deepcopy__(self, memo: dict) -> "FrozenModuleRef":
        return self


def load_frozen_vae(path: str | Path) -> CausalVAE3D:
    """The `CausalVAE3D` saved with `save_pretrained` at `path`, in eval mode, without gradients."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"cascade vae_path {path} is not a directory; it must be a CausalVAE3D saved with "
            "msc_core.checkpoint.save_pretrained (config.json + model.safetensors)"
        )
    vae = from_pretrained(CausalVAE3D, path)
    return vae.eval().requires_grad_(False)


# -----------------------------------------------------------------------------
# the model


class CascadeModel(nn.Module):
    """Cascade DiT over a frozen 3D VAE: `training_losses(batch)`, `refine(base_latents)`."""

    config_class = CascadeConfig

    def __init__(self, config: CascadeConfig) -> None:
        super().__init__()
        self.config = config
        vae = load_frozen_vae(config.vae_path)
        spec = vae.latent_spec
        if config.dit.latent_channels != spec.channels:
            raise ValueError(
                f"dit.latent_channels={config.dit.latent_channels} but the VAE at {config.vae_path} has "
                f"{spec.channels} latent channels; set dit.latent_channels={spec.channels}"
            )
        self._vae = FrozenModuleRef(vae)
        self.dit = CascadeDiT(config.dit)
        # float64 table, deliberately not a buffer: `.to(dtype)` must not round it
        self.alphas_cumprod = make_alphas_cumprod(config.noise_schedule, config.num_timesteps)
        self.check_video_shape(config.num_frames, config.height, config.width, what="training clip (config)")

    # --- the frozen VAE ---------------------------------------------------------------

    @property
    def vae(self) -> CausalVAE3D:
        return self._vae.module

    @property
    def latent_spec(self) -> LatentSpec:
        return self.vae.latent_spec

    def _apply(self, fn: Any, recurse: bool = True) -> "CascadeModel":
        # `.to(device / dtype)`, `.float()` ... move the unregistered VAE along with the DiT
        super()._apply(fn, recurse)
        self.vae._apply(fn, recurse)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device  # moves with the DiT (see _apply)

    # --- shapes -------------------------------------------------------------------------

    def check_video_shape(self, num_frames: int, height: int, width: int, what: str = "video") -> None:
        """ValueError naming the valid sizes unless a `(num_frames, height, width)` clip can be
        split into target and base by this cascade's mode."""
        step, multiple = self.config.clip_rules(self.latent_spec)
        if num_frames < 1 or (num_frames - 1) % step:
            j = max(0, (num_frames - 1) // step)
            raise ValueError(
                f"{what} has {num_frames} frames; {self.config.mode} mode with this VAE needs 1 + {step}*j "
                f"frames (e.g. {1 + step * j} or {1 + step * (j + 1)})"
            )
        if height % multiple or width % multiple:
            raise ValueError(
                f"{what} is {height}x{width}; {self.config.mode} mode with this VAE needs sides divisible "
                f"by {multiple} (e.g. {max(multiple, height // multiple * multiple)}x"
                f"{max(multiple, width // multiple * multiple)})"
            )

    def target_size(self, base_latents: torch.Tensor) -> tuple[int, int, int]:
        """`(T, H, W)` of the target latent the base latent `[B, C, t, h, w]` is refined to."""
        return cascade_target_size(self.config, self.latent_spec, base_latents)

    # --- base / target latents of a clip ------------------------------------------------

    def base_video(self, video: torch.Tensor) -> torch.Tensor:
        """The pixel clip the base latent comes from: downsized `factor`x (sr) or every
        `factor`-th frame (fps)."""
        f = self.config.factor
        if self.config.mode == "fps":
            return video[:, :, ::f]
        B, C, T, H, W = video.shape
        frames = video.transpose(1, 2).reshape(B * T, C, H, W)
        if self.config.downsample == "area":
            small = F.interpolate(frames, size=(H // f, W // f), mode="area")
        else:
            small = F.interpolate(frames, size=(H // f, W // f), mode="bicubic", antialias=True, align_corners=False)
        return small.reshape(B, T, C, H // f, W // f).transpose(1, 2)

    def _check_training_video(self, video: torch.Tensor) -> None:
        check_tensor("video", video, floating=False, allow_empty=True)
        if video.ndim != 5 or video.shape[1] != self.vae.config.in_channels:
            raise ValueError(f"video must be [B, {self.vae.config.in_channels}, T, H, W], got {tuple(video.shape)}")
        self.check_video_shape(*video.shape[2:])
        check_video("video", video)

    @torch.no_grad()
    def encode_pair(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(target latents, base latents) of a clip `[B, 3, N, H, W]` in [-1, 1] (VAE posterior means)."""
        self._check_training_video(video)
        with trusted_inputs():  # checked above; bicubic downsizing may overshoot [-1, 1] a little
            return self.vae.encode(video), self.vae.encode(self.base_video(video))

    # --- denoising ----------------------------------------------------------------------

    def upsample_base_video(self, video: torch.Tensor) -> torch.Tensor:
        """The baseline's pixel upsampling of a decoded base clip `[B, C, n, h, w]`: bicubic
        `factor`x (sr), or `1 + factor (n - 1)` frames blended linearly between neighbours (fps)."""
        f = self.config.factor
        B, C, n, h, w = video.shape
        if self.config.mode == "sr":
            frames = video.transpose(1, 2).reshape(B * n, C, h, w)
            up = F.interpolate(frames, scale_factor=f, mode="bicubic", align_corners=False)
            return up.reshape(B, n, C, h * f, w * f).transpose(1, 2).clamp(-1, 1)
        if n == 1:
            return video
        weights = torch.arange(f, device=video.device, dtype=video.dtype) / f  # (f,)
        left, right = video[:, :, :-1, None], video[:, :, 1:, None]  # (B, C, n-1, 1, h, w)
        blended = left + (right - left) * weights.view(1, 1, 1, f, 1, 1)  # (B, C, n-1, f, h, w)
        return torch.cat([blended.reshape(B, C, (n - 1) * f, h, w), video[:, :, -1:]], dim=2)

    @torch.no_grad()
    def condition(self, base_latents: torch.Tensor) -> torch.Tensor:
        """The DiT's condition `base_up` (scaled latent space, target size) of unscaled base latents.

        `base_latents`: a floating `[B, C, t, h, w]`, finite (another float dtype is cast to float32)."""
        size = self.target_size(base_latents)
        check_values("base_latents", base_latents)
        scale = self.config.latent_scale
        base = base_latents.to(self.device, torch.float32)
        if self.config.conditioning == "latent":
            return upsample_base_latent(base * scale, size)
        with trusted_inputs():  # checked above; the VAE's own output in between
            video = self.upsample_base_video(self.vae.decode(base).clamp(-1, 1))
            latents = self.vae.encode(video)  # in the VAE's parameter dtype (bf16 for a bf16 model)
            return latents.to(state_dtype(latents.dtype)) * scale  # the condition is float32 state

    def denoise_step(self, x_t: torch.Tensor, base_up: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """One DDIM step in the scaled latent space (the graph `onnx_export` exports)."""
        return cascade_ddim_step(self.dit, x_t, base_up, t, t_next, self.alphas_cumprod, self.config.prediction,
                                 self.config.residual)

    def timestep_grid(self, steps: int | None = None) -> torch.Tensor:
        """DDIM grid of `steps` (1..num_timesteps; None: `sample_steps`; 0 is refused, not the default)."""
        steps = check_positive_int("steps", steps)
        if steps is not None and steps > self.config.num_timesteps:
            raise ValueError(f"steps={steps} exceeds the model's num_timesteps={self.config.num_timesteps}")
        return ddim_timestep_grid(self.config.num_timesteps, steps or self.config.sample_steps)

    @torch.no_grad()
    def refine(
        self,
        base_latents: torch.Tensor,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Base latents `[B, C, t, h, w]` -> target latents `[B, C, T, H, W]` (whole clip, no windows).

        `noise` (scaled-latent space, target shape) overrides drawing it from `generator`.
        """
        scale = self.config.latent_scale
        grid = self.timestep_grid(steps)
        base_up = self.condition(base_latents)
        if noise is None:
            noise = initial_noise(tuple(base_up.shape), generator, base_up.device, base_up.dtype)
        else:
            check_values("noise", noise)
            if tuple(noise.shape) != tuple(base_up.shape):
                raise ValueError(
                    f"noise must have the target latents' shape {tuple(base_up.shape)} (for base_latents "
                    f"{tuple(base_latents.shape)}), got {tuple(noise.shape)}"
                )
        x = ddim_refine(self.denoise_step, base_up, noise.to(base_up), grid)
        return x / scale

    # --- training -----------------------------------------------------------------------

    def training_losses(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Named losses; `"loss"` is the scalar to optimise.

        `batch`: `"video"` `[B, 3, N, H, W]`, floating in [-1, 1], or precomputed `"latents"` (target)
        and `"base_latents"` (unscaled VAE latents, e.g. from a latent cache), optionally with
        `"condition_latents"` = `condition(base_latents) / latent_scale` (saves pixel
        conditioning's VAE decode + encode per step). One
        timestep per clip, uniform in `0..num_timesteps-1`; MSE on the x0 (or eps) target.
        """
        if "video" in batch:
            target, base = self.encode_pair(batch["video"].to(self.device))
        elif "latents" in batch and "base_latents" in batch:
            for key in ("latents", "base_latents"):
                check_tensor(f"batch[{key!r}]", batch[key], floating=False, allow_empty=True)
            target, base = batch["latents"].to(self.device), batch["base_latents"].to(self.device)
            expected = self.target_size(base)
            if tuple(target.shape[2:]) != expected or target.shape[:2] != base.shape[:2]:
                raise ValueError(
                    f"latents {tuple(target.shape)} do not match base_latents {tuple(base.shape)}: "
                    f"{self.config.mode} mode expects target frames/size {expected}"
                )
            check_values("batch['latents']", target)
            check_values("batch['base_latents']", base)
        else:
            raise ValueError(f"batch must hold 'video', or 'latents' and 'base_latents'; got keys {sorted(batch)}")
        scale = self.config.latent_scale
        x0 = target.float() * scale
        if "condition_latents" in batch:  # precomputed `condition(base) / latent_scale` (a cache)
            given = batch["condition_latents"]
            check_tensor("batch['condition_latents']", given, floating=False, allow_empty=True)
            base_up = given.to(self.device).float() * scale
            if base_up.shape != x0.shape:
                raise ValueError(f"condition_latents {tuple(base_up.shape)} must have the latents' shape {tuple(x0.shape)}")
            check_values("batch['condition_latents']", given)
        else:
            with trusted_inputs():  # base latents checked above, or the VAE's own
                base_up = self.condition(base)
        B = x0.shape[0]
        gen_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.config.num_timesteps, (B,), generator=generator, device=gen_device).to(x0.device)
        noise = initial_noise(tuple(x0.shape), generator, x0.device, x0.dtype) if generator is not None else torch.randn_like(x0)
        x_t = q_sample(x0, t, noise, self.alphas_cumprod, frame_dim=2)
        pred = cascade_prediction(self.dit, x_t, base_up, t, self.config.residual)
        goal = x0 if self.config.prediction == "x0" else noise
        loss = F.mse_loss(pred, goal)
        return {"loss": loss, f"{self.config.prediction}_mse": loss.detach()}


def suggest_latent_scale(latents: torch.Tensor) -> float:
    """1 / std of VAE latents (Stable Diffusion's scaling factor), for `CascadeConfig.latent_scale`."""
    std = float(latents.float().std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"latents have std {std}; cannot derive a latent scale")
    return 1.0 / std
