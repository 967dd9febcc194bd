"""AR-Diffusion (Sun et al., 2025): asynchronous video diffusion with non-decreasing
per-frame timesteps. Training samplers (§3.3) live in `timesteps`, the AD inference
scheduler (§3.4) in `ad_schedule`."""
