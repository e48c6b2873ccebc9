"""Small pure schedule functions the trainers share: the learning-rate schedule (linear warm-up, then cosine
decay, per optimiser step) and the Min-SNR-gamma loss weights of the diffusion objectives."""

from __future__ import annotations

import math


def warmup_cosine(warmup_steps: int, total_steps: int):
    """lr multiplier: linear 0 -> 1 over warm-up, then cosine 1 -> 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def min_snr_weights(alphas_cumprod, t, gamma: float, prediction_type: str):
    """Min-SNR-gamma loss weights: min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v-prediction.

    SNR(t) = a_t / (1 - a_t) with a_t the cumulative product of alphas.
    """
    a = alphas_cumprod.to(t.device)[t].float()
    snr = a / (1 - a)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr
