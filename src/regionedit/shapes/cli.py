"""The shapes world's commands: ``regionedit shapes``, ``train-mini``, ``tune-mini``, ``eval-mini``,
``train-judge``. A front end like ``batch/cli.py``: heavy imports stay inside the handlers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import InvalidInputError
from ..flags import add_option_flags, option_values

# train-mini flags of one family only: flag -> the family that takes it
UNET_ONLY = ("vae_steps", "unet_steps", "decoder_steps", "decoder_composite", "decoder_batch", "init_from",
             "unet_lr", "unet_lr_min")  # fmt: skip
FLOW_ONLY = ("flow_steps", "flow_lr", "flow_train_shift")


def add_parsers(sub) -> dict:
    """Add the shapes world's subcommands to ``sub``; returns name -> handler."""
    s = sub.add_parser("shapes", help="draw a shapes-world scene with its masks and caption")
    s.add_argument(
        "--seed", type=int, default=0, help="scene seed: the same seed draws the same scene (default 0)"
    )
    s.add_argument("--objects", type=int, default=3, help="objects in the scene, 1..7 (default 3)")
    s.add_argument(
        "--size", type=int, default=128, help="image side in pixels (default 128, the mini models')"
    )
    s.add_argument("--target", action="append", default=None, metavar="I=WORDS",
                   help="also draw the scene with object I as WORDS (e.g. 1='blue circle'): target.png, its edge "
                   "map target_edges.png and the target caption in scene.json; repeat for several")  # fmt: skip
    s.add_argument("--out", required=True, help="folder for image.png, mask_<i>.png and scene.json")

    t = sub.add_parser("train-mini", help="train (or resume) a shapes-world mini model")
    t.add_argument("--out", required=True, help="run folder: checkpoints, logs and the exported pipeline/")
    t.add_argument("--family", choices=("unet", "flow"), default="unet",
                   help="unet: the Stable Diffusion-architecture mini model (default); flow: the FLUX-architecture one")  # fmt: skip
    t.add_argument(
        "--seed", type=int, default=0, help="seed of the training scenes and of training (default 0)"
    )
    t.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this long")
    t.add_argument(
        "--num-scenes", type=int, default=None, help="training scenes drawn (default: the recipe's)"
    )
    t.add_argument("--max-objects", type=int, default=None, help="objects per training scene: 1 to this")
    t.add_argument("--partial-caption", type=float, default=None,
                   help="share of captions naming a subset of the objects")  # fmt: skip
    t.add_argument("--plain-background", type=float, default=None,
                   help="share of scenes on a uniform random colour, captioned without a background")  # fmt: skip
    t.add_argument("--flow-steps", type=int, default=None, help="flow: transformer steps (default 12000)")
    t.add_argument("--flow-lr", type=float, default=None, help="flow: peak learning rate (default 5e-4)")
    t.add_argument("--flow-train-shift", type=float, default=None,
                   help="flow: shift the training sigmas towards noise as sampling does (default 1: none)")  # fmt: skip
    t.add_argument("--vae-steps", type=int, default=None, help="unet: VAE steps (default: the recipe's)")
    t.add_argument("--unet-steps", type=int, default=None, help="unet: UNet steps (default: the recipe's)")
    t.add_argument("--unet-lr", type=float, default=None, help="unet: peak UNet learning rate (default 1e-3)")
    t.add_argument("--unet-lr-min", type=float, default=None, help="unet: end of its cosine (default 1e-4)")
    t.add_argument("--decoder-steps", type=int, default=None,
                   help="unet: steps of the VAE decoder's fine-tune on the UNet's latents (default: the recipe's)")  # fmt: skip
    t.add_argument("--decoder-composite", type=float, default=None,
                   help="unet: share of decoder samples pasted from two scenes (trains a local decoder; default 0)")  # fmt: skip
    t.add_argument(
        "--decoder-batch", type=int, default=None, help="unet: decoder fine-tune batch (default 16)"
    )
    t.add_argument("--init-from", default=None, help="unet: start from a saved pipeline folder, or 'mini'")
    t.add_argument(
        "--image-size", type=int, default=64, help="unet: scene size in pixels (default 64: 16x16 latents)"
    )
    t.add_argument("--unet-plain-levels", type=int, default=0,
                   help="unet: outer UNet levels without attention; with --init-from a smaller UNet is grown by them")  # fmt: skip

    et = sub.add_parser(
        "tune-mini",
        help="edit-aimed fine-tune of a mini model's denoiser (the recipe's last stage), resumable",
        description="Fine-tune BASE's UNet or transformer on LoMOE region-branch views of edit pairs, "
        "then write OUT/pipeline with it mixed (1 - mix)·base + mix·tuned.",
    )
    et.add_argument("--out", required=True, help="run folder (resumable) with the exported pipeline/")
    et.add_argument(
        "--base", default="mini", help="pipeline folder to start from, or mini / mini-flow (default: mini)"
    )
    et.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this long")
    from .edit_tune_config import EditTuneConfig

    add_option_flags(et, EditTuneConfig, "edit-tune options (defaults: the shipped run's)")

    tj = sub.add_parser("train-judge", help="train the shapes-world judge; prints held-out accuracy")
    tj.add_argument("--out", required=True, help="safetensors file to write")
    tj.add_argument("--steps", type=int, default=800, help="training steps (default 800)")
    tj.add_argument("--seed", type=int, default=0, help="seed of the scenes and of training (default 0)")

    ev = sub.add_parser("eval-mini", help="measure a mini model: VAE PSNR and text-to-image binding")
    ev.add_argument("--model", default="mini", help="mini (default), mini-flow or a pipeline folder")
    ev.add_argument("--n", type=int, default=100, help="text-to-image prompts (default 100)")
    ev.add_argument("--vae-n", type=int, default=200,
                    help="held-out scenes for the VAE, and pairs for its locality (default 200)")  # fmt: skip
    ev.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    ev.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance (default 5)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the prompts and the noise (default 0)")
    ev.add_argument("--out", default=None, help="also write the results as JSON here")
    return {"shapes": run_shapes, "train-mini": run_train, "tune-mini": run_tune_mini,
            "eval-mini": run_eval_mini, "train-judge": run_train_judge}  # fmt: skip


def run_shapes(args) -> int:
    from .world import make_scene, retarget, write_scene

    if not 1 <= args.objects <= 7:
        raise InvalidInputError(f"--objects must be in 1..7, got {args.objects}")
    if args.size < 32 or args.size % 8:
        raise InvalidInputError(f"--size must be a multiple of 8 and >= 32, got {args.size}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; give a folder for the scene")
    scene = make_scene(args.seed, args.objects, size=args.size)
    changes = {}
    for item in args.target or []:
        index, sep, words = item.partition("=")
        if not sep or not index.strip().isdigit():
            raise InvalidInputError(f"--target must look like I=WORDS (e.g. 1='blue circle'), got {item!r}")
        changes[int(index)] = words
    try:
        target = retarget(scene, changes) if changes else None
    except ValueError as exc:
        raise InvalidInputError(f"--target {exc}") from None
    print(write_scene(scene, out, target=target))
    return 0


def _given(args, names) -> list[str]:
    return [f"--{k.replace('_', '-')}" for k in names if getattr(args, k) is not None]


def _stopped(result, out) -> str:
    return result if result else f"stopped early; run the same command again to resume from {out}"


def run_train_flow(args) -> int:
    from .train_flow import FlowConfig, saved_flow_config, train_flow

    given = _given(args, UNET_ONLY)
    if given or args.image_size != 64 or args.unet_plain_levels:
        raise InvalidInputError(
            f"{', '.join(given) or '--image-size/--unet-plain-levels'} apply to --family unet only"
        )
    names = {"num_scenes": "num_scenes", "max_objects": "max_objects", "partial_caption": "partial_caption",
             "plain_background": "plain_background", "flow_steps": "steps", "flow_lr": "lr",
             "flow_train_shift": "train_shift"}  # fmt: skip
    overrides = {
        field: getattr(args, flag) for flag, field in names.items() if getattr(args, flag) is not None
    }
    base = saved_flow_config(args.out) or FlowConfig(seed=args.seed)  # a run goes on with its own plan
    print(_stopped(train_flow(args.out, dataclasses.replace(base, **overrides), args.max_minutes), args.out))
    return 0


def run_train(args) -> int:
    if args.family == "flow":
        return run_train_flow(args)
    if _given(args, FLOW_ONLY):
        raise InvalidInputError("--flow-steps, --flow-lr and --flow-train-shift apply to --family flow only")
    from .model import MiniConfig
    from .train import TrainConfig, train_mini

    keys = UNET_ONLY + ("num_scenes", "max_objects", "partial_caption", "plain_background")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    cfg = dataclasses.replace(TrainConfig(seed=args.seed), **overrides)
    model_cfg = MiniConfig(image_size=args.image_size, unet_plain_levels=args.unet_plain_levels)
    print(_stopped(train_mini(args.out, cfg, model_cfg, max_minutes=args.max_minutes), args.out))
    return 0


def run_tune_mini(args) -> int:
    from .edit_tune import EditTuneConfig, edit_tune

    cfg = EditTuneConfig(**option_values(EditTuneConfig, args))
    print(_stopped(edit_tune(args.out, args.base, cfg, max_minutes=args.max_minutes), args.out))
    return 0


def run_train_judge(args) -> int:
    from .judge import train_judge

    if args.steps < 1:
        raise InvalidInputError(f"--steps must be >= 1, got {args.steps}")
    print(json.dumps(train_judge(args.out, steps=args.steps, seed=args.seed), indent=2))
    return 0


def run_eval_mini(args) -> int:
    from ..io import write_text_atomic
    from ..models.loading import load
    from .evaluate import decoder_locality_psnr, text_to_image_accuracy, vae_psnr
    from .judge import load_judge

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
