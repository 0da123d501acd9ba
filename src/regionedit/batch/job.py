"""One batch job, from its manifest line to ``<id>.png``: shared by the local and the Ray engines."""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path

from PIL import Image

from .. import edit_api
from ..errors import OutputExistsError
from .manifest import Job

log = logging.getLogger(__name__)


def _png_fingerprint(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            meta = json.loads(im.text.get("regionedit", "{}"))
        return meta.get("batch", {}).get("fingerprint")
    except Exception:  # unreadable or foreign file: not ours
        return None


def run_job(model, job: Job, out_dir: Path, model_name: str, overwrite: bool = False) -> dict:
    """Edit one job into ``out_dir/<id>.png``; never raises for a job's own failure.

    Returns the results record: ``{"id", "status": "ok" | "error", ...}``.
    """
    out = out_dir / f"{job.id}.png"
    record = {"id": job.id, "line": job.line, "fingerprint": job.fingerprint}
    start = time.perf_counter()
    try:
        if out.exists() and _png_fingerprint(out) == job.fingerprint:
            # Written by an earlier run that died before recording it: same job, same image.
            return {**record, "status": "ok", "output": out.name, "seconds": 0.0, "recovered": True}
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} exists and was not written for this job; pass --overwrite")
        request = job.request(model_name)
        prepared = request.prepare(model)
        result = edit_api.run(model, prepared, progress=False)
        batch = {"batch": {"id": job.id, "fingerprint": job.fingerprint}}
        edit_api.save_result(
            result, request, prepared, out, overwrite=True, model_name=model_name, extra=batch
        )
    except Exception as exc:  # one job's failure is recorded; the batch goes on
        log.debug("job %s failed:\n%s", job.id, traceback.format_exc())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {**record, "status": "error", "error_type": type(exc).__name__, "error": first}
    return {**record, "status": "ok", "output": out.name, "seconds": round(time.perf_counter() - start, 3)}
