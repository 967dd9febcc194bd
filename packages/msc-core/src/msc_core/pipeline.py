"""`VideoPipeline`: a generator, its tokenizer and an optional cascade refiner, as one model.

The papers generate in a tokenizer's latent space: AR-Diffusion on AR-VAE tokens, NOVA
on 3D-VAE latents, and CascadeV refines coarse 3D-VAE latents before the VAE decodes.
A pipeline joins the parts through their protocols only (it imports no concrete
model): each package registers its kinds under an entry-point group, and a pipeline
folder names each component's kind and subfolder (diffusers' `model_index.json`):

    pipeline.json        {"generator": {"kind": "ardiffusion", "folder": "generator"},
                          "tokenizer": {"kind": "arvae", "folder": "tokenizer"},
                          "refiner": null}
    generator/           config.json + model.safetensors
    tokenizer/           config.json + model.safetensors + latent_normalization.json
    refiner/             (optional) a cascade, decoding with tokenizer/ as its VAE

Generators model unit-variance latents (`msc_core.latents.LatentNormalization`, stored
with the tokenizer); the pipeline normalises prefix latents on the way in and maps
generated latents back before decoding.

- `pipeline(request)`: the video `[B, 3, T, H, W]` in [-1, 1]; `request.num_frames` and
  `request.prefix` are in video frames (a prefix continues a video; one frame is
  image-to-video), past the generator's training length too.
- `pipeline.stream(request)`: the same frames, each `(B, 3, H, W)`, yielded as soon as it
  is final: the generator yields each latent frame once it is done (AD order, NOVA frame
  order) and the tokenizer decodes it through its causal chunk cache (`decode_chunk`),
  so no frame is decoded twice and memory does not grow with the number of frames.
- `decoder="onnx"`: the tokenizer's exported decoder (`tokenizer/decoder.onnx`) decodes,
  in ONNX Runtime, through a runner registered under `msc.onnx_decoders`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from msc_core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_write_text, from_pretrained, read_config_kind
from msc_core.interfaces import GenerationRequest, LatentSpec
from msc_core.latents import LatentNormalization

PIPELINE_FILE = "pipeline.json"
ONNX_DECODER_FILE = "decoder.onnx"
FORMAT_VERSION = 1
GROUPS = {
    "generator": "msc.generators",  # entry point -> the generator class (from_pretrained)
    "tokenizer": "msc.tokenizers",  # entry point -> the tokenizer class (from_pretrained)
    "refiner": "msc.refiners",  # entry point -> loader(folder, vae_path=..., device=...) -> refiner
    "onnx_decoder": "msc.onnx_decoders",  # tokenizer kind -> ONNX runner class(path, providers=...)
}


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class FrameGenerator(Protocol):
    """A generator whose frames can be taken one at a time as they become final."""

    config: Any

    def generate(self, request: GenerationRequest) -> torch.Tensor: ...

    def generate_frames(self, request: GenerationRequest) -> Iterator[torch.Tensor]: ...

    def check_latent_space(self, spec: LatentSpec) -> None: ...


@runtime_checkable
class StreamingTokenizer(Protocol):
    """A tokenizer with a causal decoder that decodes a clip chunk by chunk."""

    config: Any

    @property
    def latent_spec(self) -> LatentSpec: ...

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def decode_chunk(self, latents: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]: ...


@runtime_checkable
class Refiner(Protocol):
    """A cascade: coarse latents -> latents of the full video, in the tokenizer's space."""

    config: Any

    def refine(self, base_latents: torch.Tensor, steps: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor: ...


# --------------------------------------------------------------------------- registries


def registered(role: str) -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=GROUPS[role])}


def load_registered(role: str, kind: str) -> Any:
    """The class (or loader) registered for `kind` in `role`'s entry-point group."""
    entries = registered(role)
    if kind not in entries:
        known = ", ".join(sorted(entries)) or "none installed"
        raise ValueError(f"no {role} of kind {kind!r} is installed (entry points {GROUPS[role]}: {known})")
    return entries[kind].load()


@dataclass(frozen=True)
class Component:
    kind: str
    folder: str


# --------------------------------------------------------------------------- the pipeline


def _frame_axis(layout: str) -> int:
    return 2 if layout == "grid" else 1


class VideoPipeline:
    """Generator + tokenizer (+ refiner): `pipeline(request)`, `pipeline.stream(request)`."""

    def __init__(
        self,
        generator: FrameGenerator,
        tokenizer: StreamingTokenizer,
        normalization: LatentNormalization | None = None,
        refiner: Refiner | None = None,
        onnx_decoder: Any | None = None,
    ) -> None:
        spec = tokenizer.latent_spec
        generator.check_latent_space(spec)  # refuses a mismatched layout / channels / token grid
        if normalization is not None and normalization.layout != spec.layout:
            raise ValueError(f"latent normalization is for {normalization.layout} latents, the tokenizer makes {spec.layout}")
        if normalization is not None and normalization.channels != spec.channels:
            raise ValueError(
                f"latent normalization has {normalization.channels} channels, the tokenizer's latents {spec.channels}"
            )
        self.generator, self.tokenizer, self.refiner = generator, tokenizer, refiner
        self.normalization = normalization
        self.onnx_decoder = onnx_decoder
        if refiner is not None and spec.layout != "grid":
            raise ValueError("a cascade refiner works on grid latents (a 3D VAE), the tokenizer makes token latents")

    @property
    def latent_spec(self) -> LatentSpec:
        return self.tokenizer.latent_spec

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device  # type: ignore[attr-defined]

    # -- latents <-> video ---------------------------------------------------------------

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents if self.normalization is None else self.normalization.normalize(latents)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents if self.normalization is None else self.normalization.denormalize(latents)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video `[B, 3, T, H, W]` in [-1, 1] -> normalised latents in the generator's layout."""
        with torch.no_grad():
            return self.normalize(self.tokenizer.encode(video.to(self.device, torch.float32)))

    def latent_request(self, request: GenerationRequest) -> GenerationRequest:
        """`request` in video frames -> the generator's request in latent frames (the prefix
        video encoded and normalised)."""
        spec = self.latent_spec
        frames = spec.latent_frames(request.num_frames)  # raises with the nearest valid counts
        prefix = None
        if request.prefix is not None:
            video = request.prefix
            if video.ndim != 5 or video.shape[1] != 3:
                raise ValueError(f"request.prefix must be a video [B, 3, P, H, W] in [-1, 1], got {tuple(video.shape)}")
            if not spec.valid_num_frames(video.shape[2]):
                below, above = spec.nearest_valid_num_frames(video.shape[2])
                raise ValueError(
                    f"request.prefix has {video.shape[2]} frames, which this tokenizer cannot encode; "
                    f"use {below} or {above}"
                )
            prefix = self.encode(video)
        return request.replace(num_frames=frames, prefix=prefix) if prefix is not None else request.replace(
            num_frames=frames
        )

    def decode_chunk(self, latents: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        """Tokenizer latents (not normalised) of the next frames of a clip -> their video frames
        and the decoder's cache (`cache=None` starts a clip), in PyTorch or ONNX Runtime."""
        if self.onnx_decoder is not None:
            video, cache = self.onnx_decoder.decode_chunk(latents.float().cpu().numpy(), cache)
            return torch.from_numpy(np.asarray(video)), cache
        with torch.no_grad():
            return self.tokenizer.decode_chunk(latents.float(), cache)

    def decode(self, latents: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Generated (normalised) latents -> video `[B, 3, T, H, W]` in [-1, 1], refined first when
        the pipeline has a refiner (its noise drawn from `seed`), decoded one latent frame at
        a time through the causal chunk cache (the memory of a decode does not grow with its
        length; `stream` decodes the same way, so both give the same frames)."""
        latents = self.denormalize(latents)
        if self.refiner is not None:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            with torch.no_grad():
                latents = self.refiner.refine(latents, generator=generator)
        axis = _frame_axis(self.latent_spec.layout)
        cache, pieces = None, []
        for frame in latents.split(1, dim=axis):
            video, cache = self.decode_chunk(frame, cache)
            pieces.append(video)
        return torch.cat(pieces, dim=2).clamp(-1, 1)

    # -- generation ---------------------------------------------------------------------

    def __call__(self, request: GenerationRequest) -> torch.Tensor:
        """The video `[B, 3, T, H, W]` in [-1, 1] of `request` (frames counted in video frames)."""
        latents = self.generator.generate(self.latent_request(request))
        return self.decode(latents, seed=request.seed)

    def stream(
        self, request: GenerationRequest, on_latent_frame: Callable[[int], None] | None = None
    ) -> Iterator[torch.Tensor]:
        """The frames of `pipeline(request)`, each `(B, 3, H, W)` in [-1, 1], yielded as soon as
        it is final. `on_latent_frame(i)` is called when latent frame i arrives (instrumentation)."""
        if self.refiner is not None:
            raise ValueError(
                "stream() decodes latent frames as the generator finishes them; a cascade refiner needs whole "
                "windows of latents first: call pipeline(request) for a refined video"
            )
        axis = _frame_axis(self.latent_spec.layout)
        cache = None
        for index, frame in enumerate(self.generator.generate_frames(self.latent_request(request))):
            if on_latent_frame is not None:
                on_latent_frame(index)
            video, cache = self.decode_chunk(self.denormalize(frame.unsqueeze(axis)), cache)
            yield from video.clamp(-1, 1).unbind(2)

    # -- save / load --------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the pipeline folder (`pipeline.json` last: a folder without it is incomplete)."""
        from msc_core.checkpoint import save_pretrained

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        components: dict[str, Any] = {"_version": FORMAT_VERSION}
        parts = (("generator", self.generator), ("tokenizer", self.tokenizer), ("refiner", self.refiner))
        for role, module in parts:
            if module is None:
                components[role] = None
                continue
            save_pretrained(module, directory / role)  # type: ignore[arg-type]
            components[role] = {"kind": module.config.kind, "folder": role}
        if self.normalization is not None:
            self.normalization.save(directory / "tokenizer")
        atomic_write_text(directory / PIPELINE_FILE, json.dumps(components, indent=2))
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", decoder: Literal["torch", "onnx"] = "torch",
        providers: list[str] | None = None,
    ) -> "VideoPipeline":
        """Build a pipeline from its folder; each component through its kind's registry."""
        directory = Path(directory)
        layout = read_pipeline_file(directory)
        generator = _load_component(directory, "generator", layout["generator"], device)
        tokenizer = _load_component(directory, "tokenizer", layout["tokenizer"], device)
        refiner = None
        if layout.get("refiner") is not None:
            entry = layout["refiner"]
            loader = load_registered("refiner", entry["kind"])
            refiner = loader(directory / entry["folder"], vae_path=directory / layout["tokenizer"]["folder"],
                             device=device)
        normalization = LatentNormalization.read(directory / layout["tokenizer"]["folder"])
        onnx_decoder = None
        if decoder == "onnx":
            onnx_decoder = load_onnx_decoder(directory / layout["tokenizer"]["folder"], layout["tokenizer"]["kind"],
                                             providers)
        elif decoder != "torch":
            raise ValueError(f"decoder must be 'torch' or 'onnx', got {decoder!r}")
        return cls(generator, tokenizer, normalization, refiner, onnx_decoder)


def is_pipeline_dir(directory: str | Path) -> bool:
    return (Path(directory) / PIPELINE_FILE).is_file()


def read_pipeline_file(directory: Path) -> dict[str, Any]:
    path = directory / PIPELINE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a pipeline folder (VideoPipeline.save_pretrained)")
    try:
        layout = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable pipeline file ({type(err).__name__}: {err})") from None
    for role in ("generator", "tokenizer"):
        entry = layout.get(role) if isinstance(layout, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str) or not isinstance(entry.get("folder"), str):
            raise ValueError(f"{path} has no valid {role!r} entry (expected {{\"kind\": ..., \"folder\": ...}})")
    for role in ("generator", "tokenizer", "refiner"):
        entry = layout.get(role)
        if entry is not None and (Path(entry["folder"]).is_absolute() or ".." in Path(entry["folder"]).parts):
            raise ValueError(f"{path}: the {role} folder must lie inside the pipeline folder, got {entry['folder']!r}")
    return layout


def _load_component(directory: Path, role: str, entry: dict[str, str], device: str | torch.device) -> Any:
    folder = directory / entry["folder"]
    found = read_config_kind(folder / CONFIG_NAME)
    if found != entry["kind"]:
        raise ValueError(f"{folder / CONFIG_NAME} holds a {found!r} model, but {PIPELINE_FILE} names {entry['kind']!r}")
    cls = load_registered(role, entry["kind"])
    return from_pretrained(cls, folder, device=device)


def load_onnx_decoder(tokenizer_dir: Path, kind: str, providers: list[str] | None = None) -> Any:
    """The ONNX Runtime runner of `tokenizer_dir/decoder.onnx` (registered under msc.onnx_decoders)."""
    path = tokenizer_dir / ONNX_DECODER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: export the tokenizer's decoder first (msc export {kind} --model {tokenizer_dir} "
            f"--out {path})"
        )
    if kind not in registered("onnx_decoder"):
        raise ModuleNotFoundError(
            f"decoding {path} needs an ONNX Runtime runner for {kind!r} latents (entry points "
            f"{GROUPS['onnx_decoder']}): pip install 'msc-runtime[cpu]' or 'msc-runtime[gpu]'"
        )
    runner = load_registered("onnx_decoder", kind)
    return runner(path, providers=providers)


def copy_tokenizer(source: str | Path, directory: str | Path) -> Path:
    """Copy a tokenizer's config and weights (from any model folder) into `directory`."""
    from msc_core.checkpoint import resolve_pretrained

    files = resolve_pretrained(source)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(files.config, directory / CONFIG_NAME)
    shutil.copyfile(files.weights, directory / WEIGHTS_NAME)
    return directory
