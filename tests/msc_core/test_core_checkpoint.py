"""save_pretrained / from_pretrained round trips, atomicity and config errors."""

import json
import os

import pytest
import torch
from torch import nn

from msc_core import Config, ConfigError, from_pretrained, save_pretrained
from msc_core.checkpoint import atomic_path, atomic_write_bytes
from msc_core.testing import assert_state_dicts_equal


class TinyConfig(Config):
    dim: int = 8
    depth: int = 2
    tie: bool = True


class TinyNet(nn.Module):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(10, config.dim)
        self.layers = nn.ModuleList(nn.Linear(config.dim, config.dim) for _ in range(config.depth))
        self.head = nn.Linear(config.dim, 10, bias=False)
        if config.tie:
            self.head.weight = self.embed.weight  # shared tensor: safetensors needs save_model
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, idx):
        h = self.embed(idx)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return self.head(h * self.scale)


def test_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = TinyNet(TinyConfig(dim=12))
    save_pretrained(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    loaded = from_pretrained(TinyNet, tmp_path / "m")
    assert loaded.config == model.config
    assert_state_dicts_equal(model, loaded)
    assert loaded.head.weight.data_ptr() == loaded.embed.weight.data_ptr()  # tie restored
    idx = torch.randint(0, 10, (3, 5))
    assert torch.equal(model(idx), loaded(idx))


def test_unknown_config_field_is_refused_by_name(tmp_path):
    save_pretrained(TinyNet(TinyConfig()), tmp_path)
    (tmp_path / "manifest.json").unlink()  # a hand-edited config (with the manifest, refused as tampered)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["dropuot"] = 0.1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="dropuot"):
        from_pretrained(TinyNet, tmp_path)


def test_wrong_field_type_names_field():
    with pytest.raises(ConfigError, match=r"dim: .*got 'eight'"):
        TinyConfig.from_dict({"dim": "eight"})


def test_config_json_round_trip_and_frozen():
    cfg = TinyConfig(dim=4, tie=False)
    assert TinyConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(Exception):
        cfg.dim = 5  # frozen
    assert cfg.replace(dim=6).dim == 6
    with pytest.raises(ConfigError, match="depht"):
        cfg.replace(depht=3)


def test_mismatched_weights_are_reported(tmp_path):
    save_pretrained(TinyNet(TinyConfig(depth=2)), tmp_path)
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "config.json").write_text(TinyConfig(depth=3).to_json())
    with pytest.raises(ValueError, match=r"missing \['layers.2.bias', 'layers.2.weight'\]"):
        from_pretrained(TinyNet, tmp_path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model not found: .*nope"):
        from_pretrained(TinyNet, tmp_path / "nope")
    save_pretrained(TinyNet(TinyConfig()), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="model.safetensors has 8 bytes, its manifest says"):  # caught first
        from_pretrained(TinyNet, tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ValueError, match="cannot read weights"):
        from_pretrained(TinyNet, tmp_path)


def test_interrupted_write_keeps_previous_file(tmp_path):
    target = tmp_path / "model.safetensors"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half-writ")
            raise RuntimeError("killed during save")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temp file left behind


def test_save_requires_config(tmp_path):
    with pytest.raises(ValueError, match="no msc Config"):
        save_pretrained(nn.Linear(2, 2), tmp_path)


# --- what loads and what is refused ------------------------------------------------------


def test_an_export_verifies_against_its_manifest_and_an_older_export_without_one_loads(tmp_path):
    from msc_core.checkpoint import CorruptCheckpointError

    save_pretrained(TinyNet(TinyConfig()), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="model.safetensors does not match its SHA-256"):
        from_pretrained(TinyNet, tmp_path / "m")
    save_pretrained(TinyNet(TinyConfig()), tmp_path / "legacy")
    (tmp_path / "legacy" / "manifest.json").unlink()  # saved before exports carried a manifest
    assert isinstance(from_pretrained(TinyNet, tmp_path / "legacy"), TinyNet)


def test_a_checkpoint_folder_without_its_manifest_is_never_loaded_as_an_export(tmp_path):
    from msc_core.checkpoint import CorruptCheckpointError

    folder = save_pretrained(TinyNet(TinyConfig()), tmp_path / "checkpoint_000001")
    (folder / "manifest.json").unlink()
    with pytest.raises(CorruptCheckpointError, match="manifest.json is missing"):
        from_pretrained(TinyNet, folder)


def test_weights_that_do_not_fit_the_config_name_the_first_tensor(tmp_path):
    from safetensors.torch import save_file

    save_pretrained(TinyNet(TinyConfig(dim=8)), tmp_path / "m")
    (tmp_path / "m" / "manifest.json").unlink()
    (tmp_path / "m" / "config.json").write_text(TinyConfig(dim=12).to_json())  # another model's config
    with pytest.raises(ValueError, match=r"tensor 'embed.weight' has shape \[10, 8\], but the config in .* builds \[10, 12\]"):
        from_pretrained(TinyNet, tmp_path / "m")
    state = {k: v.clone() for k, v in TinyNet(TinyConfig()).state_dict().items() if k != "head.weight"}
    state["scale"] = torch.tensor(1, dtype=torch.int32)  # a float buffer stored as int32
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    (tmp_path / "m" / "config.json").write_text(TinyConfig().to_json())
    with pytest.raises(ValueError, match="tensor 'scale' is stored as I32"):
        from_pretrained(TinyNet, tmp_path / "m")


def test_nan_weights_are_refused_naming_the_tensor(tmp_path):
    model = TinyNet(TinyConfig())
    with torch.no_grad():
        model.layers[1].bias[0] = float("nan")
    save_pretrained(model, tmp_path / "m")
    with pytest.raises(ValueError, match=r"tensor 'layers.1.bias' holds 1 NaN or infinite values"):
        from_pretrained(TinyNet, tmp_path / "m")
