"""Offline metrics for generated video: moving MNIST through a shipped digit classifier,
natural video through fixed hand-made statistics. No downloads, deterministic.

Videos are `[B, C, T, H, W]` tensors in `[-1, 1]` (C = 1 or 3), the msc convention.

Moving MNIST (one digit per clip; `msc_data.digit_classifier`, 32x32 frames, other sizes
area-resized, RGB averaged to gray, values clamped to `[-1, 1]`):

- `recognition_rate(videos, labels)`: fraction of frames the classifier reads as the
  requested digit, overall and per frame position (how fast an autoregressive rollout
  loses the digit).
- `identity_consistency(videos)`: fraction of frames whose predicted digit is the clip's
  majority digit (does the digit morph into another one?).
- `classifier_frechet_distance(a, b, per="clip")`: FVD's recipe with an offline network:
  the Fréchet distance (`msc_data.metrics.frechet_distance`) between Gaussian fits of
  per-clip features = [mean over frames, std over frames] of the classifier's 64-d
  penultimate features (`per="clip"`, 128-d; sensitive to what changes over time), or of
  the per-frame features themselves (`per="frame"`, 64-d; an FID on frames).
- `motion_statistic(videos)`: mean absolute frame difference and the speed of the
  centroid of the bright pixels (pixels per frame at the video's resolution).

Natural video:

- `high_frequency_energy_ratio(video, reference, cutoff)`: spectral energy above `cutoff`
  (fraction of Nyquist, radial) of `video` over that of `reference`; < 1 is blurrier.
- `feature_distance(a, b)`: Fréchet distance between per-frame hand-made statistics
  (`frame_statistics_features`): intensity histogram, per-channel means, and at three
  scales a gradient-magnitude histogram, a magnitude-weighted orientation histogram and
  the RMS Laplacian. It sees sharpness, contrast, edge and texture statistics, not
  content: two sets of different objects with similar textures are close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F

from msc_data.digit_classifier import INK_THRESHOLD, NUM_CLASSES, DigitClassifier, ink_centroid, load_digit_classifier
from msc_data.metrics import frechet_distance


def check_videos(videos: torch.Tensor, name: str = "videos", min_frames: int = 1) -> torch.Tensor:
    """Refuse what is not a finite `[B, C, T, H, W]` tensor with C in {1, 3} and T >= min_frames."""
    if not isinstance(videos, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [B, C, T, H, W], got {type(videos).__name__}")
    if videos.ndim != 5:
        raise ValueError(f"{name} must be [B, C, T, H, W] (5 dims), got shape {tuple(videos.shape)}")
    b, c, t, h, w = videos.shape
    if c not in (1, 3):
        raise ValueError(f"{name} must have C = 1 or 3 channels, got shape {tuple(videos.shape)}")
    if min(b, h, w) < 1 or t < min_frames:
        raise ValueError(f"{name} must have B, H, W >= 1 and T >= {min_frames}, got shape {tuple(videos.shape)}")
    if not videos.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [-1, 1], got dtype {videos.dtype}")
    bad = int((~torch.isfinite(videos)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} non-finite values (NaN or inf); videos must be finite, in [-1, 1]")
    return videos


def _frames(videos: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = videos.shape
    return videos.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)


# --------------------------------------------------------------------------- moving MNIST


@torch.no_grad()
def _per_frame(
    videos: torch.Tensor, classifier: DigitClassifier | None, fn: Callable[[DigitClassifier, torch.Tensor], torch.Tensor],
    batch_size: int = 1024,
) -> torch.Tensor:
    """`fn(classifier, frames)` over every frame, batched: `(B, T, ...)` on the CPU."""
    b, _, t, _, _ = videos.shape
    model = classifier if classifier is not None else load_digit_classifier(videos.device)
    device = next(model.parameters()).device
    frames = _frames(videos).clamp(-1.0, 1.0)
    out = torch.cat([fn(model, frames[i : i + batch_size].to(device)).cpu() for i in range(0, len(frames), batch_size)])
    return out.reshape(b, t, *out.shape[1:])


def predict_digits(videos: torch.Tensor, classifier: DigitClassifier | None = None) -> torch.Tensor:
    """The digit the classifier reads in every frame: int64 `(B, T)`."""
    check_videos(videos)
    return _per_frame(videos, classifier, lambda m, x: m(x).argmax(dim=1))


def classifier_features(
    videos: torch.Tensor, classifier: DigitClassifier | None = None, per: Literal["clip", "frame"] = "clip"
) -> torch.Tensor:
    """`per="clip"`: `[B, 2D]` = [mean, std over frames] of each clip's frame features;
    `per="frame"`: `[B*T, D]` frame features (D = 64 for the shipped classifier), float64."""
    if per not in ("clip", "frame"):
        raise ValueError(f"per must be 'clip' or 'frame', got {per!r}")
    check_videos(videos)
    f = _per_frame(videos, classifier, lambda m, x: m.features(x)).double()  # (B, T, D)
    if per == "frame":
        return f.reshape(-1, f.shape[-1])
    return torch.cat([f.mean(dim=1), f.std(dim=1, unbiased=False)], dim=1)  # (B, 2D)


def _check_labels(labels: torch.Tensor | Sequence[int], batch: int) -> torch.Tensor:
    y = torch.as_tensor(labels)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integer digits 0..9, got dtype {y.dtype}")
    if y.shape != (batch,):
        raise ValueError(f"labels must be [B] = [{batch}] (one digit per video), got shape {tuple(y.shape)}")
    out_of_range = y[(y < 0) | (y >= NUM_CLASSES)]
    if len(out_of_range):
        raise ValueError(f"labels must be digits 0..9, got {sorted(set(out_of_range.tolist()))}")
    return y.long().cpu()


@dataclass(frozen=True)
class RecognitionRate:
    overall: float  # fraction of all frames read as the requested digit
    per_frame: tuple[float, ...]  # the same fraction at each frame position t, over the clips


def recognition_rate(
    videos: torch.Tensor, labels: torch.Tensor | Sequence[int], classifier: DigitClassifier | None = None
) -> RecognitionRate:
    """How often the classifier reads the requested digit `labels[b]` in the frames of video `b`."""
    check_videos(videos)
    y = _check_labels(labels, videos.shape[0])
    hits = (predict_digits(videos, classifier) == y[:, None]).double()  # (B, T)
    return RecognitionRate(overall=float(hits.mean()), per_frame=tuple(hits.mean(dim=0).tolist()))


def identity_consistency(videos: torch.Tensor, classifier: DigitClassifier | None = None) -> float:
    """Fraction of frames whose predicted digit is their clip's most frequent prediction
    (ties go to the smaller digit); 1.0 when no clip changes digit."""
    predictions = predict_digits(videos, classifier)  # (B, T)
    counts = F.one_hot(predictions, NUM_CLASSES).sum(dim=1)  # (B, 10)
    majority = counts.argmax(dim=1)  # first maximum: the smaller digit on ties
    return float((predictions == majority[:, None]).double().mean())


def classifier_frechet_distance(
    videos_a: torch.Tensor, videos_b: torch.Tensor, classifier: DigitClassifier | None = None,
    per: Literal["clip", "frame"] = "clip",
) -> float:
    """Fréchet distance between the `classifier_features(..., per)` of two video sets
    (0 for identical sets). Use more clips (`per="clip"`) or frames (`per="frame"`) than
    the 128 or 64 feature dimensions: with fewer the covariances are singular, the value
    is biased and its numerical error grows to ~1e-4."""
    fa = classifier_features(check_videos(videos_a, "videos_a"), classifier, per)
    fb = classifier_features(check_videos(videos_b, "videos_b"), classifier, per)
    for name, f in (("videos_a", fa), ("videos_b", fb)):
        if len(f) < 2:
            raise ValueError(f"{name} gives {len(f)} {per} feature vector(s); a Fréchet distance needs at least 2")
    return frechet_distance(fa, fb)


def motion_statistic(videos: torch.Tensor, threshold: float = INK_THRESHOLD) -> dict[str, float]:
    """Motion of `[B, C, T, H, W]` videos (T >= 2), averaged over clips and frame pairs.

    - `frame_difference`: mean absolute difference of adjacent frames (in [-1, 1] units).
    - `centroid_speed`: mean distance (pixels per frame, at the video's resolution) the
      centroid of the bright pixels moves between adjacent frames; pixels weigh
      `max(gray - threshold, 0)` (`digit_classifier.ink_centroid`), so a black background
      and faint noise weigh nothing. Pairs with a frame without bright pixels are left
      out; NaN if all are.
    - `tracked_pairs`: the fraction of frame pairs that entered `centroid_speed`.
    """
    check_videos(videos, min_frames=2)
    if not -1.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [-1, 1), got {threshold}")
    x = videos.detach().double().cpu()
    diff = float((x[:, :, 1:] - x[:, :, :-1]).abs().mean())
    b, _, t, h, w = x.shape
    centroid, mass = ink_centroid(x.mean(dim=1).reshape(b * t, h, w), threshold)
    centroid, mass = centroid.reshape(b, t, 2), mass.reshape(b, t)
    steps = (centroid[:, 1:] - centroid[:, :-1]).norm(dim=-1)  # (B, T-1)
    tracked = (mass[:, 1:] > 0) & (mass[:, :-1] > 0)
    speed = float(steps[tracked].mean()) if tracked.any() else math.nan
    return {"frame_difference": diff, "centroid_speed": speed, "tracked_pairs": float(tracked.double().mean())}


# --------------------------------------------------------------------------- natural video


def _high_frequency_energy(video: torch.Tensor, cutoff: float) -> float:
    """Mean per-pixel spectral energy above `cutoff` (radial, fraction of Nyquist) of the
    Hann-windowed, mean-removed frames, averaged over frames and channels."""
    frames = video.detach().double().cpu().reshape(-1, *video.shape[-2:])  # (B*C*T, H, W)
    h, w = frames.shape[-2:]
    frames = frames - frames.mean(dim=(1, 2), keepdim=True)
    # the window keeps the frame's wrap-around edge (FFT periodicity) from reading as detail
    window = torch.outer(torch.hann_window(h, periodic=False, dtype=torch.float64),
                         torch.hann_window(w, periodic=False, dtype=torch.float64)) if min(h, w) > 2 else 1.0
    power = torch.fft.fft2(frames * window).abs().pow(2)  # (N, H, W)
    fy, fx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / 0.5  # 1.0 = Nyquist
    return float(power[:, radius > cutoff].sum(dim=1).mean()) / (h * w)


def high_frequency_energy_ratio(video: torch.Tensor, reference: torch.Tensor, cutoff: float = 0.25) -> float:
    """Spectral energy of `video` above `cutoff` x Nyquist (radial 2D FFT per frame and
    channel) over the same energy of `reference`: 1.0 = as much fine detail, < 1 blurrier,
    > 1 sharper or noisier. Both `[B, C, T, H, W]` with the same C, H, W (B, T may differ)."""
    check_videos(video, "video")
    check_videos(reference, "reference")
    if video.shape[1] != reference.shape[1] or video.shape[-2:] != reference.shape[-2:]:
        raise ValueError(f"video and reference must share C, H, W, got shapes {tuple(video.shape)} and "
                         f"{tuple(reference.shape)}")
    if not 0.0 < cutoff < 1.0:
        raise ValueError(f"cutoff is a fraction of the Nyquist frequency in (0, 1), got {cutoff}")
    ref = _high_frequency_energy(reference, cutoff)
    if ref <= 0.0:
        raise ValueError(f"reference has no spectral energy above cutoff={cutoff} (flat frames?); the ratio is undefined")
    return _high_frequency_energy(video, cutoff) / ref


_MAGNITUDE_EDGES = (0.0, 0.01, 0.03, 0.06, 0.1, 0.18, 0.3, 0.5)  # gradient per pixel, [0, 1] units
_SCALES = (1, 2, 4)
_BINS = 8


def _histogram(values: torch.Tensor, edges: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row histogram of `(N, P)` values into bins [edges[i], edges[i+1]) (the last one
    open-ended), as fractions of each row's (weighted) count: `(N, len(edges))`."""
    index = torch.bucketize(values, edges, right=True) - 1  # (N, P), 0..len(edges)-1
    w = torch.ones_like(values) if weights is None else weights
    hist = torch.zeros(values.shape[0], len(edges), dtype=values.dtype).scatter_add_(1, index.clamp(min=0), w)
    return hist / hist.sum(dim=1, keepdim=True).clamp(min=1e-12)


def frame_statistics_features(videos: torch.Tensor) -> torch.Tensor:
    """Fixed, deterministic per-frame features `[B*T, 62]` (float64) of `[B, C, T, H, W]`
    videos in `[-1, 1]` (H, W >= 16): intensity histogram (8 bins), per-channel means (3;
    gray repeated for C = 1), and at scales 1, 1/2, 1/4 (area) a gradient-magnitude
    histogram (8 fixed bins), an orientation histogram weighted by magnitude (8 bins over
    0..pi) and the RMS Laplacian."""
    check_videos(videos)
    if min(videos.shape[-2:]) < 16:
        raise ValueError(f"frames must be at least 16x16 for three scales, got {tuple(videos.shape[-2:])}")
    frames = (_frames(videos.detach().cpu().double()).clamp(-1, 1) + 1.0) / 2.0  # (N, C, H, W) in [0, 1]
    means = frames.mean(dim=(2, 3)).expand(-1, 3) if frames.shape[1] == 1 else frames.mean(dim=(2, 3))  # (N, 3)
    gray = frames.mean(dim=1, keepdim=True)  # (N, 1, H, W)
    n = len(gray)
    parts = [_histogram(gray.reshape(n, -1), torch.linspace(0, 1, _BINS + 1, dtype=torch.float64)[:-1]), means]
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float64) / 8.0
    laplace = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    kernels = torch.stack([sobel, sobel.T, laplace])[:, None]  # (3, 1, 3, 3): d/dx, d/dy, Laplacian
    magnitude_edges = torch.tensor(_MAGNITUDE_EDGES, dtype=torch.float64)
    orientation_edges = torch.linspace(0, math.pi, _BINS + 1, dtype=torch.float64)[:-1]
    for scale in _SCALES:
        g = F.avg_pool2d(gray, scale) if scale > 1 else gray
        d = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), kernels)  # (N, 3, h, w)
        gx, gy, lap = d[:, 0].reshape(n, -1), d[:, 1].reshape(n, -1), d[:, 2].reshape(n, -1)
        magnitude = torch.sqrt(gx**2 + gy**2)
        orientation = torch.remainder(torch.atan2(gy, gx), math.pi)  # unsigned edge direction
        parts += [_histogram(magnitude, magnitude_edges), _histogram(orientation, orientation_edges, magnitude),
                  lap.pow(2).mean(dim=1, keepdim=True).sqrt()]
    return torch.cat(parts, dim=1)


def feature_distance(videos_a: torch.Tensor, videos_b: torch.Tensor) -> float:
    """Fréchet distance between the `frame_statistics_features` of two video sets with the
    same H, W (a frame-level FID with hand-made features; 0 for identical sets). Use a few
    hundred frames per set or more: the features are 62-d."""
    check_videos(videos_a, "videos_a")
    check_videos(videos_b, "videos_b")
    if videos_a.shape[-2:] != videos_b.shape[-2:]:
        raise ValueError(f"videos_a and videos_b must share H, W (the features are per pixel scale), got "
                         f"{tuple(videos_a.shape)} and {tuple(videos_b.shape)}")
    return frechet_distance(frame_statistics_features(videos_a), frame_statistics_features(videos_b))
