"""Batch engine on Ray Data: a pool of actors, each holding one loaded model.

Jobs travel as JSON strings (their lists of masks and prompts do not fit Arrow columns
cleanly); each actor edits with the same :func:`run_job` as the local engine and writes
``<id>.png`` itself, so the manifest folder, DIR and the model must be on storage that every
node sees. Records stream back to the driver in completion order; the driver appends them to
results.jsonl, which keeps resuming identical to the local engine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from ..errors import DependencyError, RegionEditError
from .manifest import Job

log = logging.getLogger(__name__)


class EditActor:
    """Ray Data callable class: loads the model once, then edits one job per call."""

    def __init__(
        self, out_dir: str, model: str, device, dtype, allow_pickle: bool, overwrite: bool, config=None,
        memory=None,
    ):  # fmt: skip
        import torch

        from .. import edit_api

        if device is None and torch.cuda.is_available():
            device = "cuda"  # Ray exposes only the GPU it assigned to this actor
        self.out_dir = Path(out_dir)
        self.model_name = model
        self.overwrite = overwrite
        self.model = edit_api.load(
            model, device=device, dtype=dtype, allow_pickle=allow_pickle, config=config, memory=memory
        )

    def __call__(self, batch: dict) -> dict:
        import json

        from .job import run_job

        records = []
        for text in batch["job"]:
            job = Job.from_json(str(text))
            records.append(
                json.dumps(run_job(self.model, job, self.out_dir, self.model_name, self.overwrite))
            )
        return {"record": records}


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise DependencyError(
            f"--engine ray needs Ray Data ({exc}); install it with: pip install 'regionedit[ray]'"
        ) from None
    return ray


def run_on_ray(
    jobs: list[Job],
    out_dir: Path,
    model: str,
    device=None,
    dtype=None,
    allow_pickle: bool = False,
    overwrite: bool = False,
    num_workers: int | None = None,
    address: str | None = None,
    model_config: str | None = None,
    memory=None,
) -> Iterator[dict]:
    """Yield one results record per job as the actors finish them.

    Connects to ``address`` (or ``RAY_ADDRESS``, or a running ``ray start`` cluster; else a new
    local instance) unless Ray is already initialised. One actor per GPU of the cluster (one
    GPU each), or ``num_workers`` CPU actors (default 1) when there is no GPU or ``device`` is cpu.
    """
    import json

    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = gpus > 0 and (device is None or str(device).startswith("cuda"))
    workers = num_workers or (gpus if use_gpu else 1)
    log.info("Ray: %d actor(s), %s", workers, "one GPU each" if use_gpu else "CPU")
    ds = ray.data.from_items([{"job": j.to_json()} for j in jobs], override_num_blocks=min(len(jobs), 1000))
    ds = ds.map_batches(
        EditActor,
        fn_constructor_kwargs=dict(
            out_dir=str(Path(out_dir).resolve()),
            model=model,
            device=device,
            dtype=None if dtype is None else str(dtype).removeprefix("torch."),  # "float16"
            allow_pickle=allow_pickle,
            config=model_config,
            memory=memory,
            overwrite=overwrite,
        ),
        batch_size=1,
        concurrency=workers,
        num_gpus=1 if use_gpu else 0,
        num_cpus=1,
    )
    try:
        for row in ds.iter_rows():
            yield json.loads(row["record"])
    except RegionEditError:
        raise
    except Exception as exc:  # an actor that cannot start (bad model) surfaces as a Ray error
        text = str(exc).strip()
        for cls in ("ModelLoadError", "RegionEditError"):
            if cls in text:
                text = text[text.index(cls) :]
                break
        first = text.splitlines()[0] if text else type(exc).__name__
        raise RegionEditError(f"the Ray batch stopped: {first}") from None
