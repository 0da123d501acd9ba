"""``regionedit edit --method multimodal``: the flags and the runner, kept out of ``cli.py``.

Flags shared with LoMOE (``--steps``, ``--guidance-scale``, ``--learning-rate``,
``--mask-threshold``) keep one meaning and one destination; unset, each method uses its own
spec default.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..errors import InvalidInputError
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


def run(args) -> int:
    """Handler of ``edit --method multimodal``: flags to an ``EditRequest``, run by ``edit_api``."""
    from .. import edit_api
    from .request import split_pairs

    if args.spec:
        raise InvalidInputError("--spec is not supported with --method multimodal yet; pass the flags")
    if not args.image or not args.out:
        raise InvalidInputError("--method multimodal needs --image IN and --out OUT.png")
    if not args.prompt or len(args.prompt) != 1:
        raise InvalidInputError("--method multimodal takes exactly one --prompt (the target prompt)")
    if args.mask and len(args.mask) > 1:
        raise InvalidInputError("--method multimodal takes at most one --mask (white = may change)")
    split_pairs(args.control, "--control")  # flag-worded errors before anything is read
    if len(args.control_scale or []) > len(args.control or []):
        raise InvalidInputError(
            f"got {len(args.control_scale)} --control-scale for {len(args.control or [])} --control"
        )
    request = edit_api.EditRequest(
        image=args.image,
        masks=list(args.mask or []),
        prompts=list(args.prompt),
        background_prompt=args.source_prompt
        if args.source_prompt is not None
        else (args.background_prompt or ""),
        method="multimodal",
        seed=0 if args.seed is None else args.seed,
        options=options_from_args(args),
        model=args.model or "mini",
        resize=getattr(args, "resize", None),
        controls=list(args.control or []),
        control_scales=list(args.control_scale or []),
        controlnets=dict(split_pairs(args.controlnet, "--controlnet")),
    )
    request.check_output(args.out, args.overwrite)
    request.check()  # read and check inputs before the slow model load
    model = edit_api.load_model(request.model, args.device, args.dtype, args.allow_pickle)
    result = edit_api.run(model, request, progress=True)
    print(
        edit_api.save_result(result, request, args.out, overwrite=args.overwrite, save_masks=args.save_masks)
    )
    return 0
