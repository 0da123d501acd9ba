"""``regionedit edit --method multimodal``: the flags and the runner, kept out of ``cli.py``.

Flags shared with LoMOE (``--steps``, ``--guidance-scale``, ``--learning-rate``,
``--mask-threshold``) keep one meaning and one destination; unset, each method uses its own
spec default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..errors import InvalidInputError
from .nets import load_controlnet, mini_controlnet_path
from .options import MultimodalOptions

FLAG_NAMES = {"num_inference_steps": "steps", "preservation_weight": "lambda"}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add the multimodal flags to the ``edit`` subcommand (after the LoMOE ones)."""
    from ..cli import flag_kwargs  # lazy: regionedit.cli imports this module

    g = parser.add_argument_group("multimodal (--method multimodal; defaults from multimodal-spec.md)")
    g.add_argument(
        "--source-prompt", default=None, help="caption of the input (default: --background-prompt or '')"
    )
    g.add_argument(
        "--control",
        action="append",
        default=None,
        metavar="KIND=PATH|auto",
        help="layout condition: edge=PATH|auto, scribble=PATH|auto, pose=KEYPOINTS.json|SKELETON.png, seg=PATH; "
        "repeat for several",
    )
    g.add_argument(
        "--control-scale", action="append", type=float, default=None, help="scale of each --control, in order"
    )
    g.add_argument(
        "--controlnet",
        action="append",
        default=None,
        metavar="KIND=DIR",
        help="diffusers ControlNet folder for a kind (default: the bundled mini ControlNets)",
    )
    taken = set(parser._option_string_actions)
    for f in dataclasses.fields(MultimodalOptions):
        flag = "--" + FLAG_NAMES.get(f.name, f.name).replace("_", "-")
        if flag in taken:  # a LoMOE flag of the same name and meaning: it fills the same dest
            continue
        g.add_argument(flag, **flag_kwargs(f))


def options_from_args(args) -> MultimodalOptions:
    from ..cli import option_values

    values = option_values(MultimodalOptions, args)
    if "num_inference_steps" in values and "optimize_steps" not in values:
        steps = values.pop("num_inference_steps")
        return MultimodalOptions(**values).at_steps(steps)  # t_u: the first half of the steps
    return MultimodalOptions(**values)


def _pairs(items, what: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        kind, sep, value = item.partition("=")
        if not sep or not kind or not value:
            raise InvalidInputError(f"{what} must look like KIND=VALUE (e.g. edge=auto), got {item!r}")
        out.append((kind.strip(), value.strip()))
    return out


def _conditions(args):
    from .conditions import Condition

    pairs = _pairs(args.control, "--control")
    scales = args.control_scale or []
    if len(scales) > len(pairs):
        raise InvalidInputError(f"got {len(scales)} --control-scale for {len(pairs)} --control")
    conds = []
    for i, (kind, value) in enumerate(pairs):
        scale = scales[i] if i < len(scales) else None
        conds.append(Condition(kind, value, scale=scale))
    return conds


def _controlnets(args, conditions, model):
    given = dict(_pairs(args.controlnet, "--controlnet"))
    nets = {}
    for c in conditions:
        if c.kind not in nets:
            path = Path(given[c.kind]) if c.kind in given else mini_controlnet_path(c.kind)
            nets[c.kind] = load_controlnet(path, model, c.kind, given=c.kind in given)
    return nets


def run(args) -> int:
    """Handler of ``edit --method multimodal``."""
    import torch

    from .. import edit_api
    from ..io import load_image, save_image
    from .editor import edit

    if args.spec:
        raise InvalidInputError("--spec is not supported with --method multimodal yet; pass the flags")
    if getattr(args, "resize", None):
        raise InvalidInputError(
            "--resize is not supported with --method multimodal yet; resize the image first"
        )
    if not args.image or not args.out:
        raise InvalidInputError("--method multimodal needs --image IN and --out OUT.png")
    if not args.prompt or len(args.prompt) != 1:
        raise InvalidInputError("--method multimodal takes exactly one --prompt (the target prompt)")
    if args.mask and len(args.mask) > 1:
        raise InvalidInputError("--method multimodal takes at most one --mask (white = may change)")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise InvalidInputError(f"output {out} must end in .png (parameters are stored in a PNG chunk)")
    if out.exists() and not args.overwrite:
        raise InvalidInputError(f"{out} exists; pass --overwrite to replace it")
    source = args.source_prompt if args.source_prompt is not None else (args.background_prompt or "")
    options = options_from_args(args)
    conditions = _conditions(args)
    image = load_image(args.image)
    seed = 0 if args.seed is None else args.seed
    model = edit_api.load_model(args.model or "mini", args.device, args.dtype, args.allow_pickle)
    nets = _controlnets(args, conditions, model)
    result = edit(
        model, image, args.prompt[0], source, mask=args.mask[0] if args.mask else None,
        controlnets=nets, conditions=conditions, options=options,
        generator=torch.Generator().manual_seed(seed), progress=True,
    )  # fmt: skip
    meta = {
        "method": "multimodal",
        "model": args.model or "mini",
        "seed": seed,
        "prompt": args.prompt[0],
        "source_prompt": source,
        "mask": args.mask[0] if args.mask else None,
        "controls": [f"{c.kind}={c.source}" for c in conditions],
        "control_scales": args.control_scale,
        "options": dataclasses.asdict(options),
        "timings": result.timings,
    }
    path = save_image(result.image, out, overwrite=args.overwrite, text={"regionedit": json.dumps(meta)})
    if args.save_masks:
        save_image(result.mask_image, out.with_name(f"{out.stem}_mask.png"), overwrite=True)
        save_image(result.guidance_image, out.with_name(f"{out.stem}_guidance.png"), overwrite=True)
        for c, im in zip(conditions, result.control_images, strict=True):
            save_image(im, out.with_name(f"{out.stem}_control_{c.kind}.png"), overwrite=True)
    print(path)
    return 0
