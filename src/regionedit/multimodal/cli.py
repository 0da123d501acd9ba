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


def options_from_args(args, spec_options: dict | None = None) -> MultimodalOptions:
    """A spec's ``options`` (if any) overridden by the flags given; ``--steps`` alone keeps t_u at
    the first half of the steps."""
    from ..cli import option_values
    from ..edit_api import options_from_dict

    values = dict(spec_options or {})  # options_from_dict reads "steps"; flags, added later, win
    values.update(option_values(MultimodalOptions, args))
    return options_from_dict(values, MultimodalOptions)


def run(args, spec: dict | None = None, rel=lambda v: v) -> int:
    """Handler of ``edit --method multimodal``: flags (over a ``--spec``, whose paths ``rel``
    resolves) to an ``EditRequest``, run by ``edit_api``."""
    from .. import edit_api
    from ..cli import _as_list
    from .request import resolve_control, split_pairs

    spec = spec or {}
    image, out = args.image or rel(spec.get("image")), args.out or spec.get("out")
    prompts = args.prompt if args.prompt is not None else _as_list(spec.get("prompts"), "prompts")
    masks = args.mask if args.mask is not None else [rel(m) for m in _as_list(spec.get("masks"), "masks")]
    negatives = args.negative_prompt or _as_list(spec.get("negative_prompts"), "negative_prompts")
    if not image or not out:
        raise InvalidInputError("--method multimodal needs --image IN and --out OUT.png (or both in --spec)")
    if len(prompts) != 1:
        raise InvalidInputError("--method multimodal takes exactly one --prompt (the target prompt)")
    if len(masks) > 1:
        raise InvalidInputError("--method multimodal takes at most one --mask (white = may change)")
    if args.control is not None:  # the flags replace the spec's controls with their scales
        controls = list(args.control)
        pairs = split_pairs(controls, "--control")  # flag-worded errors before anything is read
        scales = list(args.control_scale or [])
    else:
        pairs = split_pairs(_as_list(spec.get("controls"), "controls"), "a spec control")
        controls = [f"{k}={resolve_control(v, rel)}" for k, v in pairs]
        scales = args.control_scale if args.control_scale is not None else spec.get("control_scales", [])
    if len(scales) > len(controls):
        raise InvalidInputError(f"got {len(scales)} --control-scale for {len(controls)} --control")
    kinds = {k for k, _ in pairs}
    nets = {k: rel(v) for k, v in spec.get("controlnets", {}).items() if k in kinds}
    nets.update(split_pairs(args.controlnet, "--controlnet"))
    source = args.source_prompt if args.source_prompt is not None else args.background_prompt
    request = edit_api.EditRequest(
        image=image,
        masks=list(masks),
        prompts=list(prompts),
        negative_prompts=list(negatives),  # refused by the method, not ignored
        background_prompt=source if source is not None else spec.get("background_prompt", ""),
        method="multimodal",
        seed=args.seed if args.seed is not None else int(spec.get("seed", 0)),
        options=options_from_args(args, spec.get("options")),
        model=args.model or spec.get("model", "mini"),
        resize=args.resize or spec.get("resize"),
        controls=controls,
        control_scales=list(scales),
        controlnets=nets,
    )
    request.check_output(out, args.overwrite)
    request.check()  # read and check inputs before the slow model load
    model = edit_api.load_model(request.model, args.device, args.dtype, args.allow_pickle)
    result = edit_api.run(model, request, progress=True)
    print(edit_api.save_result(result, request, out, overwrite=args.overwrite, save_masks=args.save_masks))
    return 0
