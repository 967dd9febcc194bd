"""Metrics against straightforward references and closed forms."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from msc_data.metrics import (
    frechet_distance,
    frechet_distance_from_statistics,
    gaussian_statistics,
    motion_statistics,
    psnr,
    ssim,
)


def random_videos(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 2, 16, 18, generator=g, dtype=torch.float64) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return x, y


def slow_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> np.ndarray:
    """Wang et al. (2004) SSIM, window by window: 11x11 Gaussian (sigma 1.5), valid positions only."""
    k = np.arange(11) - 5
    g = np.exp(-(k**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    b, c, t, h, wd = x.shape
    out = np.zeros(b)
    for bi in range(b):
        per_frame = []
        for ti in range(t):
            values = []
            for ci in range(c):
                for i in range(h - 10):
                    for j in range(wd - 10):
                        px, py = x[bi, ci, ti, i : i + 11, j : j + 11], y[bi, ci, ti, i : i + 11, j : j + 11]
                        mx, my = (w * px).sum(), (w * py).sum()
                        vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                        cov = (w * (px - mx) * (py - my)).sum()
                        values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
            per_frame.append(np.mean(values))
        out[bi] = np.mean(per_frame)
    return out


def test_ssim_matches_a_window_by_window_reference() -> None:
    x, y = random_videos()
    np.testing.assert_allclose(ssim(x, y).numpy(), slow_ssim(x.numpy(), y.numpy()), rtol=1e-10, atol=1e-12)
    # float32 inputs agree to float32 precision.
    np.testing.assert_allclose(ssim(x.float(), y.float()).numpy(), slow_ssim(x.numpy(), y.numpy()), atol=1e-5)


def test_ssim_is_one_for_identical_videos_and_drops_with_noise() -> None:
    x, y = random_videos()
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    noisier = (x + 0.6 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).clamp(-1, 1)
    assert (ssim(x, noisier) < ssim(x, y)).all() and (ssim(x, y) < 1).all()


def test_psnr_formula_per_frame_then_mean() -> None:
    x, y = random_videos()
    mse = ((x - y) ** 2).mean(dim=(1, 3, 4))  # (B, T)
    torch.testing.assert_close(psnr(x, y), (10 * torch.log10(4.0 / mse)).mean(dim=1))
    # A constant offset of 0.1 in [-1, 1] units: MSE 0.01, PSNR = 10 log10(4 / 0.01) = 26.02 dB.
    base = torch.zeros(1, 3, 2, 8, 8)
    assert psnr(base, base + 0.1).item() == pytest.approx(10 * np.log10(400.0), abs=1e-4)
    assert torch.isinf(psnr(base, base)).all()
    # uint8 range: one grey level off everywhere -> 48.13 dB.
    assert psnr(base, base + 1, data_range=255.0).item() == pytest.approx(20 * np.log10(255.0), abs=1e-9)


def test_metrics_reject_mismatched_shapes() -> None:
    x, _ = random_videos()
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, x[:, :, :1])
    with pytest.raises(ValueError, match="smaller than the 11x11 SSIM window"):
        ssim(x[..., :8, :8], x[..., :8, :8])


def test_frechet_distance_matches_closed_forms() -> None:
    rng = np.random.default_rng(0)
    # 1D: (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance_from_statistics(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == \
        pytest.approx(9.0 + 1.0)
    # Covariances sharing eigenvectors Q: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance_from_statistics(mu_a, q @ np.diag(a) @ q.T, mu_b, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_features_matches_scipy_sqrtm() -> None:
    scipy_linalg = pytest.importorskip("scipy.linalg")  # installed with the bundled-data extras
    rng = np.random.default_rng(1)
    fa = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))
    fb = rng.normal(size=(150, 5)) @ rng.normal(size=(5, 5)) + 0.5
    mu_a, sa = fa.mean(0), np.cov(fa, rowvar=False)
    mu_b, sb = fb.mean(0), np.cov(fb, rowvar=False)
    covmean = scipy_linalg.sqrtm(sa @ sb).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean)
    assert frechet_distance(torch.from_numpy(fa), fb) == pytest.approx(expected, rel=1e-8)
    mu, sigma = gaussian_statistics(fa)
    np.testing.assert_allclose(sigma, sa) and np.testing.assert_allclose(mu, mu_a)
    assert abs(frechet_distance(fa, fa)) < 1e-8
    assert frechet_distance(fa, fb) == pytest.approx(frechet_distance(fb, fa), rel=1e-8)
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(fa, fb[:, :3])


def test_motion_statistics_measure_a_known_translation() -> None:
    # A smooth texture panned by exactly 1 pixel per frame; and the same frame repeated.
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (64, 96)).astype(np.float32), (0, 0), 3)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    panned = np.stack([texture[:, t : t + 64] for t in range(8)])  # (T, H, W)
    still = np.stack([texture[:, :64]] * 8)
    video = torch.from_numpy(np.stack([panned, still])).float().div(127.5).sub(1).unsqueeze(1)  # (2, 1, 8, 64, 64)
    stats = motion_statistics(video)
    assert stats["motion"][0].item() == pytest.approx(1.0, abs=0.15)
    assert stats["motion"][1].item() < 0.01 and stats["frame_difference"][1].item() == 0.0
    assert stats["motion_std"][0].item() < 0.1 and stats["frame_difference"][0].item() > 0
