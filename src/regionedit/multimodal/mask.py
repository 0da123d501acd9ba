"""The edit mask m (1 = may change) on the latent grid (spec §1.4).

A user mask is area-resized and thresholded, never dilated. Without one, the estimate is
``dilate_3x3(M_text ∪ M_diff ∪ M_layout)``: DiffEdit's noise-difference mask between the
prompts, where the guidance image departs from the input, and the boxes of pose/scribble maps.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidMaskError
from ..inversion import make_scheduler, to_epsilon
from ..models.loading import Model
from ..regions import mask_to_array
from .guidance import start_index
from .options import MultimodalOptions

log = logging.getLogger(__name__)


def user_mask(mask, image_hw: tuple[int, int], latent_hw: tuple[int, int], threshold: float) -> torch.Tensor:
    """A user mask (path, PIL, array; white = edit) -> bool ``(h, w)``; an all-zero mask is kept."""
    arr = mask_to_array(mask, what="mask")
    if arr.shape != tuple(image_hw):
        raise InvalidMaskError(
            f"mask is {arr.shape[1]}x{arr.shape[0]} but the image is {image_hw[1]}x{image_hw[0]}; "
            "masks must have the image's size"
        )
    small = F.interpolate(torch.from_numpy(arr)[None, None], size=latent_hw, mode="area")[0, 0]
    return small >= threshold


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
    options: MultimodalOptions,
    generator: torch.Generator,
    negative_prompt: str = "",
) -> torch.Tensor:
    """M_text: mean over draws and channels of |ε̂_target − ε̂_source| at the encode strength.

    Follows diffusers' ``StableDiffusionDiffEditPipeline.generate_mask`` (noise to
    ``mask_encode_strength``, CFG ``guidance_scale``); no ControlNet (spec §3).
    """
    n = options.num_inference_steps
    sched = make_scheduler(model, n)
    i0 = min(start_index(n, options.mask_encode_strength), n - 1)
    t = sched.timesteps[i0]
    maps = options.mask_num_maps
    noise = torch.randn((maps, *z0.shape[1:]), generator=generator, dtype=torch.float32).to(z0.device)
    zt = sched.add_noise(z0.expand(maps, -1, -1, -1), noise, t.reshape(1).expand(maps))
    emb = model.encode_prompts([negative_prompt, source_prompt, target_prompt])
    emb = emb.repeat_interleave(maps, dim=0)
    out = model.unet_eps(zt.repeat(3, 1, 1, 1), t, emb)
    eps = to_epsilon(out, zt.repeat(3, 1, 1, 1), sched.alphas_cumprod[int(t)], sched.config.prediction_type)
    uncond, src, tgt = eps.chunk(3)
    w = options.guidance_scale
    diff = ((uncond + w * (tgt - uncond)) - (uncond + w * (src - uncond))).abs().mean(dim=(0, 1))
    return _rescaled(diff, options.mask_clamp_ratio, options.mask_estimate_threshold)


def difference_mask(z0_guidance: torch.Tensor, z0: torch.Tensor, options: MultimodalOptions) -> torch.Tensor:
    """M_diff: where the guidance image departs from the input (catches pose/shape changes)."""
    d = (z0_guidance - z0).abs().mean(dim=1, keepdim=True)
    d = F.avg_pool2d(d, 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    return _rescaled(d, options.mask_clamp_ratio, options.mask_estimate_threshold)


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


def mask_to_image(mask: torch.Tensor, image_hw: tuple[int, int]):
    """Latent-grid bool mask -> PIL "L" at image resolution (nearest), for inspection."""
    from PIL import Image

    up = F.interpolate(mask[None, None].float().cpu(), size=image_hw, mode="nearest")[0, 0]
    return Image.fromarray((up.numpy() * 255).astype(np.uint8), "L")
