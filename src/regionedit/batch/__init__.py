"""Resumable batch editing from a JSONL manifest, locally or on a Ray cluster."""

from .manifest import Job, load_manifest, parse_shard, select_shard
from .runner import BatchSummary, run_batch, run_job

__all__ = ["BatchSummary", "Job", "load_manifest", "parse_shard", "run_batch", "run_job", "select_shard"]
