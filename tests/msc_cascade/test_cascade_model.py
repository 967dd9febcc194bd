"""CascadeModel: base/target construction per mode, the loss, the DDIM sampler, the frozen VAE, save/load."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msc_cascade.cascade_decoder import load_cascade
from msc_cascade.cascade_model import CascadeConfig, CascadeModel
from msc_cascade.cascade_sampling import target_latent_size
from msc_core import ConfigError, from_pretrained, save_pretrained
from msc_core.diffusion import alpha_bar_at, per_frame
from msc_core.testing import assert_state_dicts_equal


def video(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_base_and_target_share_the_vae_latent_space(make_cascade):
    # sr: base = latent of the 4x area-downsized clip; fps: latent of every 4th frame (§3.4 ii)
    sr = make_cascade("sr")
    clip = video((1, 3, 5, 64, 64))
    target, base = sr.encode_pair(clip)
    small = F.avg_pool2d(clip[0].transpose(0, 1), 4).transpose(0, 1)[None]  # (1, 3, 5, 16, 16)
    assert torch.allclose(base, sr.vae.encode(small), atol=1e-6)
    assert torch.equal(target, sr.vae.encode(clip))
    assert tuple(base.shape[2:]) == (2, 2, 2) and tuple(target.shape[2:]) == (2, 8, 8)

    fps = make_cascade("fps")
    clip = video((1, 3, 17, 16, 16))
    target, base = fps.encode_pair(clip)
    assert torch.equal(base, fps.vae.encode(clip[:, :, ::4]))  # frames 0, 4, ..., 16
    assert tuple(base.shape[2:]) == (2, 2, 2) and tuple(target.shape[2:]) == (5, 2, 2)
    assert target_latent_size("fps", 4, (2, 2, 2)) == (5, 2, 2)


def redraw_training_inputs(model, clip, seed):
    """`training_losses`' draws with the same generator seed (t first, then the noise):
    (t, target latents, base latents, x_t)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, model.config.num_timesteps, (clip.shape[0],), generator=gen)
    target, base = model.encode_pair(clip)
    noise = torch.randn(target.shape, generator=gen)
    ab = per_frame(alpha_bar_at(t, model.alphas_cumprod), target, 2).float()
    return t, target, base, ab.sqrt() * target + (1 - ab).sqrt() * noise


def test_training_loss_is_the_x0_mse_at_the_sampled_timestep(make_cascade):
    model = make_cascade("sr").train()
    clip = video((2, 3, 5, 64, 64))
    losses = model.training_losses({"video": clip}, generator=torch.Generator().manual_seed(3))
    t, target, base, x_t = redraw_training_inputs(model, clip, seed=3)
    from msc_cascade.dit import upsample_base_latent

    pred = model.dit(x_t, upsample_base_latent(base, tuple(target.shape[2:])), t)
    assert torch.allclose(losses["loss"], F.mse_loss(pred, target), rtol=1e-5)
    # precomputed latents give the same loss as the video
    cached = model.training_losses({"latents": target, "base_latents": base}, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(cached["loss"], losses["loss"], rtol=1e-6)
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.dit.parameters())


class OracleDiT(nn.Module):
    """Predicts the true clean latent (x0) or the noise that makes x_t from it (eps)."""

    def __init__(self, x0, alphas_cumprod, prediction):
        super().__init__()
        self.x0, self.ac, self.prediction = x0, alphas_cumprod, prediction

    def forward(self, x_t, base, t):
        if self.prediction == "x0":
            return self.x0
        ab = per_frame(alpha_bar_at(t, self.ac), x_t, 2).float()
        return (x_t - ab.sqrt() * self.x0) / (1 - ab).sqrt()


@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_ddim_refine_recovers_the_target_with_an_exact_denoiser(make_cascade, prediction):
    model = make_cascade("fps", prediction=prediction, latent_scale=0.5)
    base = torch.randn(1, 4, 2, 2, 2)
    target = torch.randn(1, 4, 5, 2, 2)
    model.dit = OracleDiT(target * 0.5, model.alphas_cumprod, prediction)  # the DiT works on scaled latents
    out = model.refine(base, steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, target, atol=1e-4)


def test_refine_is_deterministic_by_seed_and_has_the_mode_shapes(make_cascade):
    sr, fps = make_cascade("sr"), make_cascade("fps")
    base = torch.randn(2, 4, 3, 2, 3)
    a = sr.refine(base, generator=torch.Generator().manual_seed(5))
    assert a.shape == (2, 4, 3, 8, 12)
    assert torch.equal(a, sr.refine(base, generator=torch.Generator().manual_seed(5)))
    assert not torch.allclose(a, sr.refine(base, generator=torch.Generator().manual_seed(6)))
    assert fps.refine(base).shape == (2, 4, 9, 2, 3)  # 1 + 4 * (3 - 1) latent frames


def test_vae_is_frozen_and_kept_out_of_the_state_dict(make_cascade):
    model = make_cascade("sr")
    assert all(key.startswith("dit.") for key in model.state_dict())
    vae_params = {id(p) for p in model.vae.parameters()}
    assert vae_params and not vae_params & {id(p) for p in model.parameters()}
    assert not any(p.requires_grad for p in model.vae.parameters())
    model.train()
    assert not model.vae.training  # train() does not wake the frozen VAE
    model.to(torch.float64)  # device / dtype moves carry the VAE along
    assert next(model.vae.parameters()).dtype == torch.float64
    ema = copy.deepcopy(model)  # an EMA copy shares the frozen VAE instead of duplicating it
    assert ema.vae is model.vae and ema.dit is not model.dit


def test_save_load_round_trip_references_the_vae_by_path(make_cascade, tmp_path, tiny_vae_dir):
    model = make_cascade("fps")
    save_pretrained(model, tmp_path / "cascade")
    loaded = from_pretrained(CascadeModel, tmp_path / "cascade")
    assert_state_dicts_equal(model, loaded)
    assert loaded.config == model.config and loaded.config.vae_path == str(tiny_vae_dir)
    assert_state_dicts_equal(model.vae, loaded.vae)
    base = torch.randn(1, 4, 2, 2, 2)
    assert torch.equal(
        model.refine(base, generator=torch.Generator().manual_seed(0)),
        loaded.refine(base, generator=torch.Generator().manual_seed(0)),
    )
    # a moved VAE: override the recorded path
    moved = tmp_path / "vae_moved"
    save_pretrained(model.vae, moved)
    relocated = load_cascade(tmp_path / "cascade", vae_path=moved)
    assert relocated.config.vae_path == str(moved) and type(relocated) is CascadeModel
    assert_state_dicts_equal(model, relocated)


def test_bad_configs_and_inputs_are_named(make_cascade, tiny_vae_dir, tmp_path):
    with pytest.raises(ValueError, match=r"9 frames; fps mode .* needs 1 \+ 16\*j frames \(e.g. 1 or 17\)"):
        make_cascade("fps", num_frames=9)  # every 4th frame of 9 frames is 3 frames: not 1 + 4k
    with pytest.raises(ValueError, match="divisible by 32"):
        make_cascade("sr", height=48)
    with pytest.raises(ValueError, match="latent_channels=8 but the VAE"):
        make_cascade("sr", dit={"latent_channels": 8})
    with pytest.raises(FileNotFoundError, match="vae_path"):
        CascadeModel(CascadeConfig(dit={"latent_channels": 4}, vae_path=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="sample_steps=2000 exceeds"):
        CascadeConfig.from_dict({"dit": {}, "vae_path": "x", "sample_steps": 2000})
    model = make_cascade("sr")
    with pytest.raises(ValueError, match="'video', or 'latents' and 'base_latents'"):
        model.training_losses({"clip": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"base latents must be \[B, 4"):
        model.refine(torch.zeros(1, 3, 2, 2, 2))


# --- pixel conditioning: the baseline's own latent, refined by a residual ------------------


def baseline_video(model, base_latents):
    """Independent re-statement of the baselines: bicubic 4x per frame (sr), or frames blended
    linearly between the decoded keyframes (fps)."""
    keys = model.vae.decode(base_latents).clamp(-1, 1)  # (B, C, n, h, w)
    f = model.config.factor
    if model.config.mode == "sr":
        frames = [F.interpolate(keys[:, :, i], scale_factor=f, mode="bicubic", align_corners=False)
                  for i in range(keys.shape[2])]
        return torch.stack(frames, 2).clamp(-1, 1)
    out = []
    for k in range(1 + f * (keys.shape[2] - 1)):
        j, w = divmod(k, f)
        out.append(keys[:, :, j] if w == 0 else (1 - w / f) * keys[:, :, j] + (w / f) * keys[:, :, j + 1])
    return torch.stack(out, 2)


@pytest.mark.parametrize("mode", ["sr", "fps"])
def test_pixel_condition_is_the_reencoded_baseline_upsampling(make_cascade, mode):
    model = make_cascade(mode, conditioning="pixel", latent_scale=0.5)
    base = torch.randn(2, 4, 2, 2, 2) * 0.5
    expected = model.vae.encode(baseline_video(model, base)) * 0.5
    got = model.condition(base)
    assert got.shape == (2, 4, *model.target_size(base))
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["sr", "fps"])
def test_pixel_conditioned_cascade_with_a_silent_dit_returns_the_baseline(make_cascade, mode):
    model = make_cascade(mode, conditioning="pixel", latent_scale=0.5)
    for p in model.dit.final_layer.parameters():  # the DiT's correction is zero (its init)
        nn.init.zeros_(p)
    base = torch.randn(1, 4, 2, 2, 2) * 0.5
    out = model.refine(base, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, model.condition(base) / 0.5, atol=1e-5)


def test_pixel_conditioned_loss_is_the_mse_of_the_corrected_condition(make_cascade):
    model = make_cascade("sr", conditioning="pixel").train()
    clip = video((2, 3, 5, 64, 64))
    losses = model.training_losses({"video": clip}, generator=torch.Generator().manual_seed(3))
    t, target, base, x_t = redraw_training_inputs(model, clip, seed=3)
    condition = model.condition(base)
    assert torch.allclose(losses["loss"], F.mse_loss(condition + model.dit(x_t, condition, t), target), rtol=1e-5)


def test_pixel_conditioning_needs_x0_and_a_vae_encoder(make_cascade, tiny_vae_dir):
    from msc_cascade.cascade_decoder import CascadeDecodePipeline

    with pytest.raises(ValueError, match="conditioning='pixel'.*prediction='x0'"):
        make_cascade("sr", conditioning="pixel", prediction="eps")
    model = make_cascade("sr", conditioning="pixel")
    # a pipeline without a VAE encoder (the ONNX Runtime runner) refuses it clearly
    with pytest.raises(ValueError, match="needs the VAE encoder"):
        CascadeDecodePipeline(model.config, model.latent_spec, None).condition(torch.randn(1, 4, 2, 2, 2))
