"""Masks from the image's own edges, with OpenCV: GrabCut from a prior, regions from clicks, growing.

All work on RGB ``uint8`` arrays ``(H, W, 3)`` and return bool ``(H, W)`` masks.
"""

from __future__ import annotations

import cv2
import numpy as np


def grabcut(image: np.ndarray, prior: np.ndarray, iterations: int = 5) -> np.ndarray:
    """GrabCut (Rother et al. 2004) started from a soft prior in [0, 1]: above 0.9 sure object, above
    0.45 probable object, above 0.2 probable background, the rest sure background. The colour models
    it fits snap the prior to the image's own edges, flat colours and photos alike."""
    labels = np.full(prior.shape, cv2.GC_BGD, np.uint8)
    labels[prior >= 0.2] = cv2.GC_PR_BGD
    labels[prior >= 0.45] = cv2.GC_PR_FGD
    labels[prior >= 0.9] = cv2.GC_FGD
    if not ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).any():
        return np.zeros(prior.shape, bool)
    if (labels == cv2.GC_BGD).sum() + (labels == cv2.GC_PR_BGD).sum() == 0:
        return np.ones(prior.shape, bool)  # nothing is background: GrabCut has no model to fit
    models = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # its k-means starts are seeded: the same input gives the same mask
    cv2.grabCut(
        np.ascontiguousarray(image[..., ::-1]), labels, None, *models, iterations, cv2.GC_INIT_WITH_MASK
    )
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def component_at(mask: np.ndarray, y: int, x: int) -> np.ndarray:
    """The 8-connected component of ``mask`` holding pixel ``(y, x)`` (empty if it is not in it)."""
    if not mask[y, x]:
        return np.zeros(mask.shape, bool)
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return labels == labels[y, x]


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of ``mask``."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == j for j in range(1, n)]


def region_from_points(
    image: np.ndarray, points, negative_points=(), radius: int | None = None
) -> np.ndarray:
    """The object under clicked points, without a segmenter: a flood fill of the edge-preserving
    smoothed image from each click gives the prior (exact on flat colours), GrabCut fits it to the
    image's edges (noise and photos), negative clicks are sure background.

    Args:
        points / negative_points: ``(x, y)`` pixels, origin top-left.
        radius: the sure-object disc around a click (default: 1/64 of the image side, at least 1).
    """
    h, w = image.shape[:2]
    radius = radius if radius is not None else max(1, min(h, w) // 64)
    smooth = cv2.pyrMeanShiftFiltering(np.ascontiguousarray(image), 7, 30)
    prior = np.full((h, w), 0.3, np.float32)  # probable background
    for x, y in points:
        fill = np.zeros((h + 2, w + 2), np.uint8)
        cv2.floodFill(smooth.copy(), fill, (int(x), int(y)), (0, 0, 0), (24,) * 3, (24,) * 3,
                      cv2.FLOODFILL_MASK_ONLY | 4 | (255 << 8))  # fmt: skip
        region = fill[1:-1, 1:-1] > 0
        if region.mean() < 0.5:  # a region that covers half the image is the background, not the object
            prior[region] = 0.6
        cv2.circle(prior, (int(x), int(y)), radius, 1.0, -1)
    for x, y in negative_points:
        cv2.circle(prior, (int(x), int(y)), radius, 0.0, -1)
    found = grabcut(image, prior)
    keep = np.zeros((h, w), bool)
    for x, y in points:  # the parts connected to a click; stray patches elsewhere go
        keep |= component_at(found, int(y), int(x))
    return keep


def grow(mask: np.ndarray, by: int | str) -> np.ndarray:
    """``mask`` dilated by ``by`` pixels (a square structuring element), or ``"box"``: its bounding box
    (a new shape needs room the old silhouette does not give)."""
    if by == "box":
        ys, xs = np.nonzero(mask)
        out = np.zeros(mask.shape, bool)
        if len(ys):
            out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        return out
    if isinstance(by, bool) or not isinstance(by, int) or by < 0:
        raise ValueError(f"grow by a number of pixels >= 0 or 'box', got {by!r}")
    if by == 0:
        return mask.copy()
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * by + 1, 2 * by + 1), np.uint8)) > 0
