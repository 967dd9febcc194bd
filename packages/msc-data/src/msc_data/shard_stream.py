"""Streaming samples out of webdataset shards, split by node and worker (DESIGN.md, "Data").

`ShardStreamDataset` is the shard-level half of every reader in msc-data: which shards a
(rank, DataLoader worker) stream reads (epoch mode: each shard exactly once per epoch
across all streams; resampled mode: shards drawn with replacement, infinite), a shuffle
buffer, per-sample decoding, an optional per-epoch quota and batching. Subclasses only
say how one sample decodes (`decode_sample`).

Damage is never silent and never fatal. Every sample that cannot be used is counted in
`dataset.skipped` (a `SkipCounter`, shared with DataLoader worker processes) and logged
on the `msc_data` logger:

- `corrupt`: the sample is incomplete or its bytes fail to decode or to match their
  checksum (`CorruptSampleError`);
- `missing`: samples a shard should hold (per its manifest) but that were never read,
  because the shard is truncated, has a broken tar header, or cannot be opened.

With a manifest the total is exact: `yielded + skipped.total == samples listed`.
Without one (plain shard URLs) shard damage is still reported (`damaged_shards`) but the
number of samples lost in it is unknown.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import multiprocessing.context
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls

from msc_core.runtime import rank_seed
from msc_data.clip_format import CorruptSampleError
from msc_data.distributed_split import current_worker, resolve_rank_world_size, split_count, split_for_stream
from msc_data.manifest import Manifest, load_manifest, manifest_path

logger = logging.getLogger("msc_data")

ShardSource = str | Path | Sequence[str | Path]


@dataclass(frozen=True)
class ShardRef:
    url: str
    num_samples: int | None = None  # from the manifest; None when read from bare URLs


# --------------------------------------------------------------------------- skip counter


class SkipCounter:
    """Counts of skipped samples, shared by the reader and its DataLoader worker processes.

    The counts live in shared memory (a `multiprocessing.RawArray`), one row per process
    (the main process and each DataLoader worker write only their own row, so no lock is
    needed and fork, spawn and forkserver workers all work); reads sum the rows. When the
    counter is pickled outside process creation (e.g. shipped to a Ray worker) the copy
    starts from a snapshot and counts on its own: read it on the process that iterates.
    """

    FIELDS = ("corrupt", "missing", "damaged_shards")
    ROWS = 257  # the main process + 256 DataLoader workers (more workers share rows)

    def __init__(self, values: Any = None) -> None:
        self._values = values if values is not None else multiprocessing.RawArray("q", self.ROWS * len(self.FIELDS))

    def _row(self) -> int:
        info = torch.utils.data.get_worker_info()
        return 0 if info is None else 1 + info.id % (self.ROWS - 1)

    def add(self, field: str, n: int = 1) -> None:
        self._values[self._row() * len(self.FIELDS) + self.FIELDS.index(field)] += n

    def __getitem__(self, field: str) -> int:
        i = self.FIELDS.index(field)
        return int(sum(self._values[i :: len(self.FIELDS)]))

    @property
    def total(self) -> int:
        """Samples skipped (corrupt + missing)."""
        return self["corrupt"] + self["missing"]

    def as_dict(self) -> dict[str, int]:
        return {name: self[name] for name in self.FIELDS} | {"total": self.total}

    def reset(self) -> None:
        for i in range(len(self._values)):
            self._values[i] = 0

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if multiprocessing.context.get_spawning_popen() is not None:
            return (SkipCounter, (self._values,))  # shared with the process being started
        return (_counter_from_snapshot, (self.as_dict(),))

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"


def _counter_from_snapshot(values: dict[str, int]) -> SkipCounter:
    counter = SkipCounter()
    for name in SkipCounter.FIELDS:
        counter.add(name, values.get(name, 0))
    return counter


# --------------------------------------------------------------------------- shard lists


def resolve_shards(source: ShardSource) -> list[ShardRef]:
    """Shards of a manifest (`manifest.json` or its directory), a brace pattern, or a list of URLs."""
    if isinstance(source, (str, Path)):
        text = str(source)
        as_path = Path(text)
        if text.endswith(".json") or as_path.is_dir():
            if as_path.is_dir() and not manifest_path(as_path).is_file():
                raise FileNotFoundError(
                    f"{as_path} has no manifest.json; pass its shards as a list or brace pattern "
                    f"(e.g. '{as_path}/clips-{{000000..000009}}.tar') to read them without one"
                )
            manifest = load_manifest(as_path)
            base = manifest_path(as_path).parent
            if not manifest.shards:
                raise ValueError(f"{manifest_path(as_path)} lists no shards")
            return [ShardRef(str(base / s.name), s.num_samples) for s in manifest.shards]
        urls = list(expand_urls(text))
    else:
        urls = [str(u) for u in source]
    if not urls:
        raise ValueError(f"no shards in {source!r}; give a manifest.json, its directory, a brace pattern or URLs")
    for url in urls:
        if _is_local(url) and not Path(url).is_file():
            raise FileNotFoundError(f"shard {url} does not exist")
    return [ShardRef(url) for url in urls]


def source_manifest(source: ShardSource) -> Manifest | None:
    """The manifest behind `source` when it names one (a .json file or a directory), else None."""
    if isinstance(source, (str, Path)) and (str(source).endswith(".json") or Path(source).is_dir()):
        return load_manifest(source)
    return None


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _open_shard(url: str) -> IO[bytes]:
    if _is_local(url):
        return open(url, "rb", buffering=1 << 20)
    return gopen(url, "rb")


def _split_member(name: str) -> tuple[str, str] | None:
    """`dir/key.ext.ext2` -> (`dir/key`, `ext.ext2`), as webdataset groups members."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        return None
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def iter_shard_samples(shard: ShardRef, counter: SkipCounter) -> Iterator[dict[str, Any]]:
    """Raw samples `{"__key__", "__url__", ext: bytes, ...}` of one tar shard.

    A damaged tar ends the shard early; the samples it lost are counted as `missing`
    when the shard's sample count is known. A sample cut by the damage is yielded
    incomplete and fails to decode downstream (counted as `corrupt`).
    """
    seen = 0
    current: dict[str, Any] | None = None
    damage: str | None = None
    try:
        stream = _open_shard(shard.url)
    except OSError as err:
        damage = f"cannot open ({type(err).__name__}: {err})"
    else:
        with stream:
            try:
                # ignore_zeros: skip blocks with broken headers and resynchronise on the next member.
                tar = tarfile.open(fileobj=stream, mode="r|", ignore_zeros=True)
                for member in tar:
                    if not member.isreg():
                        continue
                    parts = _split_member(member.name)
                    if parts is None:
                        continue
                    key, ext = parts
                    if current is None or current["__key__"] != key:
                        if current is not None:
                            yield current
                        current = {"__key__": key, "__url__": shard.url}
                        seen += 1
                    handle = tar.extractfile(member)
                    if handle is not None:
                        current[ext] = handle.read()
                    tar.members = []  # stream mode: do not keep every TarInfo in memory
            except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
                damage = f"{type(err).__name__}: {err}"
    if current is not None:
        yield current
    expected = shard.num_samples
    if expected is not None and seen < expected:
        counter.add("missing", expected - seen)
        counter.add("damaged_shards")
        logger.warning("shard %s: %d of %d samples missing (%s)", shard.url, expected - seen, expected,
                       damage or "tar ends early")
    elif damage is not None:
        counter.add("damaged_shards")
        logger.warning("shard %s is damaged after %d samples (%s); samples lost there are not counted "
                       "(read through a manifest.json for exact counts)", shard.url, seen, damage)
    if expected is not None and seen > expected:
        logger.warning("shard %s holds %d samples, its manifest says %d", shard.url, seen, expected)


def _buffer_shuffle(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Shuffle a stream with a buffer of `size` items (webdataset's shuffle, seeded)."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(len(buffer)))
        buffer[i], item = item, buffer[i]
        yield item
    order = rng.permutation(len(buffer))
    for i in order:
        yield buffer[i]


# --------------------------------------------------------------------------- dataset


class ShardStreamDataset(torch.utils.data.IterableDataset):
    """Samples of a shard set, split across nodes and DataLoader workers.

    Args:
        source: manifest path or directory, brace pattern (`out/clips-{000000..000009}.tar`)
            or list of shard URLs/paths.
        resampled: draw shards with replacement, forever (training); otherwise read each
            shard exactly once per epoch across all ranks and workers.
        samples_per_epoch: stop each epoch after this many samples on this rank (split over
            its workers); with `resampled=True` this makes every rank see equally many.
        shuffle_buffer: size of the sample shuffle buffer (0 keeps shard order).
        shuffle_shards: shuffle the shard order each epoch (same order on every stream).
        batch_size: yield collated batches of this size (use `DataLoader(batch_size=None)`).
        rank, world_size: this node; default from torch.distributed, else RANK/WORLD_SIZE.

    Call `set_epoch(e)` before each epoch (as with DistributedSampler) to reshuffle; a
    stream that is iterated again without it advances its own epoch counter.
    """

    def __init__(
        self,
        source: ShardSource,
        *,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 0,
        shuffle_shards: bool = True,
        batch_size: int | None = None,
        drop_last: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1 or None, got {samples_per_epoch}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.shards = resolve_shards(source)
        self.resampled, self.samples_per_epoch = resampled, samples_per_epoch
        self.shuffle_buffer, self.shuffle_shards = shuffle_buffer, shuffle_shards
        self.batch_size, self.drop_last, self.seed = batch_size, drop_last, seed
        self.rank, self.world_size = resolve_rank_world_size(rank, world_size)
        self.skipped = SkipCounter()
        self._epoch, self._iterations = 0, 0

    @property
    def num_samples(self) -> int | None:
        """Samples listed by the manifest (None for bare URLs)."""
        counts = [s.num_samples for s in self.shards]
        return None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]

    def set_epoch(self, epoch: int) -> None:
        self._epoch, self._iterations = epoch, 0

    # Subclasses: turn a raw sample into an item; raise CorruptSampleError if unusable.
    def decode_sample(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack tensors and numbers, keep strings as lists."""
        batch: dict[str, Any] = {}
        for name in items[0]:
            values = [item[name] for item in items]
            if isinstance(values[0], torch.Tensor):
                batch[name] = torch.stack(values)
            elif isinstance(values[0], float):
                batch[name] = torch.tensor(values, dtype=torch.float32)
            elif isinstance(values[0], int):
                batch[name] = torch.tensor(values, dtype=torch.int64)
            else:
                batch[name] = values
        return batch

    def _stream_shards(self, worker: int, num_workers: int, epoch: int) -> Iterator[ShardRef]:
        if self.resampled:
            rng = np.random.default_rng([rank_seed(self.seed, self.rank, worker), epoch, 1])
            while True:
                yield self.shards[int(rng.integers(len(self.shards)))]
        order = list(range(len(self.shards)))
        if self.shuffle_shards:
            order = [int(i) for i in np.random.default_rng([self.seed, epoch]).permutation(len(order))]
        for i in split_for_stream(order, self.rank, self.world_size, worker, num_workers):
            yield self.shards[i]

    def _raw_samples(self, shards: Iterable[ShardRef]) -> Iterator[dict[str, Any]]:
        empty_run = 0
        for shard in shards:
            got = 0
            for sample in iter_shard_samples(shard, self.skipped):
                got += 1
                yield sample
            empty_run = 0 if got else empty_run + 1
            if self.resampled and empty_run > 4 * len(self.shards) + 8:
                # Resampling forever over shards that never yield would hang the trainer.
                raise ValueError(f"no sample could be read from {empty_run} consecutive shards "
                                 f"(e.g. {shard.url}); all {len(self.shards)} shards look damaged or empty")

    def _decoded(self, samples: Iterable[dict[str, Any]], rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        for sample in samples:
            try:
                yield self.decode_sample(sample, rng)
            except CorruptSampleError as err:
                self.skipped.add("corrupt")
                logger.warning("skipping corrupt sample %s in %s: %s", sample.get("__key__"), sample.get("__url__"), err)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = current_worker()
        epoch = self._epoch + self._iterations
        self._iterations += 1
        rng = np.random.default_rng([rank_seed(self.seed, self.rank, worker), epoch])
        samples: Iterable[dict[str, Any]] = self._raw_samples(self._stream_shards(worker, num_workers, epoch))
        if self.shuffle_buffer > 1:
            samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
        items: Iterator[dict[str, Any]] = self._decoded(samples, rng)
        if self.samples_per_epoch is not None:
            items = itertools.islice(items, split_count(self.samples_per_epoch, num_workers, worker))
        if self.batch_size is None:
            yield from items
            return
        while batch := list(itertools.islice(items, self.batch_size)):
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield self.collate(batch)
