"""Resumable batch editing from a JSONL manifest, locally or on a Ray cluster."""

from .job import run_job
from .manifest import Job, load_manifest, parse_shard, select_shard
from .runner import BatchSummary, run_batch

__all__ = ["BatchSummary", "Job", "load_manifest", "parse_shard", "run_batch", "run_job", "select_shard"]
