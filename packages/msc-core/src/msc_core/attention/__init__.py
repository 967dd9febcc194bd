"""MSC attention (paper §3): multi-scale causal attention for autoregressive video diffusion."""

from msc_core.attention.cache import MSCKVCache
from msc_core.attention.config import MSCAttentionConfig
from msc_core.attention.msc_attention import MSCAttention, NoiseGate, resolve_backend

__all__ = ["MSCAttention", "MSCAttentionConfig", "MSCKVCache", "NoiseGate", "resolve_backend"]
