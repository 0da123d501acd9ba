"""``regionedit plan``: the expected peak memory of a LoMOE edit, before loading anything.

``--model`` is a model folder (or ``mini``, ``mini-flow``, a cached hub id) whose component configs are
read, or the name of a released architecture (``flux2-klein-4b-random``, :mod:`regionedit.bench.architectures`).
"""

from __future__ import annotations

import argparse

from ..errors import InvalidInputError, ModelLoadError
from ..quiet import quiet_libraries


def _size(text: str) -> tuple[int, int]:
    try:
        w, _, h = text.lower().partition("x")
        width, height = int(w), int(h or w)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WxH such as 1024x1024 (or one side), got {text!r}"
        ) from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"sides must be positive, got {text!r}")
    return width, height


def add_parser(subparsers):
    from ..plan.estimate import DTYPE_BYTES, OFFLOADS, REFERENCE_MAPS

    p = subparsers.add_parser(
        "plan",
        help="expected peak accelerator memory of a LoMOE edit, and the chunk size that fits a budget",
        description="Plan a LoMOE edit's memory from the model's configs (no weights are loaded). Example: "
        "regionedit plan --model flux-dev-random --size 1024x1024 --regions 4 --max-memory 80GB",
    )
    names = ", ".join(_architectures())
    p.add_argument(
        "--model", default="mini", help=f"a model folder, mini, mini-flow, a cached hub id, or one of {names}"
    )
    p.add_argument(
        "--size", type=_size, default=(1024, 1024), metavar="WxH", help="image size (default 1024x1024)"
    )
    p.add_argument("--regions", type=int, default=1, help="regions edited at once (default 1)")
    p.add_argument(
        "--dtype", default="bf16", choices=sorted(DTYPE_BYTES), help="compute dtype (default bf16)"
    )
    p.add_argument("--storage-dtype", default=None, choices=sorted(DTYPE_BYTES),
                   help="the denoiser's storage dtype (layerwise casting); default: the compute dtype")  # fmt: skip
    p.add_argument(
        "--offload", default="none", choices=OFFLOADS, help="offloading (regionedit.load's memory=)"
    )
    p.add_argument(
        "--max-memory", default=None, metavar="BYTES", help="a budget such as 24GB (GB = GiB = 2^30)"
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="branches per gradient chunk (default: all, or what fits)",
    )
    p.add_argument(
        "--steps", type=int, default=50, help="denoising steps (held reference maps scale with them)"
    )
    p.add_argument("--reference-maps", default="recompute", choices=REFERENCE_MAPS,
                   help="as ExecutionOptions.reference_maps (default recompute)")  # fmt: skip
    p.add_argument(
        "--no-bootstrap", action="store_true", help="bootstrap_steps=0: no constant-colour encoding"
    )
    p.add_argument(
        "--text-tokens", type=int, default=None, help="text tokens per prompt (default: the model's)"
    )
    return "plan", run


def _architectures() -> list[str]:
    from .architectures import ARCHITECTURES

    return list(ARCHITECTURES)


def shape_for(name: str, text_tokens: int | None = None):
    """The :class:`~regionedit.plan.shape.ModelShape` of a released architecture's name or a model folder."""
    from dataclasses import replace

    from ..models.loading import describe
    from ..plan.shape import shape_of_configs, shape_of_folder
    from .architectures import ARCHITECTURES

    if name in ARCHITECTURES:
        spec = ARCHITECTURES[name]
        shape = shape_of_configs(name, spec.family, spec.components, spec.text_tokens, spec.guidance)
    else:
        info = describe(name)
        if info.path is None or info.family is None:
            raise ModelLoadError(
                f"planning reads a model folder's configs; {name} is not one (give its diffusers folder, "
                f"or one of {', '.join(ARCHITECTURES)})"
            )
        shape = shape_of_folder(name, info.path, info.family)
    return shape if text_tokens is None else replace(shape, text_tokens=text_tokens)


def format_plan(plan) -> str:
    """The plan as a short markdown table."""
    from ..plan.estimate import gib

    h, w = plan.size
    head = (f"{plan.model}, {w}x{h}, {plan.regions} regions ({plan.branches} branches), {plan.dtype}, "
            f"storage {plan.storage}, offload {plan.offload}")  # fmt: skip
    rows = [(f"weights: {k}", v) for k, v in plan.weights.items()]
    rows += [
        (f"weights on the device at the peak ({plan.phase})", plan.weights_on_device),
        (f"denoiser forward, {plan.branches} branches, no gradient", plan.forward),
        (f"gradient step, chunk size {plan.chunk_size}", plan.backward),
        ("reference maps", plan.reference_maps),
        ("VAE encoding (ten bootstrap colours, else the input)", plan.vae_encode),
        ("VAE decoding (result and reconstruction)", plan.vae_decode),
        (f"**peak** ({plan.phase})", plan.peak),
    ]
    lines = [head, "", "| part | GiB |", "|---|---:|", *(f"| {k} | {v / 2**30:.2f} |" for k, v in rows)]
    if plan.budget is not None:
        verdict = f"fits {gib(plan.budget)} at chunk size {plan.chunk_size}" if plan.fits else plan.advice
        lines += ["", verdict]
    return "\n".join(lines)


def run(args) -> int:
    from ..plan.budget import parse_bytes
    from ..plan.estimate import plan_memory

    if args.regions < 0 or (args.chunk_size is not None and args.chunk_size < 1):
        raise InvalidInputError("--regions must be >= 0 and --chunk-size >= 1")
    width, height = args.size
    with quiet_libraries():  # building the networks on the meta device imports their libraries
        shape = shape_for(args.model, args.text_tokens)
    if height % shape.size_factor or width % shape.size_factor:
        raise InvalidInputError(
            f"{width}x{height}: sides must be multiples of {shape.size_factor} for {args.model}"
        )
    plan = plan_memory(
        shape, height, width, args.regions, dtype=args.dtype, storage=args.storage_dtype, offload=args.offload,
        chunk_size=args.chunk_size, max_memory=None if args.max_memory is None else parse_bytes(args.max_memory),
        steps=args.steps, reference_maps=args.reference_maps, bootstrap=not args.no_bootstrap,
    )  # fmt: skip
    print(format_plan(plan))
    return 0
