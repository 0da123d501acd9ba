"""The mistakes users make: one line and exit 2, nothing written, no waiting; quiet libraries."""

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from regionedit.cli import main

from .test_batch import _inputs, _job, _write_manifest


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regionedit: error:") and "Traceback" not in err, err
    return lines[0]


def test_serve_on_a_busy_port(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", "nosuch/model"]) == 2
    line = _one_line(capsys)
    assert f"127.0.0.1:{port}" in line and "pass another --port" in line  # said before the model is looked at


def test_shapes_onto_a_file_and_into_a_folder_of_a_bigger_scene(tmp_path, capsys):
    (tmp_path / "image.png").write_bytes(b"keep me")
    assert main(["shapes", "--out", str(tmp_path / "image.png")]) == 2
    assert "is a file; give a folder" in _one_line(capsys)
    assert (tmp_path / "image.png").read_bytes() == b"keep me"
    scene = tmp_path / "scene"
    assert main(["shapes", "--objects", "4", "--out", str(scene)]) == 0
    (scene / "notes.txt").write_text("mine")
    assert main(["shapes", "--objects", "2", "--target", "1=blue circle", "--out", str(scene)]) == 0
    names = sorted(p.name for p in scene.iterdir())
    assert names == ["image.png", "mask_1.png", "mask_2.png", "notes.txt", "scene.json", "target.png",
                     "target_edges.png"]  # fmt: skip
    meta = json.loads((scene / "scene.json").read_text())
    assert len(meta["objects"]) == 2 and meta["target_objects"][0]["colour"] == "blue"
    assert meta["target_caption"].startswith("a blue circle")
    assert main(["shapes", "--objects", "2", "--out", str(scene)]) == 0  # no target now: its files go
    assert not (scene / "target.png").exists() and (scene / "notes.txt").exists()
    capsys.readouterr()
    assert main(["shapes", "--objects", "2", "--target", "3=red", "--out", str(scene)]) == 2
    assert "objects 1..2" in _one_line(capsys)


def test_an_unknown_model_name_fails_fast_offline_naming_the_bundled_ones(
    tmp_path, image64, capsys, monkeypatch
):
    monkeypatch.delenv(
        "HF_HUB_OFFLINE", raising=False
    )  # even online: a name that is no hub id is not looked up
    image64.save(tmp_path / "in.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(tmp_path / "m.png")
    start = time.perf_counter()
    code = main(["edit", "--model", "minii", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "m.png"),
                 "--prompt", "a", "--background-prompt", "b", "--out", str(tmp_path / "o.png")])  # fmt: skip
    seconds = time.perf_counter() - start
    line = _one_line(capsys)
    assert code == 2 and seconds < 5 and "'minii'" in line and "mini, mini-flow" in line
    assert "local_files_only" not in line and not (tmp_path / "o.png").exists()
    assert main(["demo", "--model", "nosuch", "--out", str(tmp_path / "demo")]) == 2
    assert "unknown model 'nosuch'" in _one_line(capsys) and not (tmp_path / "demo").exists()


def test_an_output_never_replaces_an_input(tmp_path, image64, capsys, tiny_model_dir):
    image64.save(tmp_path / "a.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(tmp_path / "m.png")
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    for out in ("a.png", "m.png"):
        code = main(["edit", "--model", str(tiny_model_dir), "--image", str(tmp_path / "a.png"), "--mask",
                     str(tmp_path / "m.png"), "--prompt", "x", "--background-prompt", "y",
                     "--out", str(tmp_path / ".." / tmp_path.name / out), "--overwrite"])  # fmt: skip
        assert code == 2 and "is an input of this edit" in _one_line(capsys)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_batch_shows_progress_and_a_line_per_failed_job(tmp_path, image64, tiny_model_dir, capsys):
    folder = _inputs(tmp_path / "data", image64)
    manifest = _write_manifest(
        folder, [_job(1, options={"steps": 2}), _job(2, masks=["small.png"], prompts=["x"])]
    )
    code = main(["batch", str(manifest), "--out", str(tmp_path / "out"), "--model", str(tiny_model_dir)])
    out, err = capsys.readouterr()
    assert code == 1 and "1 done, 1 failed" in out.replace("jobs ", "")
    assert "job job-2 (line 2) failed:" in err and "mask 1 is" in err
    assert "batch:" in err and "2/2" in err  # the bar, on stderr


def test_importing_and_loading_from_python_is_quiet(tmp_path):
    code = "import regionedit; m = regionedit.load('mini'); print('loaded', m.family)"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert run.returncode == 0 and run.stdout == "loaded sd\n" and run.stderr == "", run.stderr
    verbose = (
        "import logging; logging.basicConfig(); logging.getLogger('regionedit').setLevel(logging.INFO); "
        + code
    )
    run = subprocess.run(
        [sys.executable, "-c", verbose], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert run.returncode == 0 and run.stderr != ""  # the switch brings the libraries' bars back


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--steps", "0"], "--steps must be an integer in 1..1000"),
        (["--mask-threshold", "2"], "--mask-threshold must be in (0, 1]"),
        (["--lambda", "0.3"], "--lambda: need the multimodal method; add --method multimodal"),
    ],
)
def test_errors_name_the_flags_the_user_typed(flags, words, tmp_path, image64, tiny_model_dir, capsys):
    image64.save(tmp_path / "in.png")
    code = main(["edit", "--model", str(tiny_model_dir), "--image", str(tmp_path / "in.png"), "--mask",
                 str(tmp_path / "in.png"), "--prompt", "x", "--background-prompt", "y", "--out",
                 str(tmp_path / "o.png"), *flags])  # fmt: skip
    assert code == 2 and words in _one_line(capsys)
