"""What a user sees around a successful CLI edit: a quiet stderr, files with the usual permissions."""

import os
import stat
import subprocess
import sys

import numpy as np
from PIL import Image

from regionedit.io import save_image, write_text_atomic

from .conftest import box

PROGRESS = ("it/s]", "s/it]", "%|")


def test_a_successful_edit_prints_no_warnings(tiny_model_dir, image64, tmp_path):
    image64.save(tmp_path / "in.png")
    Image.fromarray(box(8, 24, 8, 24).astype(np.uint8) * 255).save(tmp_path / "m.png")
    argv = [sys.executable, "-m", "regionedit.cli", "edit", "--model", str(tiny_model_dir), "--image",
            str(tmp_path / "in.png"), "--mask", str(tmp_path / "m.png"), "--prompt", "a blue circle",
            "--background-prompt", "a red square", "--steps", "2", "--out", str(tmp_path / "out.png")]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # warnings shown as a user's Python shows them
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    other = [line for line in lines if not any(p in line for p in PROGRESS)]
    assert other == [], other  # our progress bars only
    assert any(line.startswith("edit:") for line in lines)  # and they are there
    assert done.stdout.strip() == str(tmp_path / "out.png")


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_image(Image.new("RGB", (4, 4)), tmp_path / "a.png")
        write_text_atomic(tmp_path / "b.json", "{}")
        os.umask(0o077)
        save_image(Image.new("RGB", (4, 4)), tmp_path / "c.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.png").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "c.png").stat().st_mode) == 0o600


def test_version_flag(capsys):
    import pytest

    import regionedit
    from regionedit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"regionedit {regionedit.__version__}"


def test_flags_that_do_not_apply_are_refused(tiny_model_dir, image64, tmp_path, capsys):
    from regionedit.cli import main

    image64.save(tmp_path / "in.png")
    base = ["edit", "--image", str(tmp_path / "in.png"), "--prompt", "x", "--out", str(tmp_path / "o.png")]
    cases = {
        "--device": (
            [
                "--device",
                "nonsense",
                "--background-prompt",
                "y",
                "--mask",
                str(tmp_path / "in.png"),
                "--model",
                str(tiny_model_dir),
            ],  # fmt: skip
            "device",
        ),
        "chunks for multimodal": (
            ["--method", "multimodal", "--chunk-size", "2"],
            "--chunk-size: not used by the multimodal",
        ),
        "config for a folder": (
            ["--method", "multimodal", "--model-config", str(tiny_model_dir), "--model", str(tiny_model_dir)],
            "single-file",
        ),  # fmt: skip
    }
    for name, (extra, fragment) in cases.items():
        assert main(base + extra) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fragment in err, (name, err)
    assert not (tmp_path / "o.png").exists()
