"""Regions: a mask and a prompt per object, and the latent-resolution masks the editors fuse with."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import InvalidMaskError
from .io import load_image, to_rgb

OVERLAP_POLICIES = ("average", "last")
MASK_RESIZES = ("nearest", "majority")
MASK_GRIDS = ("token", "latent")


@dataclass
class Region:
    """One edit: where (``mask``) and what (``prompt``).

    Args:
        mask: path, PIL image, or array ``(H, W)`` (bool, or numbers in [0, 1], [0, 255] or
            [0, 65535], told apart by the largest value); white/true = edit here. Colour masks
            are converted to grey; grey values are thresholded by ``mask_threshold``.
        prompt: what the region should become.
        negative_prompt: what to steer away from; None uses the editor's default.
        start, end: fractions of the denoising steps during which the region is active
            (like ControlNet's guidance start/end); outside them it follows the background.
    """

    mask: object
    prompt: str
    negative_prompt: str | None = None
    start: float = 0.0
    end: float = 1.0


def mask_to_array(mask, threshold: float = 0.5, what: str = "mask") -> np.ndarray:
    """Any accepted mask form -> float array ``(H, W)`` in [0, 1] (not yet binarised)."""
    if isinstance(mask, (str, Path)):
        mask = load_image(mask, what=what)
    if isinstance(mask, Image.Image):
        arr = np.asarray(to_rgb(mask).convert("L"), dtype=np.float32) / 255.0
    elif isinstance(mask, torch.Tensor):
        arr = mask.detach().cpu().float().numpy()
    else:
        try:
            arr = np.asarray(mask)
        except ValueError as exc:  # ragged nested lists
            raise InvalidMaskError(f"{what} is not a rectangular array: {exc}") from None
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "biuf":
        raise InvalidMaskError(f"{what} must hold numbers or booleans, got dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].mean(axis=-1)
    elif arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InvalidMaskError(f"{what} must be 2-D (H, W); got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise InvalidMaskError(f"{what} contains NaN or inf values")
    if arr.min(initial=0) < 0:
        raise InvalidMaskError(f"{what} has negative values; expected [0, 1], [0, 255] or [0, 65535]")
    top = arr.max(initial=0)
    # The range is guessed from the largest value: 8-bit and 16-bit masks both work.
    if top > 65535:
        raise InvalidMaskError(f"{what} has values up to {top:g}; expected [0, 1], [0, 255] or [0, 65535]")
    if top > 255:
        arr = arr / 65535.0
    elif top > 1.0:
        arr = arr / 255.0
    return arr


def latent_masks(
    masks: list[np.ndarray],
    latent_hw: tuple[int, int],
    feather: float = 0.0,
    overlap: str = "average",
    device=None,
    resize: str = "nearest",
) -> torch.Tensor:
    """Binary image masks -> region weights at latent resolution, background first.

    Returns ``(N + 1, 1, h, w)`` float32: index 0 is the background ``clamp(1 - Σ M_i, 0, 1)``,
    then one weight map per region. ``resize="nearest"`` samples each cell's top-left pixel (the
    official code's nearest neighbour); ``"majority"`` takes a cell when at least half its pixels are
    masked (a mask under half of every cell keeps its best-covered cells). ``feather`` > 0 blurs
    each region map with a Gaussian of that many latent pixels (soft edges).
    ``overlap="last"`` gives a pixel covered by several masks to the last one; ``"average"``
    (the paper's fusion) lets the editors average the branches there.
    """
    if overlap not in OVERLAP_POLICIES:
        raise InvalidMaskError(f"overlap must be one of {OVERLAP_POLICIES}, got {overlap!r}")
    h, w = latent_hw
    if not masks:
        return torch.ones((1, 1, h, w), device=device)
    stack = torch.from_numpy(np.stack(masks).astype(np.float32))[:, None]
    if resize not in MASK_RESIZES:
        raise InvalidMaskError(f"mask resize must be one of {MASK_RESIZES}, got {resize!r}")
    if resize == "nearest":
        small = F.interpolate(stack, size=(h, w), mode="nearest")
    else:
        area = F.interpolate(stack, size=(h, w), mode="area")
        top = area.amax(dim=(1, 2, 3), keepdim=True)
        small = ((area >= torch.clamp(top, max=0.5)) & (area > 0)).float()
    for i, m in enumerate(small, start=1):
        if m.sum() == 0:
            raise InvalidMaskError(
                f"mask {i} covers no cell of the model's {w}x{h} grid (latent cells, or tokens on a "
                "flow transformer); draw it larger (at least one cell)"
            )
    if overlap == "last":
        taken = torch.zeros_like(small[0])
        for i in range(len(small) - 1, -1, -1):
            small[i] = small[i] * (1 - taken)
            taken = torch.clamp(taken + small[i], 0, 1)
    if feather > 0:
        small = _gaussian_blur(small, feather)
    background = torch.clamp(1 - small.sum(0, keepdim=True), 0, 1)
    return torch.cat([background, small]).to(device)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2 * sigma)))
    k = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(k**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x)
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def active_weights(weights: torch.Tensor, regions: list[Region], step: int, num_steps: int) -> torch.Tensor:
    """Weights for one step: inactive regions hand their area back to the background."""
    frac = step / num_steps
    active = [r.start <= frac < r.end or (r.end == 1.0 and frac >= r.start) for r in regions]
    if all(active):
        return weights
    out = weights.clone()
    for i, on in enumerate(active, start=1):
        if not on:
            out[i] = 0
    out[0] = torch.clamp(1 - out[1:].sum(0), 0, 1)
    return out
