"""Check a LoMOE edit once and bring its masks to the latent grid (see :mod:`regionedit.prepared`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InvalidInputError, InvalidMaskError, InvalidOptionError, PromptCountError
from ..models.interface import check_image_size
from ..prepared import PreparedEdit, check_text, fit, read_image, sized_mask
from ..regions import Region, latent_masks
from .options import LoMOEOptions
from .reference import Inversion


@dataclass(frozen=True)
class PreparedLoMOE(PreparedEdit):
    """A checked LoMOE edit. ``crop_box``: ``(left, top, right, bottom)`` to crop the result back
    to after padding the input (``resize="pad"``), else None."""

    crop_box: tuple[int, int, int, int] | None = None


def prepare_lomoe(
    image,
    regions: list[Region],
    background_prompt: str | None,
    options: LoMOEOptions,
    vae_scale_factor: int,
    resize: str | None = None,
    seed: int = 0,
    patch_size: int = 1,
) -> PreparedLoMOE:
    """Check a LoMOE edit and bring its masks to the latent grid.

    Args:
        image: path, PIL image, or an :class:`Inversion` to reuse (its caption is then the
            background prompt, and ``background_prompt`` must be None or equal to it).
        regions: :class:`Region` list; masks as paths, PIL images or arrays at the image's size.
        background_prompt: the input's caption (required with an image).
        options: :class:`LoMOEOptions`.
        vae_scale_factor: the model's (``Model.vae_scale_factor`` or ``ModelInfo``'s).
        resize: None (sizes must fit), ``"pad"`` or ``"crop"``.
        patch_size: latent cells per token side (2 for flow transformers): sides must be
            multiples of ``vae_scale_factor · patch_size``; masks are made on the token grid, or
            on the latent cells with ``options.mask_grid="latent"``.
    """
    if not isinstance(options, LoMOEOptions):
        raise InvalidOptionError(f"LoMOE takes LoMOEOptions, got {type(options).__name__}")
    if not isinstance(regions, (list, tuple)):
        raise InvalidInputError("regions must be a list of regionedit.Region")
    if isinstance(image, Inversion):
        if background_prompt is not None and background_prompt != image.prompt:
            raise InvalidInputError(
                "background_prompt differs from the inversion's caption; invert again with the new caption"
            )
        pixels, size, background_prompt = None, tuple(image.image_size), image.prompt
    else:
        if background_prompt is None:
            raise InvalidInputError("background_prompt (the source caption) is required with an image")
        check_text(background_prompt=background_prompt)
        pixels = read_image(image)
        size = (pixels.height, pixels.width)
    masks = []
    for i, r in enumerate(regions, start=1):
        if not isinstance(r, Region):
            raise PromptCountError(f"region {i} is a {type(r).__name__}; expected regionedit.Region")
        if not isinstance(r.prompt, str) or not r.prompt.strip():
            raise PromptCountError(f"region {i} has an empty prompt; give each mask a prompt")
        if r.negative_prompt is not None:
            check_text(negative_prompt=r.negative_prompt)
        if not (0.0 <= r.start < r.end <= 1.0):
            raise InvalidMaskError(
                f"region {i}: need 0 <= start < end <= 1, got start={r.start}, end={r.end}"
            )
        masks.append(sized_mask(r.mask, size, f"mask {i}") >= options.mask_threshold)
    box = None
    if pixels is not None:
        pixels, masks, box = fit(pixels, masks, vae_scale_factor * patch_size, resize)
        size = (pixels.height, pixels.width)
    else:
        check_image_size(*size, vae_scale_factor * patch_size)
    for i, m in enumerate(masks, start=1):
        if not m.any():
            raise InvalidMaskError(
                f"mask {i} is empty (no pixel >= {options.mask_threshold}); paint the region to edit"
            )
    cell = patch_size if options.mask_grid == "token" else 1  # latent cells per mask cell side
    f = vae_scale_factor * cell
    weights = latent_masks(
        masks, (size[0] // f, size[1] // f), options.feather, options.overlap, resize=options.mask_resize
    )
    weights = weights.repeat_interleave(cell, -2).repeat_interleave(cell, -1)
    prepared = [replace(r, mask=m) for r, m in zip(regions, masks, strict=True)]
    return PreparedLoMOE(method="lomoe", image=pixels, image_size=size, regions=tuple(prepared),
                         background_prompt=background_prompt, options=options, latent_masks=weights, seed=seed,
                         crop_box=box)  # fmt: skip
