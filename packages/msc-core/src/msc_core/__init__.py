"""msc-core: MSC attention, the MSC transformer, diffusion maths and shared interfaces.

The names below are imported on first use, so `msc --help` and `msc --version` (the
dispatcher in `msc_core.cli`) answer without importing torch.
"""

from __future__ import annotations

from msc_core.lazy_exports import distribution_version, lazy_exports

__version__ = distribution_version("msc-core")

_LAZY = {
    "Config": "msc_core.config",
    "ConfigError": "msc_core.config",
    "GenerationRequest": "msc_core.interfaces",
    "Generator": "msc_core.interfaces",
    "LatentSpec": "msc_core.interfaces",
    "SchedulerParams": "msc_core.interfaces",
    "Tokenizer": "msc_core.interfaces",
    "from_pretrained": "msc_core.checkpoint",
    "save_pretrained": "msc_core.checkpoint",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = [*sorted(_LAZY), "__version__"]
