"""``regionedit bench {shapes,lomoe-bench,pie-bench,speed,edit,gpu,report}``.

Heavy imports (torch, diffusers, matplotlib) happen inside the handlers, so ``regionedit
--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .. import methods
from ..errors import InvalidInputError, RegionEditError
from ..flags import add_model_flags, add_option_flags, load_arguments, option_values
from ..lomoe.options import LoMOEOptions

LOMOE, MULTIMODAL = methods.get("lomoe"), methods.get("multimodal")  # the editors the bench runs

log = logging.getLogger(__name__)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _shard(text: str) -> tuple[int, int]:
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/K such as 0/2, got {text!r}") from None
    if not 0 <= i < k:
        raise argparse.ArgumentTypeError(f"need 0 <= I < K in I/K, got {text!r}")
    return i, k


def _model_args(p, default_model="mini"):
    from ..execution import ExecutionOptions

    add_model_flags(p, default=default_model)
    p.add_argument(
        "--steps", type=int, default=None, help="DDIM steps of every method (default: LoMOE's setting)"
    )
    p.add_argument(
        "--guidance-scale", type=float, default=None, help="CFG of every method (default: LoMOE's setting)"
    )
    add_option_flags(
        p,
        LoMOEOptions,
        "LoMOE options, for lomoe and iterative (default: the model's settings, else the paper's)",
        skip=("num_inference_steps", "guidance_scale"),
    )
    add_option_flags(p, ExecutionOptions, "execution (memory and time; never the result)")


# Multimodal flags whose names would collide with LoMOE's (--steps and --guidance-scale are shared).
MULTIMODAL_RENAMES = {
    "learning_rate": "multimodal-learning-rate",
    "mask_threshold": "multimodal-mask-threshold",
}


def _run_args(p, methods="lomoe,iterative,blended,diffedit,sdedit,multimodal"):
    from ..multimodal.options import MultimodalOptions

    _model_args(p)
    p.add_argument(
        "--methods",
        default=methods,
        help=f"comma-separated (default {methods}); multimodal@L sets its λ, e.g. a sweep "
        "multimodal@0,multimodal@0.5,multimodal@1",
    )
    add_option_flags(
        p,
        MultimodalOptions,
        "multimodal options (default: the model's settings, else the method's)",
        skip=("num_inference_steps", "guidance_scale"),
        rename=MULTIMODAL_RENAMES,
        dest_prefix="mm_",
    )
    p.add_argument(
        "--multimodal-control",
        choices=["edge", "scribble", "none"],
        default="edge",
        help="multimodal: the target scene's edge map or scribble through that kind's ControlNet "
        "(ShapesBench), or text only",
    )
    p.add_argument(
        "--controlnet",
        default=None,
        help="ControlNet folder of --multimodal-control's kind (default: the model's)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the items and of every edit (default 0)")
    p.add_argument("--out", required=True, help="output folder (resumed when it exists)")
    p.add_argument("--clip", default=None, help="local CLIPModel folder for CLIP scores (else skipped)")
    p.add_argument("--no-images", action="store_true", help="do not save edited images")
    p.add_argument(
        "--shard",
        type=_shard,
        default=(0, 1),
        help="I/K: run items I, I+K, I+2K, ... only; K processes with the same --out share one run",
    )


def add_parser(subparsers):
    b = subparsers.add_parser("bench", help="benchmarks: quality, speed and memory")
    sub = b.add_subparsers(dest="bench_command", required=True, parser_class=type(b))

    s = sub.add_parser("shapes", help="ShapesBench: shapes-world edits scored by the judge")
    s.add_argument("--n", type=int, default=100, help="number of items")
    s.add_argument(
        "--set",
        dest="which",
        choices=["multi", "single", "shape"],
        default="multi",
        help="multi: every object of a 2-7 object scene; single: one object; shape: one object's shape",
    )
    s.add_argument(
        "--mask",
        dest="mask_kind",
        choices=["box", "silhouette"],
        default="box",
        help="edit masks: object boxes grown by 1 px, or the old objects' outlines (too tight for a "
        "new shape; metrics still read the boxes)",
    )
    s.add_argument("--min-masks", type=int, default=2, help="fewest objects edited per scene (default 2)")
    s.add_argument("--max-masks", type=int, default=7, help="most objects edited per scene (default 7)")
    s.add_argument("--size", type=int, default=None, help="scene size in pixels (default: the model's)")
    s.add_argument("--judge", default=None, help="judge weights (default: the shipped judge)")
    s.add_argument("--no-judge", action="store_true", help="skip judge accuracy")
    _run_args(s)

    lb = sub.add_parser("lomoe-bench", help="LoMOE-Bench / LoSOE-Bench from their JSON file")
    lb.add_argument("--json", required=True, help="LoMOE.json (paths relative to its folder)")
    lb.add_argument("--size", type=int, default=512, help="image side the items are resized to (default 512)")
    lb.add_argument("--limit", type=int, default=None, help="run the first N items only")
    _run_args(lb)

    pb = sub.add_parser("pie-bench", help="PIE-Bench from mapping_file.json + annotation_images/")
    pb.add_argument("--root", required=True, help="PIE-Bench folder (mapping_file.json, annotation_images/)")
    pb.add_argument("--size", type=int, default=512, help="image side the items are resized to (default 512)")
    pb.add_argument("--limit", type=int, default=None, help="run the first N items only")
    pb.add_argument("--categories", default=None, help="editing_type_id values, comma-separated")
    _run_args(pb, methods="lomoe,blended,diffedit,sdedit")

    sp = sub.add_parser(
        "speed", help="LoMOE vs iterative at full scale (random weights: sd2-base-random, sdxl-base-random)"
    )
    _model_args(sp, default_model="sd2-base-random")
    sp.add_argument("--size", type=int, default=512, help="image side (default 512)")
    sp.add_argument(
        "--masks", type=_ints, default=[1, 2, 4, 7], help="region counts, comma-separated (default 1,2,4,7)"
    )
    sp.add_argument("--repeats", type=int, default=1, help="time each run this often, keep the fastest")
    sp.add_argument("--out", default=None, help="write the result JSON here")

    e = sub.add_parser("edit", help="seconds, UNet evaluations and peak memory per region count")
    _model_args(e)
    e.add_argument("--size", type=int, default=None, help="image side (default: the model's)")
    e.add_argument("--regions", type=_ints, default=[1, 2, 4, 8, 16],
                   help="region counts, comma-separated (default 1,2,4,8,16)")  # fmt: skip
    e.add_argument("--out", default=None, help="write the rows as JSON here")

    mk = sub.add_parser("masks", help="masks from words and clicks: IoU per object on shapes-world scenes")
    add_model_flags(mk)
    mk.add_argument("--n", type=int, default=100, help="objects (default 100)")
    mk.add_argument("--min-objects", type=int, default=2, help="fewest objects per scene (default 2)")
    mk.add_argument("--max-objects", type=int, default=4, help="most objects per scene (default 4)")
    mk.add_argument("--finders", default="words,click", help="comma-separated: words, click (default both)")
    mk.add_argument(
        "--seed", type=int, default=0, help="seed of the scenes and the attention's noise (default 0)"
    )
    mk.add_argument(
        "--noise", type=float, default=0.0, help="Gaussian pixel noise, std on 0..255 (default 0)"
    )
    mk.add_argument("--out", default=None, help="folder for rows.jsonl and summary.json")

    g = sub.add_parser(
        "gpu", help="LoMOE's step against each family's pipeline step at full size, random weights (CUDA)"
    )
    g.add_argument("--models", default=None,
                   help="architectures, comma-separated (default: all of regionedit plan's *-random names)")  # fmt: skip
    g.add_argument("--modes", default="none,group,fp8",
                   help="memory settings: none, group (offloading), fp8 (float8 storage); default all")  # fmt: skip
    g.add_argument("--regions", type=_ints, default=[1, 2, 4, 8], help="region counts (default 1,2,4,8)")
    g.add_argument("--size", type=int, default=1024, help="image side (default 1024; --tiny: 64)")
    g.add_argument("--repeats", type=int, default=2, help="timed runs after a warm-up; the fastest counts")
    g.add_argument("--steps", type=int, default=3, help="steps of the editor rows' edits (default 3)")
    g.add_argument("--no-editor", action="store_true", help="skip whole edits through regionedit's editor")
    g.add_argument(
        "--tiny", action="store_true", help="reduced depth and width on the CPU: a check that it runs"
    )
    g.add_argument(
        "--out", default=None, help="write the markdown table here (and the rows as JSON beside it)"
    )

    r = sub.add_parser("report", help="(re)write summary.json, report.md and plots from DIR's results")
    r.add_argument("dir", help="a run's output folder (its --out)")
    r.add_argument(
        "--all-items", action="store_true", help="also count items that some methods have not finished"
    )
    return "bench", run


def _options(args, settings: dict):
    """The bench's :class:`MethodConfig`: each method's options from the model's ``settings``
    and the flags; ``--steps`` and ``--guidance-scale`` apply to every method."""
    from ..execution import ExecutionOptions, make_execution
    from ..multimodal.options import MultimodalOptions
    from .methods import MethodConfig

    shared = {
        k: v for k, v in (("steps", args.steps), ("guidance_scale", args.guidance_scale)) if v is not None
    }
    lomoe = LOMOE.options({**shared, **option_values(LoMOEOptions, args)}, LOMOE.model_settings(settings))
    extra = {}
    if hasattr(args, "multimodal_control"):
        given = option_values(MultimodalOptions, args, dest_prefix="mm_")
        extra = dict(
            multimodal=MULTIMODAL.options({**shared, **given}, MULTIMODAL.model_settings(settings)),
            multimodal_control=args.multimodal_control,
            controlnet=args.controlnet or settings.get("controlnets", {}).get(args.multimodal_control),
        )
    return MethodConfig(
        num_inference_steps=lomoe.num_inference_steps,
        guidance_scale=lomoe.guidance_scale,
        lomoe=lomoe,
        execution=make_execution(option_values(ExecutionOptions, args)),
        **extra,
    )


def _load_model(args):
    from .. import edit_api
    from .random_models import RANDOM_MODELS, timing_model

    if args.model in RANDOM_MODELS:
        import torch

        from ..models.loading import resolve_device

        device, dtype = resolve_device(args.device, args.dtype)
        return timing_model(RANDOM_MODELS[args.model](device, torch.float32), device, dtype, args.model)
    return edit_api.load(args.model, **load_arguments(args))


def _run_quality(args, items, settings, judge=None) -> int:
    """``items`` may be a function of the loaded model returning ``(items, settings)``."""
    from .extras import load_clip
    from .methods import get_methods
    from .report import markdown_table, write_report
    from .runner import run_benchmark

    try:
        methods = get_methods(args.methods)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    from ..models.loading import describe

    try:
        model_settings = {} if args.model.endswith("-base-random") else describe(args.model).settings or {}
    except RegionEditError:
        _options(args, {})  # a bad flag is the first thing to say
        raise
    config = _options(args, model_settings)  # bad options fail before the model loads
    model = _load_model(args)
    if callable(items):
        items, settings = items(model)
    shard, shards = args.shard
    summary = run_benchmark(
        model,
        items[shard::shards],
        methods,
        args.out,
        config=config,
        judge=judge,
        clip=load_clip(args.clip),
        seed=args.seed,
        settings=settings,
        save_images=not args.no_images,
    )
    report = write_report(summary, args.out, title=settings.get("benchmark", "Benchmark"))
    print(markdown_table(summary))
    print(f"wrote {Path(args.out) / 'results.jsonl'}, summary.json and {report}")
    return 0


def run_shapes(args) -> int:
    from ..shapes.items import shapes_bench

    if not 1 <= args.min_masks <= args.max_masks <= 7:
        raise InvalidInputError(
            f"need 1 <= --min-masks <= --max-masks <= 7, got {args.min_masks} and {args.max_masks}"
        )
    if args.n < 1:
        raise InvalidInputError(f"--n must be >= 1, got {args.n}")
    judge = None
    if not args.no_judge:
        from ..shapes.judge import JUDGE_PATH, load_judge

        path = Path(args.judge) if args.judge else JUDGE_PATH
        if not path.is_file():
            raise InvalidInputError(f"judge weights not found at {path}; train the judge or pass --no-judge")
        judge = load_judge(path)

    def make(model):
        size = args.size or model.native_size
        items = shapes_bench(
            args.n, args.which, args.seed, args.min_masks, args.max_masks, size, args.mask_kind
        )
        settings = {
            "benchmark": f"ShapesBench ({args.which})",
            "min_masks": args.min_masks,
            "max_masks": args.max_masks,
            "size": size,
            # pinned only when not the default, so run folders made before --mask still resume
            **({"mask": args.mask_kind} if args.mask_kind != "box" else {}),
            "judge": None if judge is None else str(args.judge or "shipped"),
        }
        return items, settings

    return _run_quality(args, make, None, judge)


def run_lomoe_bench(args) -> int:
    from .realdata import load_lomoe_bench

    items = load_lomoe_bench(args.json, size=args.size, limit=args.limit)
    return _run_quality(args, items, {"benchmark": f"LoMOE-Bench ({args.json})", "size": args.size})


def run_pie_bench(args) -> int:
    from .realdata import load_pie_bench

    cats = args.categories.split(",") if args.categories else None
    items = load_pie_bench(args.root, size=args.size, limit=args.limit, categories=cats)
    return _run_quality(args, items, {"benchmark": "PIE-Bench", "size": args.size, "categories": cats})


def _write_json(path, data) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))
        print(f"wrote {path}")


def run_speed(args) -> int:
    from .speed import format_ratios, format_rows, speed_bench

    model = _load_model(args)
    config = _options(args, model.settings)
    res = speed_bench(model, args.masks, args.size, config, repeats=max(1, args.repeats))
    print(f"{res['size']}x{res['size']}, {res['steps']} steps, {res['device']} {res['dtype']}")
    print(format_rows(res["rows"]))
    print()
    print(format_ratios(res["ratios"], res["work_formula"]))
    _write_json(args.out, res)
    return 0


def run_edit_scaling(args) -> int:
    from .speed import edit_scaling, format_rows

    model = _load_model(args)
    config = _options(args, model.settings)
    rows = edit_scaling(model, args.regions, args.size, config)
    print(
        f"chunk_size={config.execution.chunk_size}, {config.num_inference_steps} steps, {model.device} {model.dtype}"
    )
    print(format_rows(rows))
    _write_json(args.out, rows)
    return 0


def run_report(args) -> int:
    from .report import markdown_table, write_report
    from .runner import (
        RESULTS,
        complete_items,
        computes_background,
        load_results,
        recomputes_reference,
        summarise,
    )

    out = Path(args.dir)
    path = out / "summary.json"
    records = load_results(out)
    counted = None
    if records:  # recompute: shards or an interrupted run may have left it behind
        kept = records if args.all_items else complete_items(records)
        n_items = len({r["item"] for r in kept})
        counted = f"{n_items} items{'' if args.all_items else ' finished by every method'}"
        summary = summarise(kept, recomputes_reference(out), computes_background(out))
        path.write_text(json.dumps(summary, indent=2))
    elif path.is_file():
        from ..io import read_json

        summary = read_json(path, "benchmark summary")
    else:
        raise InvalidInputError(
            f"no {RESULTS} or summary.json in {out}; run a benchmark with --out {out} first"
        )
    written = write_report(summary, args.dir)  # files first: a reader that leaves early loses only lines
    if counted:
        print(counted)
    print(markdown_table(summary))
    print(f"wrote {written}")
    return 0


def run_masks(args) -> int:
    from .masks import FINDERS, run_masks, table

    finders = [f.strip() for f in args.finders.split(",") if f.strip()]
    if not finders or set(finders) - set(FINDERS):
        raise InvalidInputError(f"--finders takes {', '.join(FINDERS)}; got {args.finders!r}")
    if args.n < 1 or not 1 <= args.min_objects <= args.max_objects <= 7:
        raise InvalidInputError("need --n >= 1 and 1 <= --min-objects <= --max-objects <= 7")
    summary = run_masks(
        _load_model(args),
        args.n,
        args.seed,
        args.min_objects,
        args.max_objects,
        finders,
        args.out,
        noise=args.noise,
    )
    print(table(summary))
    return 0


def run_gpu(args) -> int:
    import dataclasses

    from .architectures import ARCHITECTURES
    from .gpu import MODES, denoiser_rows, device_setting, format_rows
    from .gpu_editor import editor_rows

    models = [m.strip() for m in args.models.split(",")] if args.models else list(ARCHITECTURES)
    modes = [m.strip() for m in args.modes.split(",")]
    if set(models) - set(ARCHITECTURES) or set(modes) - set(MODES):
        raise InvalidInputError(
            f"--models takes {', '.join(ARCHITECTURES)}; --modes takes {', '.join(MODES)}"
        )
    size = 64 if args.tiny and args.size == 1024 else args.size
    rows = denoiser_rows(models, modes, args.regions, size, args.tiny, max(1, args.repeats))
    if not args.no_editor:
        device, dtype, budget = device_setting(args.tiny)
        rows += editor_rows(modes, args.regions, size, args.tiny, device, dtype, args.steps, budget)
    table = format_rows(rows, "MiB" if args.tiny else "GiB")
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
        _write_json(str(Path(args.out).with_suffix(".json")), [dataclasses.asdict(r) for r in rows])
    return 0


HANDLERS = {
    "masks": run_masks,
    "shapes": run_shapes,
    "lomoe-bench": run_lomoe_bench,
    "pie-bench": run_pie_bench,
    "speed": run_speed,
    "edit": run_edit_scaling,
    "report": run_report,
    "gpu": run_gpu,
}


def run(args) -> int:
    return HANDLERS[args.bench_command](args)
