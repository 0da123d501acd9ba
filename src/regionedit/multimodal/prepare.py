"""Check a multi-modal edit once: image, prompts, mask and condition maps (see :mod:`regionedit.prepared`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidInputError, InvalidOptionError
from ..models.interface import check_image_size
from ..prepared import PreparedEdit, check_text, read_image, sized_mask
from ..regions import Region
from .conditions import Condition, control_image
from .options import MultimodalOptions
from .request import check_condition_regions


@dataclass(frozen=True)
class PreparedMultimodal(PreparedEdit):
    """A checked multi-modal edit.

    ``latent_masks`` is ``(R, h, w)`` bool, one mask per region on the latent grid, or None (one
    region without a mask: estimated when the edit runs).

    Attributes:
        conditions / control_images: the layout conditions and their RGB maps.
        controlnets: condition kind -> ControlNet folder (the request layer's).
    """

    conditions: tuple = ()
    control_images: tuple[Image.Image, ...] = ()
    controlnets: dict = field(default_factory=dict)


def prepare_multimodal(
    image,
    regions: list[Region],
    source_prompt: str,
    conditions: list[Condition] | None,
    options: MultimodalOptions,
    vae_scale_factor: int,
    resize: str | None = None,
    seed: int = 0,
    controlnets: dict | None = None,
    patch_size: int = 1,
) -> PreparedMultimodal:
    """Check a multi-modal edit: image, regions (mask and instruction each), conditions' maps.

    ``regions``: one :class:`Region` per object to change, each with its mask, or a single region
    with ``mask=None`` (the mask is then estimated). A condition with ``region=k`` instructs the
    k-th region only; without, every region. ``resize`` is refused (control maps are given at the
    input's size). ``controlnets`` (kind -> folder) is carried for the request layer; the library's
    ``edit`` takes network objects instead. ``patch_size``: latent cells per token side (2 for
    flow transformers: the image must fill whole tokens; the masks stay on the latent cells, as the
    editor blends unpacked latents).
    """
    if not isinstance(options, MultimodalOptions):
        raise InvalidOptionError(
            f"the multimodal method takes MultimodalOptions, got {type(options).__name__}"
        )
    regions = list(regions or [])
    if not regions or not all(isinstance(r, Region) for r in regions):
        raise InvalidInputError("regions must be a non-empty list of regionedit.Region")
    unmasked = [r.mask is None for r in regions]
    if any(unmasked) and len(regions) > 1:
        raise InvalidInputError(
            f"every region needs a mask when there are several ({len(regions)} given); only a single "
            "region may leave its mask out (it is then estimated)"
        )
    check_text(source_prompt=source_prompt)
    for i, r in enumerate(regions):
        name = "" if len(regions) == 1 else f"region {i + 1} "
        check_text(**{f"{name}prompt": r.prompt, f"{name}negative_prompt": r.negative_prompt or ""})
    if resize is not None:
        raise InvalidInputError(
            "resize is not supported by the multimodal method yet; resize the image first"
        )
    pixels = read_image(image)
    size = (pixels.height, pixels.width)
    check_image_size(*size, vae_scale_factor * patch_size)
    conditions = list(conditions or [])
    for c in conditions:
        if not isinstance(c, Condition):
            raise InvalidInputError(
                f"conditions must be regionedit Condition objects, got {type(c).__name__}"
            )
    check_condition_regions(conditions, len(regions))
    maps = tuple(control_image(c, pixels) for c in conditions)
    latent, checked = None, []
    if unmasked[0]:
        checked = [Region(None, r.prompt, r.negative_prompt) for r in regions]
    else:
        f = vae_scale_factor  # latent cells, also on flow transformers (whose tokens are 2x2 cells)
        grids = []
        for i, r in enumerate(regions):
            given = sized_mask(
                r.mask, size, f"mask {i + 1}" if len(regions) > 1 else "mask"
            )  # grey: area-resized
            small = F.interpolate(torch.from_numpy(np.asarray(given, np.float32))[None, None],
                                  size=(size[0] // f, size[1] // f), mode="area")[0, 0]  # fmt: skip
            grid = small >= options.mask_threshold  # all False is allowed: nothing may change there
            grids.append(grid)
            checked.append(Region(given, r.prompt, r.negative_prompt))
        latent = torch.stack(grids)
    return PreparedMultimodal(method="multimodal", image=pixels, image_size=size, regions=tuple(checked),
                              background_prompt=source_prompt, options=options, latent_masks=latent, seed=seed,
                              conditions=tuple(conditions), control_images=maps,
                              controlnets=dict(controlnets or {}))  # fmt: skip
