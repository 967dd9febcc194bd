"""Root test configuration shared by every package's tests.

- Tests use tiny tensors, where intra-op threads only add contention (and on a loaded
  2-core machine, a lot of it), so torch runs single-threaded here. Benchmarks in
  `bench/` are separate scripts and keep torch's defaults.
- `@pytest.mark.gpu` tests are skipped, with the reason, when CUDA is unavailable.
- torch is optional here: the msc-runtime tests run in an environment without it.
"""

import os

import pytest

try:
    import torch
except ModuleNotFoundError:  # an environment without torch (msc-runtime alone)
    torch = None

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # workers in this environment, never `uv run`
if torch is not None:
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch is not None and torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
