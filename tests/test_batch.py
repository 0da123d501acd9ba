"""Batch editing: manifest checks, results.jsonl, resume after SIGKILL, shards."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regionedit import edit_api
from regionedit.batch import load_manifest, parse_shard, run_batch, select_shard
from regionedit.batch.runner import ResultsLog
from regionedit.cli import main
from regionedit.errors import InvalidInputError

from .conftest import box

FAST = {"steps": 3, "bootstrap_steps": 2}  # t=999 is pure noise: seeds act from step 2
N_JOBS = 5


def _job(i, **over):
    job = {
        "id": f"job-{i}",
        "image": "in.png",
        "masks": ["m1.png"] if i % 2 else ["m1.png", "m2.png"],
        "prompts": ["a red circle"] if i % 2 else ["a red circle", "a blue square"],
        "background_prompt": "a gray background",
        "seed": i,
        "options": FAST,
    }
    job.update(over)
    return job


def _write_manifest(folder: Path, jobs: list[dict], name="jobs.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


def _inputs(folder: Path, image64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image64.save(folder / "in.png")
    Image.fromarray(box(8, 24, 8, 24)).save(folder / "m1.png")
    Image.fromarray(box(36, 56, 30, 54)).save(folder / "m2.png")
    Image.fromarray(box(0, 10, 0, 10, size=32)).save(folder / "small.png")  # wrong size: fails
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory, image64, tiny_model_dir):
    """One uninterrupted run of N_JOBS jobs (one of which fails) shared by the tests below."""
    folder = _inputs(tmp_path_factory.mktemp("batch") / "data", image64)
    jobs = [_job(i) for i in range(N_JOBS)]
    jobs[2] = _job(2, masks=["small.png"], prompts=["x"])
    manifest = _write_manifest(folder, jobs)
    hashes = _hashes(folder)
    out = folder.parent / "reference"
    summary = run_batch(manifest, out, model=str(tiny_model_dir))
    assert _hashes(folder) == hashes  # inputs never modified
    return manifest, out, summary


def _hashes(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_batch_writes_images_and_one_line_per_job(reference):
    manifest, out, summary = reference
    assert (summary.done, summary.failed, summary.skipped) == (N_JOBS - 1, 1, 0)
    recs = _records(out)
    assert [r["id"] for r in recs] == [f"job-{i}" for i in range(N_JOBS)]
    failed = [r for r in recs if r["status"] == "error"]
    assert [r["id"] for r in failed] == ["job-2"] and "image's size" in failed[0]["error"]
    assert failed[0]["error_type"] == "InvalidMaskError"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"job-{i}.png" for i in range(N_JOBS) if i != 2
    )
    assert not list(out.glob(".*"))  # no temp files


def test_batch_image_equals_a_single_edit(reference, tiny_model_dir):
    """The batch is the library's edit, not something else: same request, same pixels."""
    manifest, out, _ = reference
    job = load_manifest(manifest)[1]
    model = edit_api.load(str(tiny_model_dir))  # the batch's model, loaded the same way
    result = edit_api.run(model, job.request("tiny").prepare(model), progress=False)
    assert np.array_equal(_pixels(out / "job-1.png"), np.asarray(result.image))
    seeds = [_pixels(out / f"job-{i}.png") for i in (1, 3)]
    assert not np.array_equal(*seeds)  # seeds matter: the comparison above can fail


def test_rerun_skips_recorded_jobs(reference, tiny_model_dir):
    manifest, out, _ = reference
    before = (out / "results.jsonl").read_bytes()
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    summary = run_batch(manifest, out, model=str(tiny_model_dir))
    assert (summary.done, summary.failed, summary.skipped) == (0, 0, N_JOBS)
    assert (out / "results.jsonl").read_bytes() == before
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == mtimes


def test_sigkill_midway_then_rerun_equals_uninterrupted(reference, tiny_model_dir, tmp_path):
    """kill -9 during a CLI batch; the rerun finishes it: nothing lost or duplicated, same pixels."""
    manifest, ref_out, _ = reference
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "regionedit.cli", "batch", str(manifest), "--out", str(out)]
    proc = subprocess.Popen(cmd + ["--model", str(tiny_model_dir)], stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    try:
        # Wait for the first recorded job, then kill while later jobs are still running.
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and results.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = _records(out)
    assert 1 <= len(partial) < N_JOBS, "the run should have been killed part-way"

    summary = run_batch(manifest, out, model=str(tiny_model_dir))
    assert summary.skipped == len(partial)
    recs = _records(out)
    ids = [r["id"] for r in recs]
    assert sorted(ids) == sorted(f"job-{i}" for i in range(N_JOBS)) and len(set(ids)) == len(ids)
    ref = {r["id"]: r["status"] for r in _records(ref_out)}
    assert {r["id"]: r["status"] for r in recs} == ref
    for name in (p.name for p in ref_out.glob("*.png")):
        assert np.array_equal(_pixels(out / name), _pixels(ref_out / name)), name
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref_out.iterdir())


def test_image_written_but_not_recorded_is_recovered_not_redone(reference, tiny_model_dir, tmp_path):
    """A crash between the rename and the results line: the rerun adopts the image."""
    manifest, ref_out, _ = reference
    out = tmp_path / "out"
    out.mkdir()
    (out / "job-1.png").write_bytes((ref_out / "job-1.png").read_bytes())
    recs = [r for r in _records(ref_out) if r["id"] != "job-1"]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for r in recs:
        if r["status"] == "ok":
            (out / r["output"]).write_bytes((ref_out / r["output"]).read_bytes())
    (out / ".job-1.png.abc.tmp").write_bytes(b"partial")  # left by the same crash
    summary = run_batch(manifest, out, model=str(tiny_model_dir))
    assert (summary.done, summary.skipped) == (1, N_JOBS - 1)
    last = _records(out)[-1]
    assert last["id"] == "job-1" and last.get("recovered") is True
    assert (out / "job-1.png").read_bytes() == (ref_out / "job-1.png").read_bytes()
    assert not (out / ".job-1.png.abc.tmp").exists()


def test_foreign_output_kept_without_overwrite_and_retry_failed(image64, tiny_model_dir, tmp_path):
    folder = _inputs(tmp_path / "data", image64)
    manifest = _write_manifest(folder, [_job(1), _job(3, masks=["small.png"], prompts=["x"])])
    out = tmp_path / "out"
    out.mkdir()
    (out / "job-1.png").write_bytes(b"not ours")
    summary = run_batch(manifest, out, model=str(tiny_model_dir))
    assert summary.failed == 2
    assert (out / "job-1.png").read_bytes() == b"not ours"
    assert {r["id"]: r["error_type"] for r in _records(out)} == {
        "job-1": "OutputExistsError",
        "job-3": "InvalidMaskError",
    }
    # Fix the inputs, retry: each id still has exactly one line.
    manifest = _write_manifest(folder, [_job(1), _job(3)])
    summary = run_batch(manifest, out, model=str(tiny_model_dir), overwrite=True, retry_failed=True)
    assert (summary.done, summary.failed) == (2, 0)
    recs = _records(out)
    assert sorted(r["id"] for r in recs) == ["job-1", "job-3"] and all(r["status"] == "ok" for r in recs)


def test_torn_last_line_is_dropped_and_job_rerun(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.append({"id": "a", "status": "ok"})
    with open(log.path, "a") as fh:
        fh.write('{"id": "b", "sta')  # kill -9 in the middle of a write
    assert [r["id"] for r in log.read()] == ["a"]
    assert log.path.read_text() == '{"id": "a", "status": "ok"}\n'
    log.append({"id": "b", "status": "ok"})
    assert [r["id"] for r in log.read()] == ["a", "b"]


def test_shards_are_disjoint_and_cover_the_manifest(reference):
    manifest, _, _ = reference
    jobs = load_manifest(manifest)
    for n in (1, 2, 3, 7):
        parts = [select_shard(jobs, parse_shard(f"{i}/{n}")) for i in range(n)]
        ids = [j.id for part in parts for j in part]
        assert sorted(ids) == sorted(j.id for j in jobs) and len(ids) == len(set(ids))


def test_shard_run_only_touches_its_jobs(reference, tiny_model_dir, tmp_path):
    manifest, ref_out, _ = reference
    rc = main(
        ["batch", str(manifest), "--out", str(tmp_path), "--model", str(tiny_model_dir), "--shard", "1/3"]
    )
    assert rc == 0  # shard 1/3 = job-1, job-4: both succeed
    assert sorted(r["id"] for r in _records(tmp_path)) == ["job-1", "job-4"]
    assert np.array_equal(_pixels(tmp_path / "job-4.png"), _pixels(ref_out / "job-4.png"))


# --- manifest errors: exit 2, one line, nothing written ---------------------------------

BAD_MANIFESTS = {
    "not JSON": ('{"id": "a",\n', "not valid JSON"),
    "not an object": ("[1, 2]\n", "JSON object"),
    "missing field": (json.dumps({"id": "a", "image": "in.png"}) + "\n", "missing masks"),
    "unknown field": (json.dumps(_job(1, promt="x")) + "\n", "unknown key 'promt'"),
    "path escapes folder": (json.dumps(_job(1, image="../in.png")) + "\n", "outside the manifest"),
    "absolute path outside": (json.dumps(_job(1, masks=["/etc/passwd"])) + "\n", "outside the manifest"),
    "id with a slash": (json.dumps(_job(1, id="../evil")) + "\n", "id '../evil'"),
    "hidden id": (json.dumps(_job(1, id=".hidden")) + "\n", "id '.hidden'"),
    "duplicate id": (
        json.dumps(_job(1, id="A")) + "\n" + json.dumps(_job(2, id="a")) + "\n",
        "repeats line 1",
    ),
    "empty manifest": ("\n\n", "holds no jobs"),
    "bad option": (json.dumps(_job(1, options={"steps": 0})) + "\n", "line 1: num_inference_steps"),
    "seed is a float": (json.dumps(_job(1, seed=1.5)) + "\n", "'seed' must be int"),
    "masks not strings": (json.dumps(_job(1, masks=[1])) + "\n", "must be a mask path or an object"),
    "controls without multimodal": (json.dumps(_job(1, controls=["edge=auto"])) + "\n", "need"),
    "control outside the folder": (
        json.dumps(_job(1, method="multimodal", options={}, controls=["edge=../e.png"])) + "\n",
        "outside",
    ),
    "malformed control": (
        json.dumps(_job(1, method="multimodal", options={}, controls=["edge"])) + "\n",
        "KIND=VALUE",
    ),
    "multimodal control for a missing region": (
        json.dumps(_job(1, method="multimodal", options={}, controls=["3:edge=auto"])) + "\n",
        "region 3",
    ),
    "multimodal unknown kind": (
        json.dumps(_job(1, method="multimodal", options={}, controls=["depth=auto"])) + "\n",
        "kind must be",
    ),
    "multimodal option typo": (
        json.dumps(_job(1, method="multimodal", options={"lamda": 1})) + "\n",
        "unknown option",
    ),
}


@pytest.mark.parametrize("name", list(BAD_MANIFESTS))
def test_bad_manifest_exit_2(name, tmp_path, image64, capsys):
    text, fragment = BAD_MANIFESTS[name]
    folder = _inputs(tmp_path / "data", image64)
    (folder / "jobs.jsonl").write_text(text)
    before = _hashes(folder)
    rc = main(["batch", str(folder / "jobs.jsonl"), "--out", str(tmp_path / "out"), "--model", "unused"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("regionedit: error:")
    assert fragment in err[0], err[0]
    assert _hashes(folder) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["2/2", "x", "1/0", "-1/2", "1"])
def test_bad_shard(text):
    with pytest.raises(InvalidInputError, match="I/N"):
        parse_shard(text)


def test_missing_manifest_and_bad_model_exit_2(tmp_path, image64, capsys):
    assert main(["batch", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    folder = _inputs(tmp_path / "data", image64)
    manifest = _write_manifest(folder, [_job(1)])
    assert (
        main(["batch", str(manifest), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "nope")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "manifest not found" in err[0] and "not found" in err[1]
    assert not os.path.exists(tmp_path / "o" / "job-1.png")


def test_multimodal_jobs_equal_the_library_edit(tiny_components, tiny_model_dir, image64, tmp_path):
    """A multimodal line (edge control, own ControlNet; no mask: estimated; two regions with a
    control for the second) is the library's edit."""
    from regionedit.multimodal import Condition, MultimodalOptions
    from regionedit.multimodal import edit as multimodal_edit

    from .test_multimodal import make_controlnet

    folder = _inputs(tmp_path / "data", image64)
    make_controlnet(tiny_components["unet"], 0).save_pretrained(folder / "cn", safe_serialization=True)
    opts = {"steps": 4, "grad_steps": 2, "preservation_weight": 0.3}
    common = {"method": "multimodal", "prompts": ["a blue circle"], "background_prompt": "a red square",
              "controls": ["edge=auto"], "controlnets": {"edge": "cn"}, "options": opts}  # fmt: skip
    jobs = [{"id": "boxed", "image": "in.png", "masks": ["m1.png"], **common},
            {"id": "estimated", "image": "in.png", "seed": 3, **common},
            {"id": "two", "image": "in.png", "masks": ["m1.png", "m2.png"], **common,
             "prompts": ["a blue circle", "a green square"], "controls": ["2:edge=auto"]}]  # fmt: skip
    out = tmp_path / "out"
    summary = run_batch(_write_manifest(folder, jobs), out, model=str(tiny_model_dir))
    assert (summary.done, summary.failed) == (3, 0), summary.failures
    meta = edit_api.read_metadata(out / "boxed.png")
    assert meta["method"] == "multimodal" and meta["controls"][0].startswith("edge=")
    assert meta["options"]["preservation_weight"] == 0.3 and meta["options"]["optimize_steps"] == 2

    from regionedit.models.controlnet import load_controlnet

    model = edit_api.load(str(tiny_model_dir))
    net = load_controlnet(folder / "cn", model, "edge")
    for job, mask, seed in (("boxed", folder / "m1.png", 0), ("estimated", None, 3)):
        ref = multimodal_edit(
            model, image64, "a blue circle", "a red square", mask=mask, controlnets=[net],
            conditions=[Condition("edge", "auto")], generator=torch.Generator().manual_seed(seed),
            options=MultimodalOptions(grad_steps=2, preservation_weight=0.3, num_inference_steps=4, optimize_steps=2),
        )  # fmt: skip
        assert np.array_equal(_pixels(out / f"{job}.png"), np.asarray(ref.image)), job
    assert not np.array_equal(_pixels(out / "boxed.png"), _pixels(out / "estimated.png"))
    from regionedit import Region

    regions = [Region(folder / "m1.png", "a blue circle"), Region(folder / "m2.png", "a green square")]
    ref = multimodal_edit(
        model, image64, source_prompt="a red square", regions=regions, controlnets=[net],
        conditions=[Condition("edge", "auto", region=1)], generator=torch.Generator().manual_seed(0),
        options=MultimodalOptions(grad_steps=2, preservation_weight=0.3, num_inference_steps=4, optimize_steps=2),
    )  # fmt: skip
    assert np.array_equal(_pixels(out / "two.png"), np.asarray(ref.image))
