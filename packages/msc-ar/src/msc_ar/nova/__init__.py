"""NOVA (Deng et al., "Autoregressive Video Generation without Vector Quantization").

Temporal frame-by-frame autoregression (block-causal transformer with a KV cache),
the Scaling-and-Shift layer, spatial set-by-set masked autoregression (MAR-style
encoder/decoder) and a per-token diffusion head, in one `NOVA` model built from a
`NovaConfig` (`kind: nova`).
"""

from msc_ar.nova.config import NOVA_PRESETS, NovaConfig
from msc_ar.nova.diffusion_head import DiffusionHead
from msc_ar.nova.masking import (
    guidance_at,
    mask_from_order,
    random_orders,
    reveal_schedule,
    sample_mask_ratio,
    truncated_normal_mean,
)
from msc_ar.nova.model import NOVA, TemporalContext
from msc_ar.nova.spatial import SpatialMaskedTransformer
from msc_ar.nova.temporal import ScaleShiftLayer, TemporalKVCache, TemporalTransformer, block_causal_mask
from msc_ar.nova.text_encoder import ByteTextEncoder, HFTextEncoder, TextEncoder

__all__ = [
    "NOVA",
    "NOVA_PRESETS",
    "ByteTextEncoder",
    "DiffusionHead",
    "HFTextEncoder",
    "NovaConfig",
    "ScaleShiftLayer",
    "SpatialMaskedTransformer",
    "TemporalContext",
    "TemporalKVCache",
    "TemporalTransformer",
    "TextEncoder",
    "block_causal_mask",
    "guidance_at",
    "mask_from_order",
    "random_orders",
    "reveal_schedule",
    "sample_mask_ratio",
    "truncated_normal_mean",
]
