"""LoMOE as a registered editing method (see :mod:`regionedit.method`)."""

from __future__ import annotations

from ..errors import PromptCountError
from ..method import Method
from ..regions import Region
from .editor import run
from .options import LoMOEOptions
from .prepare import prepare_lomoe


def request_regions(request) -> list[Region]:
    """The request's masks, prompts and negative prompts as :class:`Region` objects."""
    masks, prompts, negatives = request.masks, request.prompts, request.negative_prompts
    n = len(masks)
    negs = (negatives * n) if len(negatives) == 1 else negatives
    return [
        Region(m, p, negs[i] if negs else None) for i, (m, p) in enumerate(zip(masks, prompts, strict=True))
    ]


class LoMOE(Method):
    name = "lomoe"
    title = "LoMOE: every masked region edited by its own prompt in one multi-diffusion pass"
    options_class = LoMOEOptions
    request_fields = frozenset({"negative_prompts", "resize"})

    def check_request(self, request) -> None:
        if len(request.masks) != len(request.prompts):
            raise PromptCountError(
                f"got {len(request.masks)} mask(s) and {len(request.prompts)} prompt(s); give one prompt per mask"
            )
        if len(request.negative_prompts) not in (0, 1, len(request.masks)):
            raise PromptCountError(
                f"got {len(request.negative_prompts)} negative prompts for {len(request.masks)} masks; "
                "give none, one for all, or one per mask"
            )

    def prepare(self, request, options, vae_scale_factor, patch_size, model_settings):
        return prepare_lomoe(request.image, request_regions(request), request.background_prompt, options,
                             vae_scale_factor, resize=request.resize, seed=request.seed, patch_size=patch_size)  # fmt: skip

    def run(self, model, prepared, generator, progress=True, callback=None, inversion=None):
        result = run(model, prepared, inversion=inversion, generator=generator, progress=progress,
                     callback=callback)  # fmt: skip
        box = prepared.crop_box
        if box is not None:  # the input was padded to fit the model: back to its size
            result.image = result.image.crop(box)
            result.reconstruction = result.reconstruction.crop(box)
            result.mask_images = [m.crop(box) for m in result.mask_images]
        return result

    def side_images(self, result, prepared) -> dict:
        return {f"_mask_{i}": m for i, m in enumerate(result.mask_images, start=1)}
