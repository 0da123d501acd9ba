"""The Ray engine on a one-node local Ray: same images, same results.jsonl, same resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from regionedit.batch import run_batch

from .conftest import box

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _manifest(folder, image64):
    folder.mkdir()
    image64.save(folder / "in.png")
    Image.fromarray(box(8, 24, 8, 24)).save(folder / "m1.png")
    Image.fromarray(box(0, 8, 0, 8, size=32)).save(folder / "small.png")
    jobs = [
        {"id": f"r{i}", "image": "in.png", "masks": ["m1.png"], "prompts": ["a red circle"]}
        | {"background_prompt": "a gray background", "seed": i, "options": {"steps": 2, "bootstrap_steps": 1}}
        for i in range(3)
    ]
    jobs[1]["masks"] = ["small.png"]  # fails inside the actor: recorded, the batch goes on
    path = folder / "jobs.jsonl"
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_ray_engine_matches_local_and_resumes(local_ray, tmp_path, image64, tiny_model_dir):
    manifest = _manifest(tmp_path / "data", image64)
    local = run_batch(manifest, tmp_path / "local", model=str(tiny_model_dir))
    assert (local.done, local.failed) == (2, 1)

    # A crashed earlier run recorded r0 only: Ray must do r1 and r2, not r0 again.
    out = tmp_path / "ray"
    out.mkdir()
    (out / "r0.png").write_bytes((tmp_path / "local" / "r0.png").read_bytes())
    first = [r for r in _records(tmp_path / "local") if r["id"] == "r0"]
    (out / "results.jsonl").write_text(json.dumps(first[0]) + "\n")

    summary = run_batch(manifest, out, model=str(tiny_model_dir), engine="ray", num_workers=1)
    assert (summary.done, summary.failed, summary.skipped) == (1, 1, 1)
    recs = _records(out)
    assert sorted(r["id"] for r in recs) == ["r0", "r1", "r2"]
    assert {r["id"]: r["status"] for r in recs} == {
        r["id"]: r["status"] for r in _records(tmp_path / "local")
    }
    assert "image's size" in next(r for r in recs if r["id"] == "r1")["error"]
    # Ray workers run with OMP_NUM_THREADS=1, this process with more threads: CPU kernels round
    # differently, so pixels may differ by a grey level; a different edit differs by far more.
    diff = np.abs(_pixels(out / "r2.png").astype(int) - _pixels(tmp_path / "local" / "r2.png").astype(int))
    assert diff.max() <= 2, diff.max()

    again = run_batch(manifest, out, model=str(tiny_model_dir), engine="ray")
    assert (again.done, again.failed, again.skipped) == (0, 0, 3)
    assert len(_records(out)) == 3


def test_ray_bad_model_is_one_clear_error(local_ray, tmp_path, image64):
    from regionedit.errors import RegionEditError

    manifest = _manifest(tmp_path / "data", image64)
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    with pytest.raises(RegionEditError, match="model_index.json"):
        run_batch(manifest, tmp_path / "out", model=str(bad), engine="ray", num_workers=1)
    assert not list((tmp_path / "out").glob("*.png"))
