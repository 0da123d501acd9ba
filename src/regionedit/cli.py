"""Command line: a thin adapter over the public API.

Every user error prints one line on stderr and exits with status 2, writing nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from .errors import InvalidInputError, RegionEditError
from .flags import add_model_flags, add_option_flags, flag_names, load_arguments, option_values
from .version import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit 2 with one line, as for every other user error
        self.exit(2, f"regionedit: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
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
            "--background-prompt 'a green triangle and a white circle on a gray background' --out out.png"
        ),
    )
    e.add_argument("--spec", help="JSON file with image, masks, prompts, background_prompt, options, ...")
    e.add_argument("--image", help="input image")
    e.add_argument("--mask", action="append", default=None, help="region mask (white = edit); repeat")
    e.add_argument("--prompt", action="append", default=None, help="prompt of the matching --mask; repeat")
    e.add_argument(
        "--negative-prompt",
        action="append",
        default=None,
        help="negative prompt: once for all regions, or once per region",
    )
    e.add_argument("--background-prompt", help="caption of the input image")
    add_model_flags(e, default=None)
    e.add_argument(
        "--method", default=None, choices=["lomoe", "multimodal"], help="editing method (default lomoe)"
    )
    e.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    e.add_argument("--out", help="output PNG")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output")
    e.add_argument("--save-masks", action="store_true", help="also write OUT stem + _mask_<i>.png")
    e.add_argument(
        "--resize",
        choices=["pad", "crop"],
        default=None,
        help="fit sizes that are not a multiple of the VAE factor: pad (edges replicated, output "
        "cropped back to the input size) or crop (centre crop to the lower multiple)",
    )
    add_edit_flags(e)

    s = sub.add_parser("shapes", help="generate a shapes-world scene")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--objects", type=int, default=3)
    s.add_argument("--size", type=int, default=128, help="image side (default 128, the mini model's)")
    s.add_argument("--out", required=True)

    d = sub.add_parser("demo", help="edit three objects of a shapes scene with a mini model")
    d.add_argument("--out", default="demo-out")
    d.add_argument(
        "--model", default="mini", help="mini (default), mini-flow, or a shapes-world model folder"
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--steps", type=int, default=None)

    t = sub.add_parser("train-mini", help="train (or resume) the shapes-world mini model")
    t.add_argument("--out", required=True)
    t.add_argument(
        "--family",
        choices=("unet", "flow"),
        default="unet",
        help="unet: the Stable Diffusion-architecture mini model (default); flow: the FLUX-architecture one",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this long")
    t.add_argument(
        "--flow-steps", type=int, default=None, help="flow family: transformer steps (default 12000)"
    )
    t.add_argument(
        "--flow-lr", type=float, default=None, help="flow family: peak learning rate (default 5e-4)"
    )
    t.add_argument(
        "--flow-train-shift",
        type=float,
        default=None,
        help="flow family: shift the training sigmas towards noise as sampling does (default 1: none)",
    )
    t.add_argument("--vae-steps", type=int, default=None)
    t.add_argument("--unet-steps", type=int, default=None)
    t.add_argument("--num-scenes", type=int, default=None)
    t.add_argument("--decoder-steps", type=int, default=None)
    t.add_argument(
        "--decoder-composite",
        type=float,
        default=None,
        help="share of decoder samples pasted from two scenes (trains a local decoder; default 0)",
    )
    t.add_argument("--decoder-batch", type=int, default=None, help="decoder fine-tune batch (default 16)")
    t.add_argument("--init-from", default=None, help="start from a saved pipeline folder, or 'mini'")
    t.add_argument("--max-objects", type=int, default=None, help="objects per training scene: 1 to this")
    t.add_argument("--unet-lr", type=float, default=None, help="peak UNet learning rate (default 1e-3)")
    t.add_argument("--unet-lr-min", type=float, default=None, help="end of its cosine (default 1e-4)")
    t.add_argument(
        "--image-size", type=int, default=64, help="scene size in pixels (default 64: 16x16 latents)"
    )
    t.add_argument(
        "--unet-plain-levels",
        type=int,
        default=0,
        help="outer UNet levels without attention; with --init-from a smaller UNet is grown by them",
    )
    t.add_argument(
        "--partial-caption", type=float, default=None, help="share of captions naming a subset of the objects"
    )
    t.add_argument(
        "--plain-background",
        type=float,
        default=None,
        help="share of scenes on a uniform random colour, captioned without a background",
    )
    et = sub.add_parser(
        "tune-mini",
        help="edit-aimed fine-tune of a mini model's denoiser (the recipe's last stage), resumable",
        description="Fine-tune BASE's UNet or transformer on LoMOE region-branch views of edit pairs, "
        "then write OUT/pipeline with it mixed (1 - mix)·base + mix·tuned.",
    )
    et.add_argument("--out", required=True)
    et.add_argument(
        "--base", default="mini", help="pipeline folder to start from, or mini / mini-flow (default: mini)"
    )
    et.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this long")
    from .shapes.edit_tune_config import EditTuneConfig

    add_option_flags(et, EditTuneConfig, "edit-tune options (defaults: the shipped run's)")
    tj = sub.add_parser("train-judge", help="train the shapes-world judge; prints held-out accuracy")
    tj.add_argument("--out", required=True, help="safetensors file to write")
    tj.add_argument("--steps", type=int, default=800)
    tj.add_argument("--seed", type=int, default=0)
    ev = sub.add_parser("eval-mini", help="measure a mini model: VAE PSNR and text-to-image binding")
    ev.add_argument("--model", default="mini")
    ev.add_argument("--n", type=int, default=100, help="text-to-image prompts")
    ev.add_argument(
        "--vae-n", type=int, default=200, help="held-out scenes for the VAE (and pairs for its locality)"
    )
    ev.add_argument("--steps", type=int, default=25)
    ev.add_argument("--guidance-scale", type=float, default=5.0)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default=None, help="also write the results as JSON here")
    from .batch.cli import add_parser as add_batch
    from .bench.cli import add_parser as add_bench
    from .ui.cli import add_parser as add_serve

    for add in (add_serve, add_bench, add_batch):  # their heavy imports stay inside the handlers
        name, handler = add(sub)
        COMMANDS[name] = handler
    return p


def add_edit_flags(parser) -> None:
    """The option flags of ``regionedit edit``: both methods' (a shared name keeps one meaning and
    one destination; unset, each method uses its model's setting), then the execution ones."""
    from .execution import ExecutionOptions
    from .lomoe.options import LoMOEOptions
    from .multimodal.options import MultimodalOptions

    add_option_flags(parser, LoMOEOptions, "LoMOE options (default: the model's settings, else the paper's)")
    g = parser.add_argument_group("multimodal (--method multimodal)")
    g.add_argument(
        "--source-prompt", default=None, help="caption of the input (default: --background-prompt or '')"
    )
    g.add_argument(
        "--control",
        action="append",
        default=None,
        metavar="KIND=PATH|auto",
        help="layout condition: edge=PATH|auto, scribble=PATH|auto, pose=KEYPOINTS.json|SKELETON.png, "
        "seg=PATH; repeat for several",
    )
    g.add_argument(
        "--control-scale", action="append", type=float, default=None, help="scale of each --control, in order"
    )
    g.add_argument(
        "--controlnet",
        action="append",
        default=None,
        metavar="KIND=DIR",
        help="diffusers ControlNet folder for a kind (default: the model's, where it ships them)",
    )
    add_option_flags(
        parser, MultimodalOptions, "multimodal options (default: the model's settings, else the method's)"
    )
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


def edit_request(args):
    """``regionedit edit``'s flags over a ``--spec`` file's fields, as one :class:`EditRequest`.

    A flag wins over the file's field; option flags override the file's options one by one.
    Paths in the file are relative to it.
    """
    from .edit_api import EditRequest
    from .execution import ExecutionOptions
    from .multimodal.request import resolve_control, split_pairs
    from .options import option_class

    spec, base = ({}, Path.cwd()) if args.spec is None else _load_spec(args.spec, args.method)

    def rel(v):
        return v if args.spec is None or Path(v).is_absolute() else str(base / v)

    method = args.method or spec.get("method", "lomoe")
    cls = option_class(method)
    other = option_class("multimodal" if method == "lomoe" else "lomoe")
    own = option_values(cls, args)
    foreign = sorted(set(flag_names(option_values(other, args))) - set(flag_names(own)))
    if method == "lomoe":
        given = (("--source-prompt", args.source_prompt), ("--control", args.control),
                 ("--control-scale", args.control_scale), ("--controlnet", args.controlnet))  # fmt: skip
        foreign += [flag for flag, value in given if value is not None]
        if foreign:
            raise InvalidInputError(
                f"{', '.join(foreign)}: need the multimodal method; add --method multimodal"
            )
    elif foreign:
        raise InvalidInputError(
            f"{', '.join(foreign)}: LoMOE options, not the multimodal method's; drop them"
        )
    options = {**spec.get("options", {}), **own}
    if "mask_estimate" in own and "mask_estimate" in spec.get("options", {}):
        options["mask_estimate"] = {**spec["options"]["mask_estimate"], **own["mask_estimate"]}
    execution = {**spec.get("execution", {}), **option_values(ExecutionOptions, args)}
    lomoe_only = sorted(set(execution) & {"chunk_size", "reference_maps"})
    if method == "multimodal" and lomoe_only:
        raise InvalidInputError(
            f"{', '.join(lomoe_only)}: LoMOE execution settings; the multimodal method has none"
        )

    image = args.image or (rel(spec["image"]) if "image" in spec else None)
    out = args.out or spec.get("out")
    if not image:
        raise InvalidInputError("no input image: pass --image or give 'image' in --spec")
    if not out:
        raise InvalidInputError("no output file: pass --out (or give 'out' in --spec)")
    masks = args.mask if args.mask is not None else [rel(m) for m in _as_list(spec.get("masks"))]
    prompts = args.prompt if args.prompt is not None else _as_list(spec.get("prompts"))
    negatives = (
        args.negative_prompt if args.negative_prompt is not None else _as_list(spec.get("negative_prompts"))
    )
    background = (
        args.background_prompt if args.background_prompt is not None else spec.get("background_prompt")
    )
    if method == "multimodal":
        background = args.source_prompt if args.source_prompt is not None else background
        background = "" if background is None else background
    elif background is None:
        raise InvalidInputError("no background prompt: pass --background-prompt (the input's caption)")
    if args.control is not None:  # the flags replace the spec's controls with their scales
        controls = list(args.control)
        pairs = split_pairs(controls, "--control")  # flag-worded errors before anything is read
        scales = list(args.control_scale or [])
    else:
        pairs = split_pairs(_as_list(spec.get("controls")), "a spec control")
        controls = [f"{k}={resolve_control(v, rel)}" for k, v in pairs]
        scales = args.control_scale if args.control_scale is not None else spec.get("control_scales", [])
    if len(scales) > len(controls):
        raise InvalidInputError(f"got {len(scales)} --control-scale for {len(controls)} --control")
    kinds = {k for k, _ in pairs}
    nets = {k: rel(v) for k, v in spec.get("controlnets", {}).items() if k in kinds}
    nets.update(split_pairs(args.controlnet, "--controlnet"))
    request = EditRequest(
        image=image,
        masks=list(masks),
        prompts=list(prompts),
        negative_prompts=list(negatives),
        background_prompt=background,
        method=method,
        seed=args.seed if args.seed is not None else int(spec.get("seed", 0)),
        options=options,
        model=args.model or spec.get("model", "mini"),
        resize=args.resize or spec.get("resize"),
        controls=controls,
        control_scales=list(scales),
        controlnets=nets,
        execution=execution,
    )
    return request, out


def run_edit(args) -> int:
    from . import edit_api

    request, out = edit_request(args)
    request.check_output(out, args.overwrite)
    model, prepared = edit_api.prepare_and_load(request, **load_arguments(args))
    result = edit_api.run(model, prepared, progress=True)
    path = edit_api.save_result(
        result, request, prepared, out, overwrite=args.overwrite, save_masks=args.save_masks
    )
    print(path)
    return 0


def run_shapes(args) -> int:
    from .shapes.world import make_scene, write_scene

    if not 1 <= args.objects <= 7:
        raise InvalidInputError(f"--objects must be in 1..7, got {args.objects}")
    if args.size < 32 or args.size % 8:
        raise InvalidInputError(f"--size must be a multiple of 8 and >= 32, got {args.size}")
    scene = make_scene(args.seed, args.objects, size=args.size)
    print(write_scene(scene, args.out))
    return 0


def run_demo(args) -> int:
    from .demo import run_demo as demo
    from .edit_api import load_model

    report = demo(args.out, seed=args.seed, steps=args.steps, model=load_model(args.model))
    print(f"wrote {args.out}/comparison.png and report.json — {report['summary']}")
    return 0


def run_train_flow(args) -> int:
    from .shapes.train_flow import FlowConfig, saved_flow_config, train_flow

    names = {"num_scenes": "num_scenes", "max_objects": "max_objects", "partial_caption": "partial_caption",
             "plain_background": "plain_background", "flow_steps": "steps", "flow_lr": "lr",
             "flow_train_shift": "train_shift"}  # fmt: skip
    unet_only = ("vae_steps", "unet_steps", "decoder_steps", "decoder_composite", "decoder_batch", "init_from",
                 "unet_lr", "unet_lr_min")  # fmt: skip
    given = [f"--{k.replace('_', '-')}" for k in unet_only if getattr(args, k) is not None]
    if given or args.image_size != 64 or args.unet_plain_levels:
        raise InvalidInputError(
            f"{', '.join(given) or '--image-size/--unet-plain-levels'} apply to --family unet only"
        )
    overrides = {
        field: getattr(args, flag) for flag, field in names.items() if getattr(args, flag) is not None
    }
    base = saved_flow_config(args.out) or FlowConfig(seed=args.seed)  # a run goes on with its own plan
    result = train_flow(args.out, dataclasses.replace(base, **overrides), args.max_minutes)
    print(result if result else f"stopped early; run the same command again to resume from {args.out}")
    return 0


def run_train(args) -> int:
    if args.family == "flow":
        return run_train_flow(args)
    if any(getattr(args, k) is not None for k in ("flow_steps", "flow_lr", "flow_train_shift")):
        raise InvalidInputError("--flow-steps, --flow-lr and --flow-train-shift apply to --family flow only")
    from .shapes.model import MiniConfig
    from .shapes.train import TrainConfig, train_mini

    keys = (
        "vae_steps",
        "unet_steps",
        "num_scenes",
        "decoder_steps",
        "decoder_composite",
        "decoder_batch",
        "init_from",
        "max_objects",
        "partial_caption",
        "plain_background",
        "unet_lr",
        "unet_lr_min",
    )
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    cfg = dataclasses.replace(TrainConfig(seed=args.seed), **overrides)
    model_cfg = MiniConfig(image_size=args.image_size, unet_plain_levels=args.unet_plain_levels)
    result = train_mini(args.out, cfg, model_cfg, max_minutes=args.max_minutes)
    print(result if result else f"stopped early; run the same command again to resume from {args.out}")
    return 0


def run_tune_mini(args) -> int:
    from .shapes.edit_tune import EditTuneConfig, edit_tune

    cfg = EditTuneConfig(**option_values(EditTuneConfig, args))
    result = edit_tune(args.out, args.base, cfg, max_minutes=args.max_minutes)
    print(result if result else f"stopped early; run the same command again to resume from {args.out}")
    return 0


def run_train_judge(args) -> int:
    from .shapes.judge import train_judge

    if args.steps < 1:
        raise InvalidInputError(f"--steps must be >= 1, got {args.steps}")
    print(json.dumps(train_judge(args.out, steps=args.steps, seed=args.seed), indent=2))
    return 0


def run_eval_mini(args) -> int:
    from .io import write_text_atomic
    from .models.loading import load
    from .shapes.evaluate import decoder_locality_psnr, text_to_image_accuracy, vae_psnr
    from .shapes.judge import load_judge

    model = load(args.model)
    res = {"model": args.model, "vae_psnr_db": vae_psnr(model, args.vae_n)}
    res["decoder_locality_psnr_db"] = decoder_locality_psnr(model, args.vae_n)
    res["text_to_image"] = text_to_image_accuracy(
        model, load_judge(), args.n, args.steps, args.guidance_scale, args.seed
    )
    text = json.dumps(res, indent=2)
    if args.out:
        write_text_atomic(args.out, text)
    print(text)
    return 0


COMMANDS = {
    "edit": run_edit,
    "shapes": run_shapes,
    "demo": run_demo,
    "train-mini": run_train,
    "tune-mini": run_tune_mini,
    "eval-mini": run_eval_mini,
    "train-judge": run_train_judge,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
