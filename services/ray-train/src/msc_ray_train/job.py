"""`TrainJob`: one YAML file describes one training run (DESIGN.md, "Training service").

    model:    any registered model kind (model_kinds.MODEL_KINDS), or `preset:` + overrides
    data:     bundled moving MNIST, or webdataset clip shards (manifest, directory, URLs)
    optim:    AdamW, linear warm-up, cosine decay, weight decay, gradient clipping
    ema, precision, steps, batch_size (per worker), checkpoint/log/sample cadence,
    scaling (Ray workers), run (name + storage_path: re-running a name resumes it),
    max_failures (Ray FailureConfig), max_nonfinite_steps, seed, tensorboard

`load_job(path)` reads and validates the file: malformed YAML reports the line and
column, a bad field is named with its allowed values, a missing data file is named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, field_validator, model_validator
from webdataset.shardlists import expand_urls

from msc_core.config import Config, ConfigError
from msc_data.manifest import MANIFEST_NAME
from msc_data.moving_mnist import MovingMNISTConfig

from msc_ray_train.model_kinds import ModelConfig, expand_model_section, model_kind

# --------------------------------------------------------------------------- data sources


class MovingMNISTSource(MovingMNISTConfig):
    """Bundled moving MNIST (msc_data.MovingMNIST), rendered on the fly on each worker.

    The digits move on a `size x size` canvas (at least 28, the digit size);
    `output_size` (a divisor of `size`) area-downsamples it, so small models see digits
    that really travel across the frame instead of jiggling in a canvas barely larger
    than a digit.
    """

    source: Literal["moving-mnist"]
    channels: Literal[1, 3] = 3
    output_size: int | None = Field(default=None, ge=1, description="downsample the canvas to this side")

    @model_validator(mode="after")
    def _check_output_size(self) -> "MovingMNISTSource":
        if self.output_size is not None and self.size % self.output_size:
            raise ValueError(
                f"output_size={self.output_size} must divide the canvas size={self.size} "
                f"(e.g. {', '.join(str(d) for d in range(1, self.size + 1) if self.size % d == 0 and d >= 8)})"
            )
        return self

    @property
    def frame_size(self) -> int:
        return self.output_size or self.size

    def clip_config(self) -> MovingMNISTConfig:
        return MovingMNISTConfig(**self.model_dump(include=set(MovingMNISTConfig.model_fields)))


class ShardSource(Config):
    """Webdataset clip shards (msc_data.VideoClipDataset), streamed with resampling.

    `path`: a `manifest.json`, its directory, a brace pattern
    (`/data/clips-{000000..000099}.tar`) or a list of shard paths / URLs
    (`pipe:aws s3 cp s3://bucket/clips-000000.tar -`).
    """

    source: Literal["shards"]
    path: str | list[str]
    frames: int = Field(ge=1)
    size: int = Field(ge=1)
    channels: Literal[1, 3] = 3
    shuffle_buffer: int = Field(default=256, ge=0)
    crop_scale: tuple[float, float] = (1.0, 1.0)
    hflip: bool = False
    loader_workers: int = Field(default=0, ge=0, description="DataLoader processes per training worker")

    @field_validator("path")
    @classmethod
    def _absolute_local_paths(cls, v: str | list[str]) -> str | list[str]:
        # local shard paths resolve where the job was loaded; URLs and `pipe:` commands stay
        # as written (a `pipe:` command runs in each worker's own working directory)
        if isinstance(v, str):
            return absolute_path(v) if _is_local(v) else v
        return [absolute_path(u) if _is_local(u) else u for u in v]

    @property
    def frame_size(self) -> int:
        return self.size


class LatentCacheSource(Config):
    """A latent cache written by `msc data encode` (msc_data.LatentClipDataset), streamed with
    resampling: the fast path for big data, since no worker encodes pixels. The model must
    name the tokenizer that wrote it (`model.tokenizer_path`): its decoder turns samples and
    the exported pipeline into video. `path`: the cache directory or its manifest.json."""

    source: Literal["latents"]
    path: str
    shuffle_buffer: int = Field(default=256, ge=0)
    loader_workers: int = Field(default=0, ge=0, description="DataLoader processes per training worker")

    @field_validator("path")
    @classmethod
    def _absolute_local_path(cls, v: str) -> str:
        if not _is_local(v):
            raise ValueError(f"a latent cache is a local or shared-filesystem directory, got {v!r}")
        return absolute_path(v)

    def manifest(self) -> Any:
        """The cache's LatentManifest (refused when the folder holds clips or is incomplete)."""
        from msc_data.manifest import LatentManifest, load_manifest

        manifest = load_manifest(self.path)
        if not isinstance(manifest, LatentManifest):
            raise ValueError(f"data.path={self.path!r} holds a {manifest.kind} shard set; data.source: latents reads "
                             "the output of msc data encode")
        if not manifest.complete:
            raise ValueError(f"data.path={self.path!r} is an incomplete latent cache; re-run msc data encode to finish it")
        return manifest


DataSource = Annotated[Union[MovingMNISTSource, ShardSource, LatentCacheSource], Field(discriminator="source")]


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


# Set by Ray in the driver of a job sent with `ray job submit`: its working directory is
# then a temporary copy of --working-dir on the head node, gone when the job ends.
RAY_JOB_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_submitted_ray_job() -> bool:
    """True in the driver of a `ray job submit` job (and in the processes it starts)."""
    return RAY_JOB_ENV_VAR in os.environ


def absolute_path(path: str) -> str:
    """`path` with `~` expanded, made absolute against this process's working directory.

    Jobs are resolved here, on the driver, when they are loaded: Ray Train runs each
    worker in a working directory of its own, so a relative path there would point
    somewhere else (tested from another working directory)."""
    return os.path.abspath(os.path.expanduser(path))


def missing_data_paths(data: MovingMNISTSource | ShardSource | LatentCacheSource) -> list[str]:
    """Local shard paths the data section names that do not exist (remote URLs are not checked)."""
    if isinstance(data, LatentCacheSource):
        manifest = Path(data.path) if data.path.endswith(".json") else Path(data.path) / MANIFEST_NAME
        return [] if manifest.is_file() else [str(manifest)]
    if not isinstance(data, ShardSource):
        return []
    if isinstance(data.path, str):
        path = Path(data.path).expanduser()
        if not _is_local(data.path):
            return []
        if data.path.endswith(".json") or path.is_dir():
            manifest = path if data.path.endswith(".json") else path / MANIFEST_NAME
            return [] if manifest.is_file() else [str(manifest)]
        urls = list(expand_urls(str(path)))
    else:
        urls = [str(Path(u).expanduser()) if _is_local(u) else u for u in data.path]
    return [u for u in urls if _is_local(u) and not Path(u).is_file()]


# --------------------------------------------------------------------------- sections


class OptimConfig(Config):
    """AdamW with linear warm-up then cosine (or constant) learning rate, and clipping."""

    lr: float = Field(default=3e-4, gt=0.0, le=1.0, description="peak learning rate, in (0, 1]")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    warmup_steps: int = Field(default=0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0, description="cosine floor, fraction of lr")
    grad_clip: float | None = Field(default=1.0, gt=0.0, description="max global grad norm; null disables")

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {v}")
        return v


class EMAConfig(Config):
    """Exponential moving average of the weights; the exported model uses it."""

    decay: float = Field(default=0.999, ge=0.0, lt=1.0)
    warmup: bool = Field(default=True, description="decay_n = min(decay, (1 + n) / (10 + n))")


class ScalingSection(Config):
    """Ray workers (ScalingConfig): one DDP process each."""

    workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = Field(
        default=None, description='e.g. {"CPU": 4, "GPU": 1}; default 1 CPU (+ 1 GPU with use_gpu)'
    )

    @field_validator("resources_per_worker")
    @classmethod
    def _check_resources(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for name, amount in (v or {}).items():
            if not (amount >= 0):  # negative, or NaN
                raise ValueError(f"{name}: {amount} is not a resource amount; use a number >= 0")
        return v

    def resources(self) -> dict[str, float]:
        """What one worker asks Ray for (Ray Train's defaults filled in)."""
        resources = dict(self.resources_per_worker or {})
        resources.setdefault("CPU", 1.0)
        if self.use_gpu:
            resources.setdefault("GPU", 1.0)
        return resources


class RunSection(Config):
    """Where the run lives: `<storage_path>/<name>/`. Re-running a name resumes it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)
    storage_path: str = Field(default="~/msc-runs", description="local or shared (NFS) directory")

    @field_validator("storage_path")
    @classmethod
    def _absolute_path(cls, v: str) -> str:
        if "://" in v:
            raise ValueError(
                f"storage_path must be a local or shared-filesystem directory (NFS on a cluster), got {v!r}"
            )
        expanded = os.path.expanduser(v)
        if os.path.exists(expanded) and not os.path.isdir(expanded):
            raise ValueError(f"storage_path {v!r} is a file; it must be a directory (created when missing)")
        if not os.path.isabs(expanded) and in_submitted_ray_job():
            raise ValueError(
                f"storage_path {v!r} is relative, but this job runs under `ray job submit`, whose working "
                "directory is a temporary copy that is deleted with the job: a cluster run needs an absolute "
                "path on storage every node shares (e.g. run.storage_path: /mnt/shared/msc-runs, or "
                "msc train ... --storage-path /mnt/shared/msc-runs)"
            )
        return absolute_path(v)

    @property
    def storage_dir(self) -> Path:
        return Path(self.storage_path)  # made absolute when the job was loaded

    @property
    def run_dir(self) -> Path:
        return self.storage_dir / self.name


# --------------------------------------------------------------------------- the job


class TrainJob(Config):
    """One training run; see the module docstring and services/ray-train/README.md."""

    model: ModelConfig
    data: DataSource
    optim: OptimConfig = OptimConfig()
    precision: Literal["fp32", "bf16"] = "fp32"
    ema: EMAConfig = EMAConfig()
    steps: int = Field(ge=1, description="optimizer steps in total (a resumed run continues to it)")
    batch_size: int = Field(ge=1, description="clips per worker per step")
    checkpoint_every: int = Field(default=100, ge=1)
    keep_checkpoints: int = Field(default=3, ge=1)
    sample_every: int = Field(default=0, ge=0, description="write a sample GIF every N steps; 0: never")
    sample_steps: int = Field(default=20, ge=1, description="denoising steps of those samples")
    log_every: int = Field(default=10, ge=1)
    scaling: ScalingSection = ScalingSection()
    run: RunSection
    max_failures: int = Field(default=0, ge=-1, description="worker-group restarts; -1: unlimited")
    max_nonfinite_steps: int = Field(default=5, ge=1, description="stop after this many non-finite losses in a row")
    seed: int = Field(default=0, ge=0)
    tensorboard: bool = False

    @field_validator("model", mode="before")
    @classmethod
    def _expand_model(cls, v: Any) -> Any:
        return expand_model_section(v)

    @model_validator(mode="after")
    def _check_consistency(self) -> "TrainJob":
        kind = model_kind(self.model.kind)
        if isinstance(self.data, LatentCacheSource):
            self._check_latent_cache()
        else:
            self._check_clips()
        if self.precision == "bf16" and not self.scaling.use_gpu:
            raise ValueError("precision='bf16' (autocast) is for GPUs: set scaling.use_gpu=true or precision='fp32'")
        if self.optim.warmup_steps > self.steps:
            raise ValueError(f"optim.warmup_steps={self.optim.warmup_steps} exceeds steps={self.steps}")
        max_sample_steps = kind.max_sample_steps(self.model)
        if self.sample_every and max_sample_steps is not None and self.sample_steps > max_sample_steps:
            raise ValueError(
                f"sample_steps={self.sample_steps} but a {self.model.kind} sample takes at most {max_sample_steps} "
                f"steps (NOVA: one set-by-set step reveals at least one of a frame's {max_sample_steps} tokens); "
                f"use sample_steps <= {max_sample_steps}"
            )
        return self

    def _check_clips(self) -> None:
        """The data's clips fit the model: frames, channels, size, classes."""
        kind = model_kind(self.model.kind)
        channels, frames, height, width = kind.clip_shape(self.model)
        data = self.data
        num_classes = kind.num_classes(self.model)
        if num_classes is not None:
            if not (isinstance(data, MovingMNISTSource) and data.num_digits == 1):
                raise ValueError(
                    "a class-conditional model (model.num_classes) needs a class per clip: use the moving-mnist "
                    "source with num_digits: 1 (its digit is the class)"
                )
            if num_classes < 10:
                raise ValueError(f"model.num_classes={num_classes} but moving-mnist digits have 10 classes")
        size = data.frame_size
        size_field = "output_size" if isinstance(data, MovingMNISTSource) and data.output_size else "size"
        # None in clip_shape: the model takes any value its kind's check_clip accepts
        for name, have, want in (("frames", data.frames, frames), ("channels", data.channels, channels)):
            if want is not None and have != want:
                raise ValueError(f"data.{name}={have} but the model trains on {want} {name} (model.data)")
        if height is not None and (size, size) != (height, width):
            raise ValueError(f"data.{size_field}={size} gives {size}x{size} frames but the model takes {height}x{width}")
        if kind.check_clip is not None:
            values = {"channels": ("channels", data.channels), "frames": ("frames", data.frames),
                      "size": (size_field, size)}
            for dimension, reason in kind.check_clip(self.model, (data.channels, data.frames, size, size)):
                field, value = values[dimension]
                raise ValueError(f"data.{field}={value}: {reason}")

    def _check_latent_cache(self) -> None:
        from msc_ray_train.latent_kinds import is_latent_model, tokenizer_config

        if not is_latent_model(self.model):
            raise ValueError(
                "data.source: latents trains a latent model: set model.tokenizer_path to the tokenizer that wrote "
                "the cache (its decoder turns samples and the exported pipeline into video)"
            )
        if model_kind(self.model.kind).num_classes(self.model) is not None:
            raise ValueError("a latent cache holds no class labels; train an unconditional or text-conditional model")
        manifest = self.data.manifest()  # type: ignore[union-attr]
        tokenizer = tokenizer_config(self.model)
        if manifest.tokenizer_config != tokenizer.model_dump(mode="json"):
            raise ValueError(
                f"data.path={self.data.path!r} was encoded with another tokenizer ({manifest.tokenizer_kind}) than "
                f"model.tokenizer_path={self.model.tokenizer_path!r}: their configs differ; encode the clips with "
                "that tokenizer (msc data encode) or point tokenizer_path at the one that wrote the cache"
            )
        self.model.check_latent_space(manifest.latent_spec)

    def clip_shape(self) -> tuple[int, int, int, int]:
        """(channels, frames, height, width) of the pixel clips of the job: the data's, or,
        for a latent model, the tokenizer's input clips (also when the data is a latent cache)."""
        kind = model_kind(self.model.kind)
        if isinstance(self.data, LatentCacheSource):
            return kind.clip_shape(self.model)
        return self.data.channels, self.data.frames, self.data.frame_size, self.data.frame_size

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    @property
    def class_conditional(self) -> bool:
        return model_kind(self.model.kind).num_classes(self.model) is not None


class StrictYAMLLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (plain YAML keeps the
    last value silently: `steps: 100` then `steps: 10` would train 10 steps)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _yaml_error(path: Path, err: yaml.YAMLError) -> ConfigError:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    return ConfigError(f"{where}: malformed YAML: {problem}")


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a mapping")
        node = child
    node[leaf] = value


def job_from_dict(data: dict[str, Any], where: str = "TrainJob", overrides: dict[str, Any] | None = None) -> TrainJob:
    """Validate a job dict; `overrides` set dotted fields (`{"scaling.workers": 4}`) first."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for dotted, value in (overrides or {}).items():
        _set_path(data, dotted, value)
    try:
        return TrainJob.from_dict(data)
    except ConfigError as err:
        raise ConfigError(str(err).replace("invalid TrainJob:", f"invalid {where}:", 1)) from None


def load_job(path: str | Path, overrides: dict[str, Any] | None = None, check_data: bool = True) -> TrainJob:
    """Read and validate a job YAML file.

    Raises FileNotFoundError (no such file, or a local shard path that is missing) or
    ConfigError (malformed YAML with line:column, or the offending fields).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"job file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictYAMLLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        raise _yaml_error(path, err) from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: a job file must be UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a job file must be a YAML mapping (model:, data:, ...), got {type(data).__name__}")
    job = job_from_dict(data, where=f"job file {path}", overrides=overrides)
    if check_data:
        missing = missing_data_paths(job.data)
        if missing:
            shown = ", ".join(missing[:3]) + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
            raise FileNotFoundError(f"{path}: data.path names files that do not exist: {shown}")
    return job
