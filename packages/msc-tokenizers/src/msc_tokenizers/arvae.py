"""ARVAE: the auto-regressive video auto-encoder of AR-Diffusion §3.1 (a 1D tokenizer).

TiTok extended to video with continuous latents:

- **Encoder, time-agnostic.** Each frame is cut into `p x p` patches; the patch tokens
  and `L` learnable latent tokens go through a ViT together, and the latent tokens'
  outputs, projected to `D` dims, represent the frame: latents `[B, T, L, D]`. TiTok's
  vector quantiser is removed (§3.1); instead of reading the features after the
  decoder's first norm we use a diagonal Gaussian posterior with a small KL, as the
  3D VAE does, which keeps the latent scale controlled for the diffusion model.
- **Decoder, temporally causal.** Learnable patch (mask) tokens, shared by all frames,
  sit at the patch positions of each frame. Patch and latent tokens of frame `t`
  attend to every token of frame `t` (full attention within the frame) and,
  unidirectionally, to the latent tokens of frames `< t` (optionally only the last
  `context_frames` per layer, which bounds the streaming cache), never to anything
  later. A per-head recency bias (ALiBi-style, relative in frames) tells the decoder
  how old a past latent token is, so decoding works past the training length.
- Trained from scratch on pixels with the losses of `autoencoder_losses` (L1 + SSIM +
  KL, optional 3D PatchGAN). Where the paper starts from a pretrained TiTok, we add a
  linear region <-> token path beside the transformers (`linear_shortcut`), which
  makes training from scratch converge in CPU minutes.

`decode_chunk` streams: its cache holds, per decoder layer, the keys and values of the
latent tokens of past frames (an explicit tensor list, for ONNX export).

Input contract (`msc_core.validation`): videos are floating tensors in [-1, 1] (a
1e-3 tolerance), latents floating; both finite, without zero-sized axes, and cast to
the parameters' dtype when of another float dtype; int / uint8 / bool are refused.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msc_core.config import Config
from msc_core.interfaces import LatentSpec, num_patches
from msc_core.transformer import Mlp, patchify, spatial_sincos_embedding, unpatchify
from msc_core.validation import check_tensor, check_values, check_video, model_dtype, to_model_dtype, trusted_inputs
from msc_tokenizers.autoencoder_losses import AutoencoderLoss, AutoencoderLossConfig, sample_diagonal_gaussian

# -----------------------------------------------------------------------------
# config


class ARVAEConfig(Config):
    kind: Literal["arvae"] = "arvae"
    in_channels: int = Field(default=3, gt=0)
    frame_size: tuple[int, int] = Field(default=(64, 64), description="(H, W) the model encodes and decodes")
    patch_size: int = Field(default=8, gt=0)
    num_latent_tokens: int = Field(default=32, gt=0, description="L")
    latent_dim: int = Field(default=16, gt=0, description="D")
    width: int = Field(default=128, gt=0)
    encoder_depth: int = Field(default=4, ge=1)
    decoder_depth: int = Field(default=4, ge=1)
    num_heads: int = Field(default=4, gt=0)
    mlp_ratio: float = Field(default=4.0, gt=0)
    context_frames: int | None = Field(
        default=None,
        ge=1,
        description="earlier frames whose latent tokens each decoder layer sees (None = all); "
        "the decoder's reach is decoder_depth * context_frames frames",
    )
    linear_shortcut: bool = Field(
        default=True,
        description="latent token l also carries a linear code of image region l (a row of N/L "
        "patches, read and written with 2x overlapping windows), beside the transformers",
    )
    losses: AutoencoderLossConfig = AutoencoderLossConfig()

    @model_validator(mode="after")
    def _check(self) -> "ARVAEConfig":
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} is not divisible by num_heads={self.num_heads}")
        for axis, size in zip(("height", "width"), self.frame_size):
            num_patches(size, self.patch_size, f"frame {axis}")
        gh, gw = self.grid
        if self.linear_shortcut and (gh * gw % self.num_latent_tokens or gw % (gh * gw // self.num_latent_tokens)):
            raise ValueError(
                f"linear_shortcut gives each latent token a run of patches within one row: the {gh}x{gw} "
                f"patch grid cannot be split that way into num_latent_tokens={self.num_latent_tokens}; "
                f"use L = {gh} * (a divisor of {gw}) or linear_shortcut=False"
            )
        if self.linear_shortcut and self.patch_size % 2:
            raise ValueError(f"linear_shortcut needs an even patch_size, got {self.patch_size}")
        return self

    @property
    def token_region(self) -> tuple[int, int]:
        """(height, width) in pixels of the image region each latent token's linear code covers."""
        gh, gw = self.grid
        return self.patch_size, gh * gw // self.num_latent_tokens * self.patch_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.frame_size[0] // self.patch_size, self.frame_size[1] // self.patch_size

    @property
    def token_grid(self) -> tuple[int, int] | None:
        """(h, w) of the image regions of the L tokens, row-major (the linear shortcut reads
        and writes token l at region l); None without the shortcut (learned queries: the
        tokens have no spatial order)."""
        if not self.linear_shortcut:
            return None
        rh, rw = self.token_region
        return self.frame_size[0] // rh, self.frame_size[1] // rw

    @property
    def latent_spec(self) -> LatentSpec:
        """What this AR-VAE makes: token latents `[B, T, L, D]`, one frame per frame."""
        return LatentSpec(
            layout="tokens",
            channels=self.latent_dim,
            tokens_per_frame=self.num_latent_tokens,
            token_grid=self.token_grid,
            temporal_compression=1,
            spatial_compression=self.patch_size,  # frames must tile into patches
            causal_first_frame=False,
        )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ARVAEConfig":
        """Named sizes: `tiny` (tests, 16x16 frames) and `small` (the CPU quality run)."""
        presets: dict[str, dict[str, Any]] = {
            "tiny": dict(
                frame_size=(16, 16), patch_size=4, num_latent_tokens=4, latent_dim=4,
                width=32, encoder_depth=1, decoder_depth=2, num_heads=2,
            ),
            "small": dict(),
        }
        if name not in presets:
            raise ValueError(f"unknown ARVAE preset {name!r}; valid: {sorted(presets)}")
        return cls.from_dict({**presets[name], **overrides})


# -----------------------------------------------------------------------------
# positions and masks (pure functions)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Per-head recency slopes 2^(-8 i / heads), i = 1..heads (Press et al., ALiBi)."""
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / num_heads) for i in range(num_heads)])


def past_latent_bias(
    num_query_frames: int,
    num_key_frames: int,
    tokens_per_frame: int,
    slopes: torch.Tensor,
    context_frames: int | None,
) -> torch.Tensor:
    """Additive bias `(Tq, heads, 1, Tk * L)` from query frames to the latent tokens of key frames.

    The query frames are the last `Tq` of the `Tk` key frames (with a cache, the key
    frames are the cached ones followed by the new ones). Query frame `t` may see key
    frame `j` iff `0 < t - j <= context_frames`; allowed entries get `-slope * (t - j)`,
    the others `-inf`. Only lags matter, so a trimmed cache needs no frame index.
    """
    key = torch.arange(num_key_frames, device=slopes.device)
    query = key[num_key_frames - num_query_frames:]
    lag = (query[:, None] - key[None, :]).to(slopes.dtype)  # (Tq, Tk)
    allowed = lag > 0
    if context_frames is not None:
        allowed &= lag <= context_frames
    bias = -slopes[None, :, None] * lag[:, None, :]  # (Tq, heads, Tk)
    bias = bias.masked_fill(~allowed[:, None, :], float("-inf"))
    return bias.repeat_interleave(tokens_per_frame, dim=2).unsqueeze(2)  # (Tq, heads, 1, Tk*L)


# -----------------------------------------------------------------------------
# transformer blocks


class FrameAttention(nn.Module):
    """Full self-attention among the tokens of one frame: `(N, S, C)`."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, S, C = x.shape
        q, k, v = self.qkv(x).view(N, S, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, S, head_dim)
        return self.proj(out.transpose(1, 2).reshape(N, S, C))


class CausalLatentAttention(nn.Module):
    """AR-VAE decoder attention over `(B, T, S, C)` tokens, the first `L` of each frame latent.

    Frame t's tokens see all tokens of frame t and the latent tokens of earlier frames
    (the cache holds those of frames before this call). Returns the output and the
    latent keys/values of all frames seen, for the next call.
    """

    def __init__(self, dim: int, num_heads: int, context_frames: int | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.context_frames = context_frames
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)

    def forward(
        self, x: torch.Tensor, num_latent: int, past_k: torch.Tensor, past_v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, S, C = x.shape
        heads, L = self.num_heads, num_latent
        head_dim = C // heads
        qkv = self.qkv(x).view(B, T, S, 3, heads, head_dim).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv  # each (B, T, heads, S, head_dim)
        # latent keys/values of all frames so far: (B, heads, (P + T) * L, head_dim)
        new_lat_k = k[:, :, :, :L].permute(0, 2, 1, 3, 4).reshape(B, heads, T * L, head_dim)
        new_lat_v = v[:, :, :, :L].permute(0, 2, 1, 3, 4).reshape(B, heads, T * L, head_dim)
        lat_k = torch.cat([past_k, new_lat_k], dim=2)
        lat_v = torch.cat([past_v, new_lat_v], dim=2)
        past_frames = past_k.shape[2] // L
        key_frames = past_frames + T

        # Each query frame sees [its own S tokens ; the latent tokens of all key frames].
        keys = torch.cat([k, lat_k[:, None].expand(B, T, heads, key_frames * L, head_dim)], dim=3)
        values = torch.cat([v, lat_v[:, None].expand(B, T, heads, key_frames * L, head_dim)], dim=3)
        bias = past_latent_bias(T, key_frames, L, self.slopes, self.context_frames)
        own = bias.new_zeros(T, heads, 1, S)
        mask = torch.cat([own, bias], dim=3).to(q.dtype)  # (T, heads, 1, S + key_frames*L)
        mask = mask[None].expand(B, -1, -1, -1, -1)
        out = F.scaled_dot_product_attention(
            q.reshape(B * T, heads, S, head_dim),
            keys.reshape(B * T, heads, S + key_frames * L, head_dim),
            values.reshape(B * T, heads, S + key_frames * L, head_dim),
            attn_mask=mask.reshape(B * T, heads, 1, S + key_frames * L),
        )  # (B*T, heads, S, head_dim)
        out = out.view(B, T, heads, S, head_dim).permute(0, 1, 3, 2, 4).reshape(B, T, S, C)
        if self.context_frames is not None:  # older frames are never looked at again
            keep = self.context_frames * L
            lat_k, lat_v = lat_k[:, :, -keep:], lat_v[:, :, -keep:]
        return self.proj(out), lat_k, lat_v


class EncoderBlock(nn.Module):
    def __init__(self, config: ARVAEConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width)
        self.attn = FrameAttention(config.width, config.num_heads)
        self.norm2 = nn.LayerNorm(config.width)
        self.mlp = Mlp(config.width, int(config.width * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, S, C)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    def __init__(self, config: ARVAEConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width)
        self.attn = CausalLatentAttention(config.width, config.num_heads, config.context_frames)
        self.norm2 = nn.LayerNorm(config.width)
        self.mlp = Mlp(config.width, int(config.width * config.mlp_ratio))

    def forward(
        self, x: torch.Tensor, num_latent: int, past_k: torch.Tensor, past_v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # x: (B, T, S, C)
        h, lat_k, lat_v = self.attn(self.norm1(x), num_latent, past_k, past_v)
        x = x + h
        return x + self.mlp(self.norm2(x)), lat_k, lat_v


# -----------------------------------------------------------------------------
# the model


class ARVAE(nn.Module):
    """Video `[B, 3, T, H, W]` <-> latent tokens `[B, T, L, D]`; causal decoder."""

    config_class = ARVAEConfig

    def __init__(self, config: ARVAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        gh, gw = c.grid
        patch_dim = c.in_channels * c.patch_size**2
        self.register_buffer(
            "patch_pos", spatial_sincos_embedding(gh, gw, c.width, torch.device("cpu")).reshape(gh * gw, c.width),
            persistent=False,
        )  # (N, C)
        # encoder
        self.patch_embed = nn.Linear(patch_dim, c.width)
        self.latent_tokens = nn.Parameter(torch.randn(c.num_latent_tokens, c.width) * 0.02)
        self.encoder_blocks = nn.ModuleList(EncoderBlock(c) for _ in range(c.encoder_depth))
        self.encoder_norm = nn.LayerNorm(c.width)
        self.to_moments = nn.Linear(c.width, 2 * c.latent_dim)
        # decoder
        self.from_latent = nn.Linear(c.latent_dim, c.width)
        self.latent_pos = nn.Parameter(torch.randn(c.num_latent_tokens, c.width) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(c.width) * 0.02)
        self.decoder_blocks = nn.ModuleList(DecoderBlock(c) for _ in range(c.decoder_depth))
        self.decoder_norm = nn.LayerNorm(c.width)
        self.to_pixels = nn.Linear(c.width, patch_dim)
        # Linear region <-> token paths: a strided conv reads each token's region with a
        # 2x overlapping window, a transposed conv writes it back (overlaps blend, so no
        # block seams). A local code generalises from little data and the transformers
        # learn the rest (the paper instead starts from a pretrained TiTok). Per frame, so
        # the encoder stays time-agnostic and the decoder causal.
        if c.linear_shortcut:
            rh, rw = c.token_region
            window = dict(kernel_size=(2 * rh, 2 * rw), stride=(rh, rw), padding=(rh // 2, rw // 2))
            self.shortcut_in = nn.Conv2d(c.in_channels, c.latent_dim, **window)
            self.shortcut_out = nn.ConvTranspose2d(c.latent_dim, c.in_channels, **window)
        else:
            self.shortcut_in = self.shortcut_out = None
        self.loss = AutoencoderLoss(c.losses)
        self.apply(self._init_weights)
        if c.linear_shortcut:  # zero: the decoder must not start by copying posterior noise to pixels
            nn.init.zeros_(self.shortcut_out.weight)
            nn.init.zeros_(self.shortcut_out.bias)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def latent_spec(self) -> LatentSpec:
        return self.config.latent_spec

    # --- checks and patches ---------------------------------------------------------

    def _check_video(self, video: torch.Tensor) -> torch.Tensor:
        """Layout, frame size and input contract; returns `video` in the parameters' dtype."""
        c = self.config
        check_tensor("video", video, floating=False, allow_empty=True)
        if video.ndim != 5 or video.shape[1] != c.in_channels:
            raise ValueError(f"video must be [B, {c.in_channels}, T, H, W], got shape {tuple(video.shape)}")
        if tuple(video.shape[3:]) != tuple(c.frame_size):
            raise ValueError(
                f"frame size {video.shape[3]}x{video.shape[4]} does not match this ARVAE's "
                f"frame_size {c.frame_size[0]}x{c.frame_size[1]}; resize the video or use a model "
                "configured for that size"
            )
        check_video("video", video)
        return to_model_dtype("video", video, model_dtype(self))

    def _check_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Layout and input contract of latents; returns them in the parameters' dtype."""
        c = self.config
        check_tensor("latents", latents, floating=False, allow_empty=True)
        if latents.ndim != 4 or latents.shape[2:] != (c.num_latent_tokens, c.latent_dim):
            raise ValueError(
                f"latents must be [B, T, L={c.num_latent_tokens}, D={c.latent_dim}], got shape {tuple(latents.shape)}"
            )
        check_values("latents", latents)
        return to_model_dtype("latents", latents, model_dtype(self))

    def _check_cache(self, cache: list[torch.Tensor], batch: int) -> list[torch.Tensor]:
        """A decoder cache from a previous call: `2 * decoder_depth` floating tensors
        `(B, heads, P * L, head_dim)`, returned in the parameters' dtype."""
        c = self.config
        if not isinstance(cache, (list, tuple)):
            raise ValueError(f"cache must be the list of tensors a previous call returned (or None), got {type(cache).__name__}")
        if len(cache) != 2 * c.decoder_depth:
            raise ValueError(f"ARVAE decoder cache must hold {2 * c.decoder_depth} tensors, got {len(cache)}")
        dtype, head_dim, L = model_dtype(self), c.width // c.num_heads, c.num_latent_tokens
        checked = []
        for i, state in enumerate(cache):
            check_tensor(f"cache[{i}]", state, allow_empty=True)
            ok = state.ndim == 4 and (state.shape[0], state.shape[1], state.shape[3]) == (batch, c.num_heads, head_dim)
            if ok and not torch.compiler.is_exporting():  # no guard on the traced cache length
                ok = state.shape[2] % L == 0
            if not ok:
                raise ValueError(
                    f"cache[{i}] must be [B={batch}, heads={c.num_heads}, P*{L}, head_dim={head_dim}] (P past "
                    f"frames), got shape {tuple(state.shape)}: was it made for another batch or model?"
                )
            if i and state.shape != cache[0].shape:
                raise ValueError(
                    f"cache[{i}] has shape {tuple(state.shape)} but cache[0] {tuple(cache[0].shape)}: every layer "
                    "holds the keys/values of the same past frames"
                )
            checked.append(to_model_dtype(f"cache[{i}]", state, dtype))
        return checked

    # --- stages ---------------------------------------------------------------------

    def forward_encoder(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior `(mean, logvar)`, each `[B, T, L, D]`; every frame is encoded alone."""
        video = self._check_video(video)
        B, T = video.shape[0], video.shape[2]
        L = self.config.num_latent_tokens
        patches = patchify(video, self.config.patch_size).flatten(0, 1).flatten(1, 2)  # (B*T, N, p*p*C)
        x = self.patch_embed(patches) + self.patch_pos
        x = torch.cat([x, self.latent_tokens.expand(x.shape[0], -1, -1)], dim=1)  # (B*T, N + L, C)
        for block in self.encoder_blocks:
            x = block(x)
        moments = self.to_moments(self.encoder_norm(x[:, -L:]))  # (B*T, L, 2D)
        mean, logvar = moments.view(B, T, L, -1).chunk(2, dim=-1)
        if self.shortcut_in is not None:
            frames = video.transpose(1, 2).flatten(0, 1)  # (B*T, C, H, W)
            code = self.shortcut_in(frames).flatten(2).transpose(1, 2)  # (B*T, L, D), row-major regions
            mean = mean + code.reshape(B, T, L, -1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward_decoder(
        self, latents: torch.Tensor, cache: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Latents `[B, T, L, D]` -> video `[B, 3, T, H, W]` and the cache after these frames.

        `cache` (from a previous call, or None at the start of a clip) is
        `[k_0, v_0, k_1, v_1, ...]`: per decoder layer the latent-token keys and values of
        past frames, `(B, heads, P * L, head_dim)`.
        """
        latents = self._check_latents(latents)
        c = self.config
        B, T, L, _ = latents.shape
        N = self.patch_pos.shape[0]
        head_dim = c.width // c.num_heads
        if cache is None:
            empty = latents.new_zeros(B, c.num_heads, 0, head_dim)
            cache = [empty] * (2 * c.decoder_depth)
        else:
            cache = self._check_cache(cache, B)
        lat = self.from_latent(latents) + self.latent_pos  # (B, T, L, C)
        mask_tokens = (self.mask_token + self.patch_pos).expand(B, T, N, c.width)
        x = torch.cat([lat, mask_tokens], dim=2)  # (B, T, L + N, C)
        new_cache: list[torch.Tensor] = []
        for i, block in enumerate(self.decoder_blocks):
            x, lat_k, lat_v = block(x, L, cache[2 * i], cache[2 * i + 1])
            new_cache += [lat_k, lat_v]
        gh, gw = c.grid
        patches = self.to_pixels(self.decoder_norm(x[:, :, L:])).view(B, T, gh, gw, -1)  # (B, T, h, w, p*p*C)
        video = unpatchify(patches, c.patch_size, c.in_channels)  # (B, C, T, H, W)
        if self.shortcut_out is not None:
            rh, rw = c.token_region
            regions = latents.reshape(B * T, c.frame_size[0] // rh, c.frame_size[1] // rw, -1).permute(0, 3, 1, 2)
            frames = self.shortcut_out(regions)  # (B*T, C, H, W)
            video = video + frames.view(B, T, *frames.shape[1:]).transpose(1, 2)
        return video, new_cache

    # --- Tokenizer API ----------------------------------------------------------------

    def encode_posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_encoder(video)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Deterministic latents (the posterior mean) `[B, T, L, D]`."""
        return self.forward_encoder(video)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `[B, T, L, D]` -> video `[B, 3, T, H, W]` (not clamped)."""
        return self.forward_decoder(latents)[0]

    def decode_chunk(
        self, latents: torch.Tensor, cache: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode the next latent frames of a clip (any number); `cache=None` starts a clip."""
        return self.forward_decoder(latents, cache)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruction from the posterior mean."""
        latents = self.encode(video)
        with trusted_inputs():
            return self.decode(latents)

    def training_losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named losses of `batch["video"]` `[B, 3, T, H, W]`; `"loss"` is the total."""
        if "video" not in batch:
            raise ValueError(f"batch must hold 'video'; got keys {sorted(batch)}")
        video = self._check_video(batch["video"])
        with trusted_inputs():  # checked above; the decoder's latents are the encoder's
            mean, logvar = self.forward_encoder(video)
            recon = self.decode(sample_diagonal_gaussian(mean, logvar))
        return self.loss(video, recon, mean, logvar, last_layer=self.to_pixels.weight)
