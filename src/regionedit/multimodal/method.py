"""The multi-modal optimisation editor as a registered editing method (see :mod:`regionedit.method`)."""

from __future__ import annotations

import dataclasses

from ..errors import InvalidInputError, PromptCountError
from ..method import Method
from ..models.controlnet import cached_controlnet
from ..regions import Region
from .editor import run
from .options import MultimodalOptions
from .prepare import prepare_multimodal
from .request import check_condition_regions, conditions_from, control_names, controlnet_folders


class Multimodal(Method):
    name = "multimodal"
    title = "multi-modal: an optimised balance (λ) between the input and a text or layout instruction"
    options_class = MultimodalOptions
    request_fields = frozenset({"controls", "control_scales", "controlnets"})
    masks_required = False  # one prompt without a mask: the mask is estimated
    caption_required = False
    execution_fields = frozenset({"gradient_checkpointing"})

    def check_request(self, request) -> None:
        masks, prompts = len(request.masks), len(request.prompts)
        if masks == 0 and prompts != 1:
            raise PromptCountError(
                f"without masks the multimodal method takes exactly one prompt (its mask is estimated), got {prompts}"
            )
        if masks and masks != prompts:
            raise PromptCountError(f"got {masks} mask(s) and {prompts} prompt(s); give one prompt per mask")
        conditions = conditions_from(request.controls, request.control_scales)
        check_condition_regions(conditions, prompts)
        kinds = {c.kind for c in conditions}
        for kind in request.controlnets:
            if kind not in kinds:
                raise InvalidInputError(f"a ControlNet is given for {kind} but there is no {kind} control")

    def prepare(self, request, options, vae_scale_factor, patch_size, model_settings):
        conditions = conditions_from(request.controls, request.control_scales)
        masks = request.masks or [None]
        regions = [Region(m, p) for m, p in zip(masks, request.prompts, strict=True)]
        prepared = prepare_multimodal(request.image, regions, request.background_prompt, conditions, options,
                                      vae_scale_factor, seed=request.seed, patch_size=patch_size)  # fmt: skip
        shipped = None if model_settings is None else model_settings.get("controlnets", {})
        return dataclasses.replace(
            prepared, controlnets=controlnet_folders(conditions, request.controlnets, shipped)
        )

    def run(self, model, prepared, generator, progress=True, callback=None, inversion=None):
        if inversion is not None:
            raise InvalidInputError("reusing an inversion is supported by the LoMOE method only")
        nets = {kind: cached_controlnet(path, model, kind) for kind, path in prepared.controlnets.items()}
        return run(model, prepared, nets, generator=generator, progress=progress, callback=callback)

    def metadata(self, request, prepared) -> dict:
        return {
            "controls": control_names(request.controls),
            "control_scales": list(request.control_scales),
            "controlnets": {k: str(v) for k, v in prepared.controlnets.items()},
        }

    def side_images(self, result, prepared) -> dict:
        out = {"_mask": result.mask_image, "_guidance": result.guidance_image}
        for kind, im in zip([c.kind for c in prepared.conditions], result.control_images, strict=True):
            name = f"_control_{kind}"
            out[name if name not in out else f"{name}_{len(out)}"] = im  # two of a kind: keep both
        return out
