"""LatentSpec shape rules, GenerationRequest validation, runtime helpers, causality checker."""

import pytest
import torch

from msc_core import ConfigError, GenerationRequest, LatentSpec
from msc_core.runtime import rank_seed, resolve_device, resolve_dtype, seed_everything
from msc_core.testing import assert_frame_causal


def test_grid_spec_shapes_and_frame_rule():
    spec = LatentSpec(layout="grid", channels=16, temporal_compression=4, spatial_compression=8,
                      causal_first_frame=True)
    assert spec.latent_shape(2, 17, 64, 64) == (2, 16, 5, 8, 8)
    assert spec.pixel_frames(5) == 17 and spec.frame_dim == 2
    with pytest.raises(ValueError, match="nearest valid lengths: 13 or 17"):
        spec.latent_frames(16)
    with pytest.raises(ValueError, match="not divisible by the spatial compression 8"):
        spec.latent_shape(1, 17, 60, 64)


def test_token_spec():
    spec = LatentSpec(layout="tokens", channels=8, tokens_per_frame=32, spatial_compression=1)
    assert spec.latent_shape(3, 5, 64, 64) == (3, 5, 32, 8) and spec.frame_dim == 1
    with pytest.raises(ConfigError, match="tokens_per_frame is required"):
        LatentSpec.from_dict({"layout": "tokens", "channels": 8})


def test_generation_request_validates_and_round_trips():
    req = GenerationRequest(num_frames=8, prompt="a digit", seed=3, scheduler={"offset": 5})
    assert req.scheduler.offset == 5
    assert GenerationRequest.from_json(req.to_json()) == req
    with pytest.raises(ConfigError, match="num_frames"):
        GenerationRequest.from_dict({"num_frames": 0})
    with pytest.raises(ConfigError, match="offest"):
        GenerationRequest.from_dict({"num_frames": 2, "scheduler": {"offest": 1}})
    with_prefix = GenerationRequest(num_frames=4, prefix=torch.zeros(1, 3, 2, 8, 8))
    assert with_prefix.prefix.shape[2] == 2


def test_runtime_helpers():
    g1, g2 = seed_everything(7), seed_everything(7)
    assert torch.equal(torch.randn(3, generator=g1), torch.randn(3, generator=g2))
    assert len({rank_seed(1, r, w) for r in range(4) for w in range(4)}) == 16
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="valid:"):
        resolve_dtype("fp8")
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device("gpu0")


def test_causality_checker_catches_leaks():
    x = torch.randn(2, 6, 3)
    assert_frame_causal(lambda v: v.cumsum(1), x, frame_dim=1)
    with pytest.raises(AssertionError, match="frames <= 0 changed"):
        assert_frame_causal(lambda v: v.flip(1).cumsum(1), x, frame_dim=1)
    with pytest.raises(AssertionError, match="vacuous"):
        assert_frame_causal(lambda v: torch.zeros_like(v), x, frame_dim=1)
