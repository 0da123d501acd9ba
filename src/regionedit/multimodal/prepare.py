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


@dataclass(frozen=True)
class PreparedMultimodal(PreparedEdit):
    """A checked multi-modal edit.

    Attributes:
        conditions / control_images: the layout conditions and their RGB maps.
        controlnets: condition kind -> ControlNet folder (the request layer's).
    """

    conditions: tuple = ()
    control_images: tuple[Image.Image, ...] = ()
    controlnets: dict = field(default_factory=dict)


def prepare_multimodal(
    image,
    prompt: str,
    source_prompt: str,
    mask,
    conditions: list[Condition] | None,
    options: MultimodalOptions,
    vae_scale_factor: int,
    resize: str | None = None,
    seed: int = 0,
    controlnets: dict | None = None,
    negative_prompt: str = "",
    patch_size: int = 1,
) -> PreparedMultimodal:
    """Check a multi-modal edit: image, prompts, optional mask and the conditions' maps.

    ``resize`` is refused (control maps are given at the input's size). ``controlnets`` (kind -> folder) is carried for the request layer; the library's
    ``edit`` takes network objects instead. ``patch_size``: latent cells per token side (2 for
    flow transformers; the mask is then made on the token grid).
    """
    if not isinstance(options, MultimodalOptions):
        raise InvalidOptionError(
            f"the multimodal method takes MultimodalOptions, got {type(options).__name__}"
        )
    check_text(prompt=prompt, source_prompt=source_prompt, negative_prompt=negative_prompt)
    if resize is not None:
        raise InvalidInputError(
            "resize is not supported by the multimodal method yet; resize the image first"
        )
    pixels = read_image(image)
    size = (pixels.height, pixels.width)
    check_image_size(*size, vae_scale_factor * patch_size)
    given = None if mask is None else sized_mask(mask, size, "mask")  # grey levels: area-resized below
    conditions = list(conditions or [])
    for c in conditions:
        if not isinstance(c, Condition):
            raise InvalidInputError(
                f"conditions must be regionedit Condition objects, got {type(c).__name__}"
            )
    maps = tuple(control_image(c, pixels) for c in conditions)
    latent = None
    if given is not None:
        f = vae_scale_factor * patch_size
        small = F.interpolate(torch.from_numpy(np.asarray(given, np.float32))[None, None],
                              size=(size[0] // f, size[1] // f), mode="area")[0, 0]  # fmt: skip
        latent = small >= options.mask_threshold  # all False is allowed: nothing may change
        latent = latent.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)
    region = Region(given, prompt, negative_prompt)
    return PreparedMultimodal(method="multimodal", image=pixels, image_size=size, regions=(region,),
                              background_prompt=source_prompt, options=options, latent_masks=latent, seed=seed,
                              conditions=tuple(conditions), control_images=maps,
                              controlnets=dict(controlnets or {}))  # fmt: skip
