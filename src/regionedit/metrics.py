"""Edit-quality metrics, defined so that they measure what their names say.

The official LoMOE metric script squares ``uint8`` differences (wrap-around), zeroes the
foreground and then scores whole images (inflating PSNR/SSIM and tying them to mask size),
sums masks as ``uint8`` and compares unnormalised CLIP embeddings. Here every image is
float in [0, 1], masks are ``bool`` and combined with logical OR, and background metrics use
background pixels only (SSIM through mask-weighted local statistics, so not even a window
straddling the border reads a foreground pixel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PSNR_CAP_DB = 100.0  # identical backgrounds give MSE 0; capped so means and JSON stay finite
SEAM_BAND = 2  # pixels just outside the masks scored by seam_score


def _float(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = arr[..., :3]
    return arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)


def union_mask(masks, shape: tuple[int, int]) -> np.ndarray:
    """Logical OR of boolean masks (never an integer sum that could overflow)."""
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        out |= np.asarray(m, dtype=bool)
    return out


def background_of(masks, shape: tuple[int, int]) -> np.ndarray:
    return ~union_mask(masks, shape)


def _check(a, b, background) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = _float(a), _float(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    bg = np.asarray(background, dtype=bool)
    if bg.shape != a.shape[:2]:
        raise ValueError(f"background mask is {bg.shape}, images are {a.shape[:2]}")
    return a, b, bg


def background_mse(a, b, background) -> float:
    """Mean squared difference over background pixels and channels, images in [0, 1].

    NaN when the background is empty (every pixel edited): there is nothing to preserve.
    """
    a, b, bg = _check(a, b, background)
    if not bg.any():
        return float("nan")
    return float(((a - b) ** 2)[bg].mean())


def background_psnr(a, b, background) -> float:
    """PSNR in dB over background pixels (peak 1.0), capped at ``PSNR_CAP_DB``."""
    mse = background_mse(a, b, background)
    if math.isnan(mse):
        return mse
    return min(PSNR_CAP_DB, 10 * math.log10(1.0 / mse)) if mse > 0 else PSNR_CAP_DB


def _gaussian_filter(x: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Separable Gaussian blur of ``(H, W, ...)`` with zero padding (weights renormalise it)."""
    k = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    k /= k.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        xp = np.pad(x, pad)
        out = np.zeros_like(x)
        n = x.shape[axis]
        for j, w in enumerate(k):
            out += w * np.take(xp, np.arange(j, j + n), axis=axis)
        x = out
    return x


def background_ssim(a, b, background, sigma: float = 1.5, radius: int = 5) -> float:
    """SSIM (Wang et al. 2004, Gaussian window σ=1.5, 11×11) over background pixels only.

    Local means, variances and covariance are weighted by the background mask (normalised
    convolution), so only background pixels enter any statistic; the SSIM map is then
    averaged over background pixels. On an all-background image it equals ordinary SSIM with
    zero-padded borders renormalised.
    """
    a, b, bg = _check(a, b, background)
    if not bg.any():
        return float("nan")
    c1, c2 = 0.01**2, 0.03**2
    w = bg.astype(np.float64)[..., None]

    def blur(x):
        return _gaussian_filter(x, sigma, radius)

    norm = np.maximum(blur(w), 1e-12)
    mu_a, mu_b = blur(w * a) / norm, blur(w * b) / norm
    var_a = np.maximum(blur(w * a * a) / norm - mu_a**2, 0)
    var_b = np.maximum(blur(w * b * b) / norm - mu_b**2, 0)
    cov = blur(w * a * b) / norm - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim.mean(axis=-1)[bg].mean())


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)×(2r+1) square."""
    m = np.asarray(mask, dtype=bool)
    out = m.copy()
    h, w = m.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            src = m[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            out[max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)] |= src
    return out


def gradient_magnitude(image) -> np.ndarray:
    """``g(p) = sqrt(Σ_channels Σ_{q ∈ 4-neighbours(p)} (I(p) − I(q))²)``, image in [0, 1].

    Symmetric in direction, so a step on any side of a mask is seen by the pixel just outside.
    Neighbours beyond the image border do not count.
    """
    x = _float(image)
    e = np.zeros(x.shape[:2])
    dy = ((x[1:] - x[:-1]) ** 2).sum(-1)
    dx = ((x[:, 1:] - x[:, :-1]) ** 2).sum(-1)
    e[1:] += dy
    e[:-1] += dy
    e[:, 1:] += dx
    e[:, :-1] += dx
    return np.sqrt(e)


def seam_band(masks, shape: tuple[int, int], width: int = SEAM_BAND) -> np.ndarray:
    """Background pixels within ``width`` pixels (square neighbourhood) of any mask."""
    union = union_mask(masks, shape)
    return dilate(union, width) & ~union


def seam_score(source, edited, masks, width: int = SEAM_BAND) -> float:
    """How much a visible border the edit drew around its masks.

    Definition: with ``g`` the 4-neighbour gradient magnitude (:func:`gradient_magnitude`),
    the mean over the band ``B`` of background pixels within ``width`` pixels of a mask of
    ``|g(edited) − g(source)|``. Only background lies in the band, so an edit that blends
    into its surroundings scores 0 whatever it does inside the mask; a hard step of height
    δ (per channel, C channels) along a straight border scores about δ·√C times the
    fraction of band pixels touching the border. NaN when the band is empty.
    """
    src = np.asarray(source)
    band = seam_band(masks, src.shape[:2], width)
    if not band.any():
        return float("nan")
    return float(np.abs(gradient_magnitude(edited) - gradient_magnitude(src))[band].mean())


@dataclass
class AttributeScore:
    colour: float
    shape: float
    both: float  # fraction of masks where colour and shape are both right: "accuracy"
    verdicts: list


def attribute_accuracy(judge, image, masks, targets) -> AttributeScore:
    """Fraction of masks whose object the judge reads as the target colour and shape.

    Args:
        judge: anything with ``classify_batch(images, masks) -> [Verdict]`` (or ``classify``).
        image: ``uint8 (H, W, 3)`` edited image.
        masks: bool ``(H, W)`` per edited region.
        targets: per mask ``{"colour": ..., "shape": ...}``.
    """
    image = np.asarray(image)
    if hasattr(judge, "classify_batch"):
        verdicts = judge.classify_batch([image] * len(masks), list(masks))
    else:
        verdicts = [judge.classify(image, m) for m in masks]
    colour = [v.colour == t["colour"] for v, t in zip(verdicts, targets, strict=True)]
    shape = [v.shape == t["shape"] for v, t in zip(verdicts, targets, strict=True)]
    both = [c and s for c, s in zip(colour, shape, strict=True)]
    n = max(1, len(masks))
    return AttributeScore(sum(colour) / n, sum(shape) / n, sum(both) / n, verdicts)


def image_metrics(source, edited, masks) -> dict:
    """Background PSNR/SSIM/MSE, PSNR inside the masks (how much of the input an edit keeps
    there) and seam score of one edit, as a JSON-ready dict."""
    src = np.asarray(source)
    bg = background_of(masks, src.shape[:2])
    return {
        "bg_psnr": background_psnr(src, edited, bg),
        "mask_psnr": background_psnr(src, edited, ~bg) if (~bg).any() else None,
        "bg_ssim": background_ssim(src, edited, bg),
        "bg_mse": background_mse(src, edited, bg),
        "seam": seam_score(src, edited, masks),
    }
