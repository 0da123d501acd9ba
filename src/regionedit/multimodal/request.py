"""A multi-modal edit from plain request data (CLI flags, a batch manifest line, the UI).

Controls are ``"KIND=VALUE"`` strings as on the command line: ``edge=PATH``, ``edge=auto``,
``pose=KEYPOINTS.json``; ControlNets are named per kind (a diffusers folder), the mini model's
bundled ones otherwise.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInputError, InvalidMaskError, PromptCountError
from ..regions import mask_to_array
from .conditions import AUTO, Condition, control_image
from .nets import cached_controlnet, mini_controlnet_path


def split_pairs(items, what: str) -> list[tuple[str, str]]:
    """``["edge=auto", ...]`` -> ``[("edge", "auto"), ...]``, with a clear error for a bad item."""
    out = []
    for item in items or []:
        kind, sep, value = str(item).partition("=")
        if not sep or not kind.strip() or not value.strip():
            raise InvalidInputError(f"{what} must look like KIND=VALUE (e.g. edge=auto), got {item!r}")
        out.append((kind.strip(), value.strip()))
    return out


def resolve_control(value: str, resolve) -> str:
    """A control's VALUE with ``resolve`` applied to its path (``auto`` stays as it is)."""
    return value if value == AUTO else resolve(value)


def conditions_from(controls, scales) -> list[Condition]:
    """One :class:`Condition` per ``KIND=VALUE`` string (or Condition); ``scales`` go to the first ones."""
    scales = list(scales or [])
    if len(scales) > len(controls or []):
        raise InvalidInputError(f"got {len(scales)} control scales for {len(controls or [])} controls")
    out = []
    for i, item in enumerate(controls or []):
        cond = item if isinstance(item, Condition) else Condition(*split_pairs([item], "a control")[0])
        out.append(replace(cond, scale=scales[i]) if i < len(scales) else cond)
    return out


def control_names(controls) -> list[str]:
    """How controls are recorded in metadata: ``KIND=VALUE``, ``KIND=<image>`` for in-memory maps."""
    names = []
    for item in controls:
        if isinstance(item, str):
            names.append(item)
        else:
            names.append(f"{item.kind}={item.source if isinstance(item.source, (str, Path)) else '<image>'}")
    return names


def parse_controls(request) -> list[Condition]:
    """The request's conditions; every ControlNet it names must serve one of them."""
    conditions = conditions_from(request.controls, request.control_scales)
    for kind in request.controlnets:
        if kind not in {c.kind for c in conditions}:
            raise InvalidInputError(f"a ControlNet is given for {kind} but there is no {kind} control")
    return conditions


def check_counts(request) -> None:
    """One target prompt, at most one mask, no negative prompts, no resize (no file read)."""
    if len(request.prompts) != 1:
        raise PromptCountError(
            f"the multimodal method takes exactly one prompt (the target prompt), got {len(request.prompts)}"
        )
    if len(request.masks) > 1:
        raise InvalidMaskError(
            f"the multimodal method takes at most one mask (white = may change), got {len(request.masks)}"
        )
    if request.negative_prompts:
        raise InvalidInputError("the multimodal method takes no negative prompts")
    if request.resize is not None:
        raise InvalidInputError(
            "resize is not supported by the multimodal method yet; resize the image first"
        )


def check_request(request, image) -> tuple[np.ndarray | None, list[Condition]]:
    """Everything but the model: counts, the mask (None: estimate one) and the conditions, whose
    maps are read and sized against the image, and the ControlNet folders named."""
    check_counts(request)
    conditions = parse_controls(request)
    for c in conditions:
        control_image(c, image)
    for kind, path in request.controlnets.items():
        if not (Path(path) / "config.json").is_file():
            raise InvalidInputError(f"no ControlNet for {kind} at {path}: give a diffusers ControlNet folder")
    if not request.masks:
        return None, conditions
    mask = mask_to_array(request.masks[0], what="mask")
    if mask.shape != (image.height, image.width):
        raise InvalidMaskError(
            f"the mask is {mask.shape[-1]}x{mask.shape[0]} but the image is {image.width}x{image.height}; "
            "it must have the image's size"
        )
    return mask, conditions


def load_nets(model, conditions: list[Condition], given: dict) -> dict:
    """The ControlNet of each condition kind: ``given[kind]`` or the mini model's bundled one."""
    nets = {}
    for c in conditions:
        if c.kind not in nets:
            path = given[c.kind] if c.kind in given else mini_controlnet_path(c.kind)
            nets[c.kind] = cached_controlnet(path, model, c.kind, given=c.kind in given)
    return nets


def run_request(model, request, image, mask, conditions, progress: bool = True, callback=None):
    """Run a request (``edit_api.EditRequest``, multimodal) checked by its ``prepare_multimodal``."""
    from .editor import edit

    nets = load_nets(model, conditions, request.controlnets)
    return edit(
        model, image, request.prompts[0], request.background_prompt, mask=mask, controlnets=nets,
        conditions=conditions, options=request.options, generator=torch.Generator().manual_seed(request.seed),
        progress=progress, callback=callback,
    )  # fmt: skip


def side_images(result, request) -> dict:
    """Name suffix -> image of what ``--save-masks`` writes beside the edit."""
    out = {"_mask": result.mask_image, "_guidance": result.guidance_image}
    kinds = [c.kind for c in conditions_from(request.controls, request.control_scales)]
    for kind, im in zip(kinds, result.control_images, strict=True):
        name = f"_control_{kind}"
        out[name if name not in out else f"{name}_{len(out)}"] = im  # two of a kind: keep both
    return out
