"""``regionedit batch``: a thin adapter over :func:`regionedit.batch.run_batch`."""

from __future__ import annotations

EXAMPLE = (
    'Each line of MANIFEST is a job: {"id": "cat1", "image": "cat.png", "masks": ["m1.png"], '
    '"prompts": ["a blue square"], "background_prompt": "a red square on a gray background", '
    '"seed": 0, "options": {"steps": 20}}. Paths are relative to the manifest. Rerun the same '
    "command after a crash: recorded jobs are skipped. Exit status 0: all jobs ok; 1: some "
    "failed (see results.jsonl); 2: bad arguments or manifest."
)


def add_parser(subparsers):
    from ..flags import add_model_flags

    b = subparsers.add_parser(
        "batch", help="edit many images from a JSONL manifest (resumable)", description=EXAMPLE
    )
    b.add_argument("manifest", help="JSONL file, one job per line")
    b.add_argument("--out", required=True, help="folder for <id>.png and results.jsonl")
    add_model_flags(b)
    b.add_argument("--shard", default=None, metavar="I/N", help="run jobs I, I+N, ... only (0 <= I < N)")
    b.add_argument("--engine", default="local", choices=["local", "ray"], help="local (default) or ray")
    b.add_argument("--num-workers", type=int, default=None, help="Ray actors (default: one per GPU, or 1)")
    b.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    b.add_argument("--overwrite", action="store_true", help="replace <id>.png files this batch did not write")
    b.add_argument("--retry-failed", action="store_true", help="run jobs recorded as failed again")
    return "batch", run


def run(args) -> int:
    from ..flags import load_arguments
    from .runner import run_batch

    summary = run_batch(
        args.manifest,
        args.out,
        model=args.model,
        shard=args.shard,
        engine=args.engine,
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        model_config=args.model_config,
        memory=load_arguments(args)["memory"],
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        num_workers=args.num_workers,
        ray_address=args.ray_address,
        progress=True,
    )
    print(summary.line())
    return 1 if summary.failed else 0
