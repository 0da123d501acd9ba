"""Classifier-free guidance, the one combine every editor and baseline uses."""

from __future__ import annotations

import torch


def classifier_free_guidance(
    uncond: torch.Tensor, cond: torch.Tensor, scale: float, rescale: float = 0.0
) -> torch.Tensor:
    """``uncond + scale · (cond − uncond)``, optionally rescaled (Lin et al. 2023, eq. 15-16).

    Args:
        uncond, cond: ``(B, ...)`` predictions without and with the prompt (ε or v: the
            combine is linear, so either works).
        scale: guidance scale s (1 returns ``cond``'s direction exactly as written).
        rescale: φ in [0, 1]: match the guided prediction's per-item std to ``cond``'s and mix
            by φ (diffusers' ``guidance_rescale``), against over-saturation at high s.
    """
    guided = uncond + scale * (cond - uncond)
    if rescale == 0:
        return guided
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided
