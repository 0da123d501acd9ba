"""The estimated edit mask m (1 = may change) on the latent grid (docs/multimodal.md, step 3).

A user mask is area-resized and thresholded when the edit is prepared, never dilated. Without one, the estimate is
``dilate_3x3(M_text ∪ M_diff ∪ M_layout)``: DiffEdit's noise-difference mask between the
prompts, where the guidance image departs from the input, and the boxes of pose/scribble maps.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..models.interface import Model
from .guidance import start_index
from .options import MaskEstimateOptions

log = logging.getLogger(__name__)


def _rescaled(diff: torch.Tensor, ratio: float, threshold: float) -> torch.Tensor:
    """DiffEdit's map to mask: clamp at ``ratio``× the mean, rescale to [0, 1], threshold."""
    clamp = diff.mean() * ratio
    if clamp <= 0:
        return torch.zeros_like(diff, dtype=torch.bool)
    return (diff.clamp(0, clamp) / clamp) > threshold


@torch.no_grad()
def diffedit_mask(
    model: Model,
    z0: torch.Tensor,
    target_prompt: str,
    source_prompt: str,
    num_steps: int,
    options: MaskEstimateOptions,
    generator: torch.Generator,
) -> torch.Tensor:
    """M_text: mean over draws and channels of |ε̂_target − ε̂_source| at the encode strength.

    Follows diffusers' ``StableDiffusionDiffEditPipeline.generate_mask`` (noise to
    ``encode_strength`` on the edit's ``num_steps`` schedule), without its unconditional
    branch: with CFG w both guided predictions share it, so their difference is
    w·(ε_target − ε_source), and the rescaling below removes w. No ControlNet.
    """
    sched = model.scheduler(num_steps, z0.shape[-2:])
    i0 = min(start_index(num_steps, options.encode_strength), num_steps - 1)
    t = sched.timesteps[i0]
    maps = options.num_maps
    noise = torch.randn((maps, *z0.shape[1:]), generator=generator, dtype=torch.float32).to(z0.device)
    zt = sched.add_noise(z0.expand(maps, -1, -1, -1), noise, t.reshape(1).expand(maps))
    cond = model.encode_prompt([source_prompt, target_prompt]).repeat_interleave(maps)
    out = model.predict(zt.repeat(2, 1, 1, 1), t, cond)
    src, tgt = sched.to_epsilon(out, zt.repeat(2, 1, 1, 1), t).chunk(2)
    diff = (tgt - src).abs().mean(dim=(0, 1))
    return _rescaled(diff, options.clamp_ratio, options.threshold)


def difference_mask(
    z0_guidance: torch.Tensor, z0: torch.Tensor, options: MaskEstimateOptions
) -> torch.Tensor:
    """M_diff: where the guidance image departs from the input (catches pose/shape changes)."""
    d = (z0_guidance - z0).abs().mean(dim=1, keepdim=True)
    d = F.avg_pool2d(d, 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    return _rescaled(d, options.clamp_ratio, options.threshold)


def estimate_mask(parts: dict[str, torch.Tensor], dilate: bool) -> torch.Tensor:
    """Union of the parts, one 3×3 dilation; warn when empty (then m = 1) or nearly full."""
    first = next(iter(parts.values()))
    union = torch.zeros_like(first, dtype=torch.bool)
    for p in parts.values():
        union |= p.to(union.device)
    if dilate:
        union = F.max_pool2d(union[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
    if not union.any():
        log.warning("the estimated edit mask is empty; editing the whole image (m = 1)")
        return torch.ones_like(union)
    if union.float().mean() > 0.9:
        log.warning("the estimated edit mask covers %.0f%% of the image", 100 * float(union.float().mean()))
    return union


def to_token_grid(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """A latent-cell mask grown to whole ``patch``×``patch`` tokens (flow transformers): a token
    is in when any of its cells is."""
    if patch == 1:
        return mask
    tokens = F.max_pool2d(mask[None, None].float(), patch)[0, 0] > 0
    return tokens.repeat_interleave(patch, 0).repeat_interleave(patch, 1)


def mask_to_image(mask: torch.Tensor, image_hw: tuple[int, int]):
    """Latent-grid bool mask -> PIL "L" at image resolution (nearest), for inspection."""
    from PIL import Image

    up = F.interpolate(mask[None, None].float().cpu(), size=image_hw, mode="nearest")[0, 0]
    return Image.fromarray((up.numpy() * 255).astype(np.uint8), "L")
