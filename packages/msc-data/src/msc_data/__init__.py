"""msc-data: video data pipelines for msc (DESIGN.md, "Data").

- `build_shards` / `msc data build`: videos or bundled sources -> webdataset clip shards.
- `VideoClipDataset`: clip shards -> `[3, T, H, W]` clips in `[-1, 1]`, split by node/worker.
- `MovingMNIST`: on-the-fly moving-MNIST clips from real bundled digits;
  `SampleVideoClips`: the bundled natural sample videos as in-memory clips.
- `encode_shards` / `msc data encode`, `LatentClipDataset`: the latent cache.
- `msc_data.metrics`: PSNR, SSIM, motion statistics, Fréchet distance.
"""

from __future__ import annotations

from msc_core.lazy_exports import distribution_version, lazy_exports

__version__ = distribution_version("msc-data")

# imported on first use: `msc --help` lists `msc data` without importing the pipelines
_LAZY = {
    "ClipBuildConfig": "msc_data.manifest",
    "ClipManifest": "msc_data.manifest",
    "LatentClipDataset": "msc_data.latent_cache",
    "LatentManifest": "msc_data.manifest",
    "MissingExtraError": "msc_data.package_data",
    "MovingMNIST": "msc_data.moving_mnist",
    "MovingMNISTConfig": "msc_data.moving_mnist",
    "SampleVideoClips": "msc_data.sample_videos",
    "ShardStreamDataset": "msc_data.shard_stream",
    "SkipCounter": "msc_data.shard_stream",
    "VideoClipDataset": "msc_data.clip_dataset",
    "build_shards": "msc_data.shard_writer",
    "encode_shards": "msc_data.latent_cache",
    "load_manifest": "msc_data.manifest",
    "load_mnist_digits": "msc_data.moving_mnist",
    "load_tokenizer": "msc_data.tokenizer_registry",
    "register_tokenizer": "msc_data.tokenizer_registry",
    "render_moving_mnist": "msc_data.moving_mnist",
    "sample_video_paths": "msc_data.sample_videos",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = [
    "__version__",
    "ClipBuildConfig",
    "ClipManifest",
    "LatentClipDataset",
    "LatentManifest",
    "MissingExtraError",
    "MovingMNIST",
    "MovingMNISTConfig",
    "SampleVideoClips",
    "ShardStreamDataset",
    "SkipCounter",
    "VideoClipDataset",
    "build_shards",
    "encode_shards",
    "load_manifest",
    "load_mnist_digits",
    "load_tokenizer",
    "register_tokenizer",
    "render_moving_mnist",
    "sample_video_paths",
]
