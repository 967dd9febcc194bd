"""Finding the `Tokenizer` class of a saved tokenizer without importing its package.

msc-data encodes clips with any `msc_core.interfaces.Tokenizer` but may not import
msc-tokenizers (it does not depend on it). A tokenizer directory written by
`msc_core.checkpoint.save_pretrained` holds `config.json` with a `kind` field; the class
for that kind is found, in this order:

1. an explicit override, `"module:Class"` (CLI `--tokenizer-class`) or a class;
2. `register_tokenizer(kind, cls_or_path)` calls made in this process;
3. the importlib entry-point group `msc.tokenizers`: a package that provides
   tokenizers declares, in its pyproject.toml,

       [project.entry-points."msc.tokenizers"]
       vae3d = "msc_tokenizers.causal_vae3d:CausalVAE3D"

   (entry-point name = the config's `kind`, value = `module:Class`).

The class is then built with `msc_core.checkpoint.from_pretrained`, so it needs a
`config_class` and `__init__(config)`, and must satisfy the `Tokenizer` protocol.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path
from typing import Any

import torch

from msc_core.checkpoint import CONFIG_NAME, from_pretrained, resolve_pretrained
from msc_core.interfaces import Tokenizer
from msc_data.manifest import read_json_with_kind

ENTRY_POINT_GROUP = "msc.tokenizers"
_REGISTRY: dict[str, type | str] = {}


def register_tokenizer(kind: str, cls: type | str) -> None:
    """Map a config `kind` to a tokenizer class (or its `"module:Class"` path) in this process."""
    if not kind:
        raise ValueError("tokenizer kind must be a non-empty string")
    if isinstance(cls, str):
        _check_class_path(cls)
    _REGISTRY[kind] = cls


def _check_class_path(path: str) -> tuple[str, str]:
    module, sep, name = path.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"tokenizer class must be given as 'module:Class', got {path!r}")
    return module, name


def import_class(path: str) -> type:
    """The class named by `"package.module:Class"` (ValueError naming what is missing)."""
    module_name, name = _check_class_path(path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} for tokenizer class {path!r}: {err}") from None
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {name!r} (tokenizer class {path!r})")
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"{path!r} is a {type(obj).__name__}, not a class")
    return obj


def _entry_point_classes() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def known_tokenizer_kinds() -> list[str]:
    """Kinds resolvable right now (registered in this process or via entry points)."""
    return sorted(set(_REGISTRY) | set(_entry_point_classes()))


def resolve_tokenizer_class(kind: str) -> type:
    """The tokenizer class registered for `kind` (this process first, then entry points)."""
    if kind in _REGISTRY:
        cls = _REGISTRY[kind]
        return import_class(cls) if isinstance(cls, str) else cls
    entry_points = _entry_point_classes()
    if kind in entry_points:
        return import_class(entry_points[kind].value)
    known = ", ".join(known_tokenizer_kinds()) or "none"
    raise ValueError(
        f"no tokenizer class registered for kind {kind!r} (known kinds: {known}); install the package "
        f"that provides it (entry-point group {ENTRY_POINT_GROUP!r}), call "
        f"msc_data.register_tokenizer({kind!r}, cls), or pass --tokenizer-class module:Class"
    )


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def read_tokenizer_kind(directory: str | Path) -> str | None:
    """The `kind` field of the tokenizer config in `directory` (a run folder, an exported
    model/ folder or a checkpoint_* folder); None when it has none."""
    path = resolve_pretrained(directory).config
    missing = f"{path} not found: {directory} is not a saved tokenizer (save_pretrained) directory"
    return read_json_with_kind(path, missing)[1]


def load_tokenizer(
    directory: str | Path,
    tokenizer_class: type | str | None = None,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Build the tokenizer saved in `directory` (config.json + model.safetensors; or a run
    folder or checkpoint_* folder, msc_core.checkpoint.resolve_pretrained), in eval mode."""
    kind = read_tokenizer_kind(directory)
    if tokenizer_class is None:
        if kind is None:
            raise ValueError(
                f"{Path(directory) / CONFIG_NAME} has no 'kind' field; pass the class with --tokenizer-class module:Class"
            )
        cls = resolve_tokenizer_class(kind)
    else:
        cls = import_class(tokenizer_class) if isinstance(tokenizer_class, str) else tokenizer_class
    model = from_pretrained(cls, directory, device=device)
    if not isinstance(model, Tokenizer):
        raise ValueError(
            f"{class_path(cls)} is not a Tokenizer: it needs encode(video), decode(latents) and latent_spec"
        )
    return model
