"""msc-core: MSC attention, the MSC transformer, diffusion maths and shared interfaces."""

from msc_core.checkpoint import from_pretrained, save_pretrained
from msc_core.config import Config, ConfigError
from msc_core.interfaces import GenerationRequest, Generator, LatentSpec, SchedulerParams, Tokenizer

__all__ = [
    "Config",
    "ConfigError",
    "GenerationRequest",
    "Generator",
    "LatentSpec",
    "SchedulerParams",
    "Tokenizer",
    "from_pretrained",
    "save_pretrained",
]
