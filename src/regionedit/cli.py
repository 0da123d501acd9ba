"""Command line: a thin adapter over the public API.

Every user error prints one line on stderr and exits with status 2, writing nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import methods
from .errors import InvalidInputError, InvalidOptionError, RegionEditError
from .execution import ExecutionOptions
from .flags import (
    add_method_flags,
    add_model_flags,
    add_option_flags,
    foreign_flags,
    in_flag_words,
    load_arguments,
    option_values,
)
from .version import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit 2 with one line, as for every other user error
        self.exit(2, f"regionedit: error: {message}\n")


# Request fields that some methods take: field -> (flag, argparse keywords). Each flag goes into
# the --help group of the method that takes it.
REQUEST_FLAGS = {
    "negative_prompts": ("--negative-prompt", dict(action="append", metavar="TEXT",
                         help="negative prompt: once for all regions, or once per region")),
    "resize": ("--resize", dict(choices=["pad", "crop"],
               help="fit sizes that are not a multiple of the model's: pad (edges replicated, output cropped "
               "back to the input size) or crop (centre crop to the lower multiple)")),
    "controls": ("--control", dict(action="append", metavar="KIND=PATH|auto",
                 help="layout condition: edge=PATH|auto, scribble=PATH|auto, pose=KEYPOINTS.json|SKELETON.png, "
                 "seg=PATH (auto: drawn from the input's own outlines); repeat for several")),
    "control_scales": ("--control-scale", dict(action="append", type=float, metavar="X",
                       help="ControlNet scale of each --control, in order")),
    "controlnets": ("--controlnet", dict(action="append", metavar="KIND=DIR",
                    help="diffusers ControlNet folder for a kind (default: the model's, where it ships them)")),
}  # fmt: skip


def build_parser(settings: dict | None = None) -> argparse.ArgumentParser:
    """The command line; ``settings`` (a model's recommended settings) are the defaults ``edit --help`` shows."""
    p = _Parser(prog="regionedit", description="Mask-localized multi-object image editing.")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="log details, library warnings and loading bars"
    )
    p.add_argument("--version", action="version", version=f"regionedit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser(
        "edit",
        help="edit regions of an image",
        description=(
            "Edit several regions of an image in one pass. Example: regionedit edit --image in.png "
            "--mask m1.png --prompt 'a blue square' --mask m2.png --prompt 'a red circle' "
            "--background-prompt 'a green triangle and a white circle on a gray background' --out out.png. "
            "Option defaults shown are the settings of --model (mini unless given)."
        ),
    )
    e.add_argument("--spec", help="JSON file with image, masks, prompts, background_prompt, options, ...")
    e.add_argument("--image", help="input image")
    e.add_argument("--mask", action="append", default=None, help="region mask (white = edit); repeat")
    e.add_argument("--prompt", action="append", default=None, help="prompt of the matching --mask; repeat")
    e.add_argument("--region", action="append", default=None, metavar="WORDS=PROMPT",
                   help="a region found by words instead of a mask file, with its prompt, e.g. "
                   "'the red triangle=a blue circle'; repeat, beside --mask/--prompt pairs; regions with the same "
                   "words take different objects, left to right")  # fmt: skip
    e.add_argument("--grow", default=None, metavar="N|box|box+N",
                   help="grow each --region's mask by N pixels, to its bounding box, or both (a new shape needs "
                   "room; default: as found)")  # fmt: skip
    e.add_argument("--detector", default=None, metavar="ID|DIR",
                   help="find --region words with this zero-shot detector (Grounding DINO, OWLv2) instead of "
                   "the model's attention")  # fmt: skip
    e.add_argument("--segmenter", default=None, metavar="ID|DIR",
                   help="cut the detector's boxes out with this segmenter (SAM, SAM-HQ)")  # fmt: skip
    e.add_argument("--background-prompt", "--source-prompt", dest="background_prompt",
                   help="caption of the input image (the source prompt)")  # fmt: skip
    add_model_flags(e, default=None)
    e.add_argument("--method", default=None, choices=methods.names(),
                   help=f"editing method (default {methods.DEFAULT})")  # fmt: skip
    e.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    e.add_argument("--out", help="output PNG")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output")
    e.add_argument("--save-masks", action="store_true",
                   help="also write the masks as used beside the output (OUT stem + _mask_<i>.png, ...)")  # fmt: skip
    add_edit_flags(e, settings)

    m = sub.add_parser(
        "mask",
        help="a mask from words, clicks or a box",
        description="Find an object and write its mask (white = the object). Pixel coordinates of the "
        "input image, origin top-left. Example: regionedit mask --image scene/image.png --words 'the red "
        "triangle' --grow box --out mask.png",
    )
    m.add_argument("--image", required=True, help="input image")
    what = m.add_mutually_exclusive_group(required=True)
    what.add_argument("--words", help="what names the object ('the red triangle')")
    what.add_argument("--point", action="append", metavar="X,Y", help="a click on the object; repeat")
    what.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box around the object")
    m.add_argument("--negative-point", action="append", default=[], metavar="X,Y",
                   help="a click off the object (with --point); repeat")  # fmt: skip
    m.add_argument("--caption", default=None, help="the image's caption: places the words better")
    add_model_flags(m)
    m.add_argument("--detector", default=None, metavar="ID|DIR",
                   help="find the words with this zero-shot detector (Grounding DINO, OWLv2) instead of the model")  # fmt: skip
    m.add_argument("--segmenter", default=None, metavar="ID|DIR",
                   help="cut boxes and clicks out with this segmenter (SAM, SAM-HQ) instead of GrabCut")  # fmt: skip
    m.add_argument(
        "--grow",
        default=None,
        metavar="N|box|box+N",
        help="grow the mask by N pixels, to its bounding box, or both (default: as found)",
    )
    m.add_argument("--all", action="store_true", help="every instance the words name: OUT stem + _<i>.png")
    m.add_argument("--min-score", type=float, default=None,
                   help="below this score the words count as not found (default: the finder's own)")  # fmt: skip
    m.add_argument(
        "--seed", type=int, default=0, help="seed of the noise the attention is read under (default 0)"
    )
    m.add_argument("--out", required=True, help="output PNG")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output")

    d = sub.add_parser("demo", help="edit three objects of a shapes scene with a mini model")
    d.add_argument(
        "--out", default="demo-out", help="folder for the pictures and report.json (default demo-out)"
    )
    d.add_argument(
        "--model", default="mini", help="mini (default), mini-flow, or a shapes-world model folder"
    )
    d.add_argument("--seed", type=int, default=0, help="scene and edit seed (default 0)")
    d.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's setting)")
    from .batch.cli import add_parser as add_batch
    from .bench.cli import add_parser as add_bench
    from .bench.plan_cli import add_parser as add_plan
    from .shapes.cli import add_parsers as add_shapes
    from .ui.cli import add_parser as add_serve

    COMMANDS.update(add_shapes(sub))
    for add in (add_serve, add_bench, add_batch, add_plan):  # their heavy imports stay inside the handlers
        name, handler = add(sub)
        COMMANDS[name] = handler
    return p


def add_edit_flags(parser, settings: dict | None = None) -> None:
    """The option flags of ``regionedit edit``: every method's, each in its group (a name several
    methods share is one flag), the request fields some methods take, then the execution ones."""
    groups = add_method_flags(parser, settings)
    for field, (flag, kwargs) in REQUEST_FLAGS.items():
        takers = methods.takers(field)
        group = groups[takers[0]] if len(takers) == 1 else parser
        group.add_argument(flag, dest=field, default=None, **kwargs)
    add_option_flags(parser, ExecutionOptions, "execution (memory and time; never the result)")


def _load_spec(path: str, method: str | None) -> tuple[dict, Path]:
    """The spec, checked as for ``method`` when the flag gives one (the flag wins over the file)."""
    from .edit_api import check_spec
    from .io import read_json

    p = Path(path)
    spec = read_json(p, "spec")
    if method and isinstance(spec, dict):
        spec = {**spec, "method": method}
    return check_spec(spec, f"spec file {p}"), p.parent


def _as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _refuse_foreign(method, args) -> None:
    """Flags of another method's options or request fields are refused, not ignored, naming the
    method that takes them."""
    owners = foreign_flags(method, args)  # flag -> the methods that take it
    for field, (flag, _) in REQUEST_FLAGS.items():
        if getattr(args, field) is not None and field not in method.request_fields:
            owners[flag] = methods.takers(field)
    by_method: dict[str, list[str]] = {}
    for flag, names in owners.items():
        by_method.setdefault(" or ".join(names), []).append(flag)
    parts = [
        f"{', '.join(flags)}: need the {who} method; add --method {who.split()[0]}"
        for who, flags in by_method.items()
    ]
    unused = sorted(set(option_values(ExecutionOptions, args)) - method.execution_fields)
    if unused:
        parts.append(
            f"{', '.join('--' + n.replace('_', '-') for n in unused)}: not used by the {method.name} method"
        )
    if parts:
        raise InvalidInputError("; ".join(parts))


def edit_request(args):
    """``regionedit edit``'s flags over a ``--spec`` file's fields, as one :class:`EditRequest`.

    A flag wins over the file's field; option flags override the file's options one by one.
    Paths in the file are relative to it.
    """
    from .edit_api import EditRequest, masks_from_json
    from .masks.query import MaskQuery
    from .multimodal.request import parse_control, resolve_control, split_pairs

    spec, base = ({}, Path.cwd()) if args.spec is None else _load_spec(args.spec, args.method)

    def rel(v):
        return v if args.spec is None or Path(v).is_absolute() else str(base / v)

    try:
        method = methods.get(args.method or spec.get("method"))
    except InvalidOptionError as exc:
        raise InvalidInputError(str(exc)) from None
    _refuse_foreign(method, args)
    own = option_values(method.options_class, args)
    options = {**spec.get("options", {}), **own}
    for name, value in own.items():  # nested options merge with the file's field by field
        if isinstance(value, dict) and isinstance(spec.get("options", {}).get(name), dict):
            options[name] = {**spec["options"][name], **value}
    execution = {**spec.get("execution", {}), **option_values(ExecutionOptions, args)}

    image = args.image or (rel(spec["image"]) if "image" in spec else None)
    out = args.out or spec.get("out")
    if not image:
        raise InvalidInputError("no input image: pass --image or give 'image' in --spec")
    if not out:
        raise InvalidInputError("no output file: pass --out (or give 'out' in --spec)")
    masks = list(args.mask) if args.mask is not None else masks_from_json(spec.get("masks"), rel, "spec mask")
    prompts = list(args.prompt) if args.prompt is not None else _as_list(spec.get("prompts"))
    for item in args.region or []:  # found by words when the model is loaded
        words, sep, prompt = item.partition("=")
        if not sep or not words.strip() or not prompt.strip():
            raise InvalidInputError(f"--region must look like WORDS=PROMPT (e.g. 'the red triangle=a blue circle'), "
                                    f"got {item!r}")  # fmt: skip
        masks.append(MaskQuery(words=words.strip(), grow=args.grow))
        prompts.append(prompt.strip())
    if args.grow is not None and not args.region:
        raise InvalidInputError("--grow applies to --region masks; give --region WORDS=PROMPT")
    negatives = (
        args.negative_prompts if args.negative_prompts is not None else _as_list(spec.get("negative_prompts"))
    )
    background = (
        args.background_prompt if args.background_prompt is not None else spec.get("background_prompt")
    )
    if background is None and method.caption_required:
        raise InvalidInputError("no background prompt: pass --background-prompt (the input's caption)")
    if args.controls is not None:  # the flags replace the spec's controls with their scales
        controls = list(args.controls)
        pairs = split_pairs(controls, "--control")  # flag-worded errors before anything is read
        scales = list(args.control_scales or [])
    else:
        pairs = split_pairs(_as_list(spec.get("controls")), "a spec control")
        controls = [f"{k}={resolve_control(v, rel)}" for k, v in pairs]
        scales = args.control_scales if args.control_scales is not None else spec.get("control_scales", [])
    if len(scales) > len(controls):
        raise InvalidInputError(f"got {len(scales)} --control-scale for {len(controls)} --control")
    kinds = {parse_control(c).kind for c in controls}  # "2:edge=...": region 2's edge map
    nets = {k: rel(v) for k, v in spec.get("controlnets", {}).items() if k in kinds}
    nets.update(split_pairs(args.controlnets, "--controlnet"))
    request = EditRequest(
        image=image,
        masks=list(masks),
        prompts=list(prompts),
        negative_prompts=list(negatives),
        background_prompt="" if background is None else background,
        method=method.name,
        seed=args.seed if args.seed is not None else int(spec.get("seed", 0)),
        options=options,
        model=args.model or spec.get("model", "mini"),
        resize=args.resize or spec.get("resize"),
        controls=controls,
        control_scales=list(scales),
        controlnets=nets,
        execution=execution,
        detector=args.detector or spec.get("detector"),
        segmenter=args.segmenter or spec.get("segmenter"),
    )
    return request, out


def run_edit(args) -> int:
    from . import edit_api

    request, out = edit_request(args)
    request.check_output(out, args.overwrite)
    try:
        model, prepared = edit_api.prepare_and_load(request, **load_arguments(args))
    except InvalidOptionError as exc:  # name the options as the flags the user typed
        cls = methods.get(request.method).options_class
        raise InvalidOptionError(in_flag_words(str(exc), cls, option_values(cls, args))) from None
    result = edit_api.run(model, prepared, progress=True)
    path = edit_api.save_result(
        result, request, prepared, out, overwrite=args.overwrite, save_masks=args.save_masks
    )
    print(path)
    return 0


def run_mask(args) -> int:
    import torch

    from . import masks
    from .io import load_image
    from .masks.query import MaskQuery, apply_grow, find, parse_box, parse_pair

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise InvalidInputError(f"--out {out} must end in .png")
    image = load_image(args.image)
    if out.resolve() == Path(args.image).resolve():
        raise InvalidInputError(f"--out {out} is the input image; write the mask to another file")
    query = MaskQuery(
        words=args.words,
        points=tuple(parse_pair(p, "--point") for p in args.point or []),
        negative_points=tuple(parse_pair(p, "--negative-point") for p in args.negative_point),
        box=parse_box(args.box) if args.box else None,
        grow=args.grow,
    )
    masks.check_points(query.points, (image.height, image.width))
    masks.check_points(query.negative_points, (image.height, image.width), "negative point")
    targets = [out]
    model = None
    if args.words and args.detector is None:
        from .models.loading import load

        model = load(args.model, **load_arguments(args))
    generator = torch.Generator().manual_seed(args.seed)
    if args.all or args.min_score is not None:
        if not args.words:
            raise InvalidInputError("--all and --min-score apply to --words")
        from .masks.segmenters import cached_detector, cached_segmenter

        detector = cached_detector(args.detector) if args.detector else None
        segmenter = cached_segmenter(args.segmenter) if args.segmenter else None
        found = masks.from_words(model, image, args.words, args.caption, detector=detector, segmenter=segmenter,
                                 all_instances=True, min_score=args.min_score, generator=generator)  # fmt: skip
        found = found if args.all else found[:1]
        found = [masks.FoundMask(apply_grow(f.mask, args.grow), f.score, f.how) for f in found]
        if args.all:
            targets = [out.with_name(f"{out.stem}_{i}.png") for i in range(1, len(found) + 1)]
    else:
        found = [find(query, image, model, args.caption, args.detector, args.segmenter, generator)]
    for path in targets:
        if path.exists() and not args.overwrite:
            raise InvalidInputError(f"{path} exists; pass --overwrite to replace it")
    for f, path in zip(found, targets, strict=True):
        masks.save_mask(f, path, overwrite=True)
        print(f"{path}  score {f.score:.2f} ({f.how}), box {f.box}")
    return 0


def run_demo(args) -> int:
    from .demo import run_demo as demo
    from .models.loading import load

    report = demo(args.out, seed=args.seed, steps=args.steps, model=load(args.model))
    print(f"wrote {args.out}/comparison.png and report.json — {report['summary']}")
    return 0


COMMANDS = {
    "edit": run_edit,
    "mask": run_mask,
    "demo": run_demo,
}  # the other commands' handlers join in build_parser


def _help_settings(argv: list[str]) -> dict | None:
    """When ``--help`` is asked for, the recommended settings of the model it names (default mini),
    so that the defaults shown are the ones an edit would use; None otherwise."""
    if not {"-h", "--help"} & set(argv):
        return None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default="mini")
    known, _ = pre.parse_known_args(argv)
    from .models.loading import describe

    try:
        return describe(known.model).settings
    except RegionEditError:
        return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_help_settings(argv)).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return COMMANDS[args.command](args)
    except RegionEditError as exc:
        print(f"regionedit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("regionedit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (``regionedit bench report RUN | head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # what a shell reports for a writer killed by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
