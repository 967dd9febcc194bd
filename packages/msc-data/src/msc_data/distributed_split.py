"""Which part of a dataset one (node rank, DataLoader worker) reads.

Every reader stream is identified by its global worker index
`g = rank * num_workers + worker` out of `G = world_size * num_workers`; in epoch mode
stream `g` takes items `g, g + G, g + 2G, ...` of a list every stream orders the same
way, so each item is read exactly once per epoch across all nodes and workers.

The rank is taken, in this order, from explicit `rank`/`world_size` arguments (tests
simulate several nodes this way), from an initialised `torch.distributed` process group
(DDP, Ray Train), or from the `RANK`/`WORLD_SIZE` environment variables (torchrun and
Ray Train set them, and DataLoader worker processes inherit them); else it is 0 of 1.
"""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

import torch
import torch.distributed
import torch.utils.data

T = TypeVar("T")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_rank_world_size(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """`(rank, world_size)` from the arguments, torch.distributed, or RANK/WORLD_SIZE."""
    if (rank is None) != (world_size is None):
        raise ValueError(f"give both rank and world_size or neither, got rank={rank}, world_size={world_size}")
    if rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            env_rank, env_world = _env_int("RANK"), _env_int("WORLD_SIZE")
            rank, world_size = (env_rank, env_world) if env_rank is not None and env_world is not None else (0, 1)
    if world_size is None or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def current_worker() -> tuple[int, int]:
    """`(worker id, number of workers)` of the DataLoader worker running this code, else (0, 1)."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def global_stream(rank: int, world_size: int, worker: int, num_workers: int) -> tuple[int, int]:
    """`(g, G)`: this stream's global index and the number of streams."""
    return rank * num_workers + worker, world_size * num_workers


def split_for_stream(items: Sequence[T], rank: int, world_size: int, worker: int, num_workers: int) -> list[T]:
    """The items stream (rank, worker) reads in epoch mode: every G-th, starting at g."""
    g, total = global_stream(rank, world_size, worker, num_workers)
    return list(items[g::total])


def split_count(count: int, parts: int, index: int) -> int:
    """Size of part `index` when `count` items are dealt round-robin into `parts` parts."""
    return count // parts + (1 if index < count % parts else 0)
