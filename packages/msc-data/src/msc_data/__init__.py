"""msc-data: video data pipelines for msc (DESIGN.md, "Data").

- `build_shards` / `msc-data build`: videos or bundled sources -> webdataset clip shards.
- `VideoClipDataset`: clip shards -> `[3, T, H, W]` clips in `[-1, 1]`, split by node/worker.
- `MovingMNIST`: on-the-fly moving-MNIST clips from real bundled digits;
  `SampleVideoClips`: the bundled natural sample videos as in-memory clips.
- `encode_shards` / `msc-data encode`, `LatentClipDataset`: the latent cache.
- `msc_data.metrics`: PSNR, SSIM, motion statistics, Fréchet distance.
"""

from msc_data.clip_dataset import VideoClipDataset
from msc_data.latent_cache import LatentClipDataset, encode_shards
from msc_data.manifest import ClipBuildConfig, ClipManifest, LatentManifest, load_manifest
from msc_data.moving_mnist import MovingMNIST, MovingMNISTConfig, load_mnist_digits, render_moving_mnist
from msc_data.package_data import MissingExtraError
from msc_data.sample_videos import SampleVideoClips, sample_video_paths
from msc_data.shard_stream import ShardStreamDataset, SkipCounter
from msc_data.shard_writer import build_shards
from msc_data.tokenizer_registry import load_tokenizer, register_tokenizer

__all__ = [
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
