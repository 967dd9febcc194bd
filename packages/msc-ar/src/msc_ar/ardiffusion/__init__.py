"""AR-Diffusion (Sun et al., 2025): asynchronous video diffusion with non-decreasing
per-frame timesteps. Training timestep samplers (§3.3, FoPP) live in `timesteps`, the
AD inference scheduler (§3.4) in `ad_schedule`."""

from msc_ar.ardiffusion.ad_schedule import (
    NOT_STARTED,
    ad_schedule,
    ad_step_transitions,
    ad_timesteps,
    check_sliding_window,
    frames_in_flight,
)
from msc_ar.ardiffusion.timesteps import (
    TIMESTEP_SAMPLERS,
    TimestepSamplerKind,
    fopp_composition_probability,
    fopp_log_counts,
    sample_fopp_timesteps,
    sample_timesteps,
)

__all__ = [
    "NOT_STARTED",
    "TIMESTEP_SAMPLERS",
    "TimestepSamplerKind",
    "ad_schedule",
    "ad_step_transitions",
    "ad_timesteps",
    "check_sliding_window",
    "fopp_composition_probability",
    "fopp_log_counts",
    "frames_in_flight",
    "sample_fopp_timesteps",
    "sample_timesteps",
]

# The model (§3.2-§3.3) and its AD-scheduler sampler (§3.4).
from msc_ar.ardiffusion.model import ARDiffusion, ARDiffusionConfig, ARDiffusionDataConfig  # noqa: E402
from msc_ar.ardiffusion.sampling import ADSamplingPlan, plan_ad_sampling  # noqa: E402

__all__ += ["ADSamplingPlan", "ARDiffusion", "ARDiffusionConfig", "ARDiffusionDataConfig", "plan_ad_sampling"]
