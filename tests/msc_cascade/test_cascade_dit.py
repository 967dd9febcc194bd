"""Cascade DiT: grid schedules, receptive fields, base conditioning, save/load."""

import pytest
import torch

from msc_cascade.dit import CascadeDiT, CascadeDiTConfig, default_grid_schedule, upsample_base_latent
from msc_core import ConfigError, from_pretrained, save_pretrained
from msc_core.testing import assert_state_dicts_equal, perturb_parameters


def tiny(**kw):
    base = dict(latent_channels=4, dim=32, depth=2, num_heads=2, window=2, chunk=2, timestep_frequency_dim=32)
    return CascadeDiTConfig(**{**base, **kw})


def randomize(model):
    """Leave DiT's zero init so every path carries signal."""
    return perturb_parameters(model, seed=0, scale=0.2)


def influence(model, x, base, t, where):
    """Which output tokens (T, H, W) change when the input token `where` changes."""
    out = model(x, base, t)
    x2 = x.clone()
    x2[(slice(None), slice(None)) + where] += 1.0
    return (model(x2, base, t) - out).abs().amax(dim=(0, 1)) > 0


def test_default_schedule():
    assert default_grid_schedule(8) == ("spatial", "temporal", "spatial", "full") * 2


@pytest.mark.parametrize("schedule,reach_all", [
    (("spatial", "spatial"), False),   # never leaves its spatial window
    (("temporal", "temporal"), False),  # never leaves its frame chunk
    (("spatial", "temporal"), True),   # two alternating layers cover the whole volume
    (("full", "full"), True),
])
def test_each_schedule_entry_has_its_receptive_field(schedule, reach_all):
    model = randomize(CascadeDiT(tiny(grid_schedule=schedule))).eval()
    x, base = torch.randn(1, 4, 4, 4, 4), torch.randn(1, 4, 4, 4, 4)
    with torch.no_grad():
        reached = influence(model, x, base, torch.tensor([10]), (0, 0, 0))  # (T, H, W)
    assert bool(reached.all()) == reach_all
    if schedule[0] == "spatial" and not reach_all:
        assert reached[:, :2, :2].all() and not reached[:, 2:].any()  # window 2: rows/cols 0-1, all frames
    if schedule[0] == "temporal" and not reach_all:
        assert reached[:2].all() and not reached[2:].any()  # chunk 2: frames 0-1, all positions


def test_base_latent_and_timestep_condition_the_output():
    model = randomize(CascadeDiT(tiny())).eval()
    x, base = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    t = torch.tensor([5, 900])
    with torch.no_grad():
        out = model(x, base, t)
        assert not torch.allclose(out, model(x, base + 1, t))
        assert not torch.allclose(out[0], model(x, base, torch.tensor([600, 900]))[0])
        assert torch.equal(out[1], model(x, base, torch.tensor([600, 900]))[1])  # per-sample timestep


def test_overfits_a_fixed_denoising_pair():
    torch.manual_seed(0)
    model = CascadeDiT(tiny(depth=3, grid_schedule=("spatial", "temporal", "full")))
    target, base = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    x_t, t = torch.randn_like(target), torch.tensor([100, 700])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = (model(x_t, base, t) - target).pow(2).mean().item()
    for _ in range(300):  # stops as soon as the loss is 10x down
        loss = (model(x_t, base, t) - target).pow(2).mean()
        if loss.item() < first / 10:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10


def test_save_load_round_trip(tmp_path):
    model = randomize(CascadeDiT(tiny(grid_schedule=("full", "temporal"))))
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(CascadeDiT, tmp_path)
    assert_state_dicts_equal(model, loaded)
    x = torch.randn(1, 4, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(model.eval()(x, x, torch.tensor([3])), loaded(x, x, torch.tensor([3])))


def test_bad_configs_and_inputs():
    with pytest.raises(ConfigError, match="grid_schedule has 1 entries, depth=2"):
        CascadeDiTConfig.from_dict({"depth": 2, "grid_schedule": ["full"]})
    with pytest.raises(ConfigError, match="grid_schedule"):
        CascadeDiTConfig.from_dict({"depth": 1, "grid_schedule": ["diagonal"]})
    model = CascadeDiT(tiny())
    x = torch.randn(1, 4, 2, 4, 4)
    with pytest.raises(ValueError, match="must be upsampled to the target shape"):
        model(x, x[:, :, :1], torch.tensor([1]))
    with pytest.raises(ValueError, match="one timestep per sample"):
        model(x, x, torch.tensor([[1, 2]]))


def test_upsample_base_latent_aligns_ends_and_preserves_constants():
    base = torch.randn(1, 2, 3, 2, 2)
    up = upsample_base_latent(base, (9, 2, 2))
    assert torch.allclose(up[:, :, 0], base[:, :, 0]) and torch.allclose(up[:, :, -1], base[:, :, -1])
    assert torch.allclose(up[:, :, 4], base[:, :, 1])  # the middle frame maps to the middle
    const = torch.full((1, 2, 2, 3, 3), 0.7)
    assert torch.allclose(upsample_base_latent(const, (5, 12, 12)), torch.full((1, 2, 5, 12, 12), 0.7))
