"""A prepared edit: every input read, converted and checked once, before any network runs.

Each method's ``prepare`` (:func:`regionedit.lomoe.prepare.prepare_lomoe`,
:func:`regionedit.multimodal.prepare.prepare_multimodal`) is the validation boundary of its
editor, the role diffusers' ``check_inputs`` plays at the top of a pipeline call: files are read
there and nowhere else, masks are binarised and brought to the latent grid there, sizes are
checked there. The editors' ``run`` functions take a :class:`PreparedEdit` as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import InvalidInputError, InvalidMaskError
from .execution import ExecutionOptions
from .io import load_image
from .models.interface import check_image_size
from .regions import Region, mask_to_array


@dataclass(frozen=True)
class PreparedEdit:
    """One validated edit; each method's ``prepare`` returns a subclass with its own fields.

    Attributes:
        method: the registered method's name (:mod:`regionedit.methods`).
        image: the input, RGB, at a size the model takes; None when LoMOE edits an
            :class:`~regionedit.lomoe.reference.Inversion` without the original pixels.
        image_size: ``(H, W)``.
        regions: one per mask, ``mask`` an ``(H, W)`` array; the multimodal method also takes a
            single region with ``mask=None`` (the mask is estimated).
        background_prompt: the input's caption.
        options: the method's options.
        latent_masks: the masks on the latent grid: LoMOE ``(N + 1, 1, h, w)`` float branch
            weights, background first; multimodal ``(N, h, w)`` bool masks, or None.
        seed: the request's seed (callers of the library pass their own generator).
        execution: how to run it (chunking, checkpointing); never changes the result.
    """

    method: str
    image: Image.Image | None
    image_size: tuple[int, int]
    regions: tuple[Region, ...]
    background_prompt: str
    options: object
    latent_masks: torch.Tensor | None = None
    seed: int = 0
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)


def read_image(image) -> Image.Image:
    """A path or PIL image as RGB (paths read once, here)."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if not isinstance(image, Image.Image):
        raise InvalidInputError(f"image must be a path or PIL image, got {type(image).__name__}")
    return image.convert("RGB")


def check_text(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, str):
            raise InvalidInputError(f"{name} must be a string, got {type(value).__name__}")


def sized_mask(mask, size: tuple[int, int], what: str) -> np.ndarray:
    """Any accepted mask form -> float ``(H, W)`` in [0, 1], checked against the image size."""
    arr = mask_to_array(mask, what=what)
    if arr.shape != tuple(size):
        raise InvalidMaskError(
            f"{what} is {arr.shape[1]}x{arr.shape[0]} but the image is {size[1]}x{size[0]}; "
            "masks must have the image's size"
        )
    return arr


def fit_to_factor(image: Image.Image, masks: list, factor: int, mode: str):
    """Make the image size a multiple of ``factor`` (masks alike).

    ``"pad"`` replicates the edge pixels up to the next multiple; the caller crops the result
    back with the returned box. ``"crop"`` centre-crops to the lower multiple.

    Returns:
        (image, masks, box): ``box`` is ``(left, top, right, bottom)`` of the input inside the
        padded image for "pad", else None.
    """
    w, h = image.size
    if mode == "pad":
        nh, nw = -(-h // factor) * factor, -(-w // factor) * factor
        pads = ((0, nh - h), (0, nw - w))
        arr = np.pad(np.asarray(image), (*pads, (0, 0)), mode="edge")
        masks = [np.pad(m, pads, mode="edge") for m in masks]
        box = (0, 0, w, h)
    elif mode == "crop":
        nh, nw = h // factor * factor, w // factor * factor
        if nh == 0 or nw == 0:
            raise InvalidInputError(f"image is {w}x{h}; too small to crop to a multiple of {factor}")
        top, left = (h - nh) // 2, (w - nw) // 2
        arr = np.asarray(image)[top : top + nh, left : left + nw]
        masks = [m[top : top + nh, left : left + nw] for m in masks]
        box = None
    else:
        raise InvalidInputError(f"resize must be None, 'pad' or 'crop', got {mode!r}")
    return Image.fromarray(np.ascontiguousarray(arr)), masks, box


def fit(image, masks, factor, resize):
    """Check (or, with ``resize``, fix) the size; returns (image, masks, crop box)."""
    h, w = image.height, image.width
    if resize is not None and (h % factor or w % factor):
        image, masks, box = fit_to_factor(image, masks, factor, resize)
        return image, masks, box
    if resize not in (None, "pad", "crop"):
        raise InvalidInputError(f"resize must be None, 'pad' or 'crop', got {resize!r}")
    check_image_size(h, w, factor)
    return image, masks, None
