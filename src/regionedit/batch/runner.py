"""Resumable batch editing: DIR/<id>.png plus one results.jsonl line per job.

Crash safety rests on three facts: images are written by rename (never half there), a
results line is appended only after its image is in place, and a rerun skips the ids that
results.jsonl records. A crash between the two steps leaves an image without a line; the
rerun recognises it by the job fingerprint stored in the PNG and records it without redoing it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .. import edit_api, methods
from ..errors import InvalidInputError, RegionEditError
from ..io import write_text_atomic
from .job import run_job
from .manifest import Job, load_manifest, parse_shard, select_shard

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
ENGINES = ("local", "ray")


@dataclass
class BatchSummary:
    """What a batch run did. ``skipped`` were already recorded by an earlier run."""

    out_dir: Path
    done: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[dict] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.done} done, {self.failed} failed, {self.skipped} already recorded; "
            f"results in {self.out_dir / RESULTS}"
        )


class ResultsLog:
    """The append-only results.jsonl: read (repairing a torn last line) and append durably."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8", errors="replace")
        records, torn = [], not text.endswith("\n") and bool(text)
        for raw in text.splitlines():
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                torn = True  # a line cut by a kill: that job simply runs again
                continue
            if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                records.append(rec)
        if torn:
            self.rewrite(records)
        return records

    def rewrite(self, records: list[dict]) -> None:
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def append(self, record: dict) -> None:
        data = (json.dumps(record) + "\n").encode()
        # One write on an O_APPEND descriptor: lines from concurrent shards do not interleave.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temps(out_dir: Path, jobs: list[Job]) -> None:
    """Temp files of this shard's unfinished jobs, left by a killed run (io.save_image names)."""
    for job in jobs:
        for tmp in out_dir.glob(f".{job.id}.png.*.tmp"):
            tmp.unlink(missing_ok=True)


def _local(
    jobs: list[Job],
    out_dir: Path,
    model: str,
    device,
    dtype,
    allow_pickle,
    overwrite,
    model_config,
    memory=None,
) -> Iterator[dict]:
    """Load the model now (a bad model is said before any progress), then run the jobs one by one."""
    loaded = edit_api.load(
        model, device=device, dtype=dtype, allow_pickle=allow_pickle, config=model_config, memory=memory
    )

    def results():
        for job in jobs:
            log.info("job %s (manifest line %d)", job.id, job.line)
            yield run_job(loaded, job, out_dir, model, overwrite)

    return results()


def _check_options(jobs: list[Job], model: str) -> None:
    """Every job's options against the model's recommended settings, before the first job runs."""
    from ..errors import InvalidOptionError
    from ..models.loading import describe

    try:
        settings = describe(model).settings or {}
    except RegionEditError:
        settings = {}  # the lines' own errors first; the model's comes when it loads
    for job in jobs:
        try:
            method = methods.get(job.method)
            method.options(job.options, method.model_settings(settings))
        except InvalidOptionError as exc:
            raise InvalidOptionError(f"manifest line {job.line}: {exc}") from None


def run_batch(
    manifest: str | Path,
    out_dir: str | Path,
    model: str = "mini",
    shard: str | tuple[int, int] | None = None,
    engine: str = "local",
    device=None,
    dtype=None,
    allow_pickle: bool = False,
    model_config: str | None = None,
    memory=None,
    overwrite: bool = False,
    retry_failed: bool = False,
    num_workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = False,
) -> BatchSummary:
    """Run (or resume) every job of a manifest, or of one shard of it.

    Args:
        manifest: JSONL file, one job per line (see :mod:`regionedit.batch.manifest`).
        out_dir: receives ``<id>.png`` and ``results.jsonl``; reruns skip recorded jobs.
        model: ``"mini"``, a diffusers folder, a .safetensors file or a hub id.
        shard: ``"I/N"`` or ``(I, N)``: run jobs I, I+N, ... only (one machine of N).
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data actors, see batch.ray).
        overwrite: replace a ``<id>.png`` that this batch did not write.
        retry_failed: run jobs recorded as failed again (their old lines are dropped).
        num_workers, ray_address: Ray engine only (actors; cluster address).
        progress: a progress bar on stderr (jobs done and failed, time left) and a line per
            failed job (otherwise failures are logged as warnings).
        device, dtype, allow_pickle, model_config, memory: how the model loads (see
            :func:`regionedit.load`; ``model_config`` is its ``config``).
    """
    if engine not in ENGINES:
        raise InvalidInputError(f"engine must be one of {ENGINES}, got {engine!r}")
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise InvalidInputError(f"num_workers must be a positive integer, got {num_workers!r}")
    shard = (
        parse_shard(shard)
        if isinstance(shard, str) or shard is None
        else parse_shard("/".join(map(str, shard)))
    )
    jobs = select_shard(load_manifest(manifest), shard)
    _check_options(jobs, model)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"--out {out_dir} is a file; give a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    results = ResultsLog(out_dir / RESULTS)
    records = results.read()
    recorded = {r["id"] for r in records}
    ours = {j.id for j in jobs}
    # Drop lines that will be redone: failures on --retry-failed, successes whose image is gone.
    stale = {
        r["id"]
        for r in records
        if r["id"] in ours
        and (
            (retry_failed and r.get("status") == "error")
            or (r.get("status") == "ok" and not (out_dir / f"{r['id']}.png").exists())
        )
    }
    if stale:
        results.rewrite([r for r in records if r["id"] not in stale])
        recorded -= stale
    prints = {r["id"]: r.get("fingerprint") for r in records}
    for j in jobs:
        if j.id in recorded and prints.get(j.id) not in (None, j.fingerprint):
            log.warning(
                "job %s changed since it was recorded; kept as recorded (give it a new id to redo it)", j.id
            )
    todo = [j for j in jobs if j.id not in recorded]
    summary = BatchSummary(out_dir=out_dir, skipped=len(jobs) - len(todo))
    if not todo:
        return summary
    _remove_stale_temps(out_dir, todo)
    if engine == "ray":
        from .ray import run_on_ray

        stream: Iterable[dict] = run_on_ray(
            todo,
            out_dir,
            model,
            device,
            dtype,
            allow_pickle,
            overwrite,
            num_workers,
            ray_address,
            model_config,
            memory,
        )
    else:
        stream = _local(todo, out_dir, model, device, dtype, allow_pickle, overwrite, model_config, memory)
    bar = tqdm(total=len(todo), desc="batch", unit="job", disable=not progress, file=sys.stderr)
    with bar:
        for record in stream:
            results.append(record)
            if record["status"] == "ok":
                summary.done += 1
            else:
                summary.failed += 1
                summary.failures.append(record)
                line = f"job {record['id']} (line {record.get('line')}) failed: {record.get('error')}"
                if progress:
                    bar.write(line, file=sys.stderr)
                else:
                    log.warning(line)
            bar.set_postfix(failed=summary.failed, refresh=False)
            bar.update()
    return summary


__all__ = ["BatchSummary", "ResultsLog", "run_batch", "run_job"]
