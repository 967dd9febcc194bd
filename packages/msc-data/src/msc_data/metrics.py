"""Offline video metrics: PSNR, SSIM, motion statistics, Fréchet distance.

No downloaded weights: the Fréchet distance takes features the caller computed (e.g.
with any video encoder) and compares their Gaussian fits, as FID/FVD do.

Conventions: videos are `[B, C, T, H, W]` tensors, by default in `[-1, 1]`
(`data_range=2`); PSNR and SSIM are computed per frame and averaged over the frames,
giving one value per video `[B]`.

- PSNR: `10 log10(data_range^2 / MSE)` per frame (inf for identical frames).
- SSIM: Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1=0.01,
  K2=0.03, "valid" windows only (no padding), averaged over pixels and channels.
- Motion: the optical-flow motion score of `msc_data.motion` (NOVA Sec. 3.2) per video,
  its spread over frame pairs, and the mean absolute frame difference.
- Fréchet distance: `|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`; the trace of
  the matrix square root is taken from the eigenvalues of `S_a^(1/2) S_b S_a^(1/2)`
  (similar to `S_a S_b`, but symmetric), which is stable without scipy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from msc_data.motion import MotionMethod, flow_magnitudes
from msc_data.video_tensor import video_to_frames


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"videos must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim != 5:
        raise ValueError(f"videos must be [B, C, T, H, W], got shape {tuple(x.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-video PSNR in dB `[B]`: per-frame PSNR averaged over frames."""
    _check_pair(x, y)
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    mse = (x.double() - y.double()).pow(2).mean(dim=(1, 3, 4))  # (B, T)
    return (10.0 * torch.log10(data_range**2 / mse)).mean(dim=1)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1D Gaussian `(size,)`, float64; the 2D window is its outer product."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be odd and positive, got {size}")
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 2.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-video SSIM `[B]`: mean SSIM map of each frame (all channels), averaged over frames."""
    _check_pair(x, y)
    b, c, t, h, w = x.shape
    if h < window_size or w < window_size:
        raise ValueError(f"frames {h}x{w} are smaller than the {window_size}x{window_size} SSIM window")
    g = gaussian_window(window_size, sigma).to(x.device)
    kernel_h = g.view(1, 1, window_size, 1).expand(c, 1, window_size, 1)
    kernel_w = g.view(1, 1, 1, window_size).expand(c, 1, 1, window_size)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid windows only
        return F.conv2d(F.conv2d(z, kernel_h, groups=c), kernel_w, groups=c)

    frames_x = x.double().transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
    frames_y = y.double().transpose(1, 2).reshape(b * t, c, h, w)
    mu_x, mu_y = blur(frames_x), blur(frames_y)
    var_x = blur(frames_x * frames_x) - mu_x**2
    var_y = blur(frames_y * frames_y) - mu_y**2
    cov = blur(frames_x * frames_y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).view(b, t).mean(dim=1)


def motion_statistics(video: torch.Tensor, method: MotionMethod = "farneback") -> dict[str, torch.Tensor]:
    """Per-video motion of `[B, C, T, H, W]` videos in `[-1, 1]` (T >= 2).

    `motion`: mean optical-flow magnitude (pixels per frame, as the shards' motion score);
    `motion_std`: its standard deviation over frame pairs;
    `frame_difference`: mean absolute difference of adjacent frames (in [-1, 1] units).
    """
    if video.ndim != 5 or video.shape[2] < 2:
        raise ValueError(f"video must be [B, C, T, H, W] with T >= 2, got {tuple(video.shape)}")
    if video.shape[1] not in (1, 3):
        raise ValueError(f"video must have 1 or 3 channels, got {video.shape[1]}")
    flows = np.stack([flow_magnitudes(video_to_frames(v), method) for v in video])  # (B, T-1)
    diff = (video[:, :, 1:].double() - video[:, :, :-1].double()).abs().mean(dim=(1, 2, 3, 4))
    return {
        "motion": torch.from_numpy(flows.mean(axis=1)),
        "motion_std": torch.from_numpy(flows.std(axis=1)),
        "frame_difference": diff.cpu(),
    }


def _as_features(features: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    f = features.detach().double().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"{name} must be [N, D] features with N >= 2, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or inf")
    return f


def gaussian_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean `(D,)` and unbiased covariance `(D, D)` of `[N, D]` features (float64)."""
    f = _as_features(features, "features")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_statistics(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray
) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sigma_a, sigma_b = np.atleast_2d(sigma_a).astype(np.float64), np.atleast_2d(sigma_b).astype(np.float64)
    d = mu_a.shape[0]
    if mu_b.shape != (d,) or sigma_a.shape != (d, d) or sigma_b.shape != (d, d):
        raise ValueError(
            f"statistics must be mu (D,) and sigma (D, D) of one D, got {mu_a.shape}, {sigma_a.shape}, "
            f"{mu_b.shape}, {sigma_b.shape}"
        )
    root_a = _psd_sqrt(sigma_a)
    middle = root_a @ sigma_b @ root_a
    trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * trace_sqrt)


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two `[N, D]` feature sets (FID/FVD formula)."""
    fa, fb = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature sets have different dimensions: {fa.shape[1]} and {fb.shape[1]}")
    return frechet_distance_from_statistics(*gaussian_statistics(fa), *gaussian_statistics(fb))
