"""The README runs as written: its shell and Python blocks, in order, in an empty folder, with the
installed package and the mini models; what its text says of the outputs holds."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from regionedit.metrics import image_metrics

README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = README.parent / "docs"
sys.path.insert(0, str(DOCS))
from readme_pictures import draw  # noqa: E402

SKIP = "<!-- not run by the README test:"


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every bash and python block not marked as not run."""
    out = []
    for m in re.finditer(r"(?:^(<!--[^\n]*-->)\n)?^```(bash|python)\n(.*?)^```$", text, re.S | re.M):
        if not (m.group(1) or "").startswith(SKIP):
            out.append((m.group(2), m.group(3)))
    return out


def claimed_db(text: str, name: str) -> float:
    """The background PSNR the README states for output ``name``: "``name`` keeps ... **X dB**"."""
    m = re.search(rf"`{re.escape(name)}` keeps\s+the\s+input\s+at\s+\*\*([\d.]+) dB\*\*", text)
    assert m, f"the README states no background PSNR for {name}"
    return float(m.group(1))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _masks(*paths: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("L")) > 127 for p in paths]


def test_the_readme_runs_as_written(tmp_path):
    text = README.read_text()
    found = blocks(text)
    assert [lang for lang, _ in found].count("python") >= 2 and len(found) >= 5
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    for lang, code in found:
        argv = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"this README block failed:\n{code}\n{run.stderr[-2000:]}"
    scene, mm = tmp_path / "scene", tmp_path / "mm"
    lomoe = image_metrics(_read(scene / "image.png"), _read(tmp_path / "edited-cli.png"),
                          _masks(scene / "mask_1.png", scene / "mask_2.png"))  # fmt: skip
    assert abs(lomoe["bg_psnr"] - claimed_db(text, "edited-cli.png")) < 0.1
    words = image_metrics(_read(scene / "image.png"), _read(tmp_path / "edited-words.png"),
                          _masks(scene / "mask_1.png", scene / "mask_2.png"))  # fmt: skip
    assert abs(words["bg_psnr"] - claimed_db(text, "edited-words.png")) < 0.1
    found = _masks(tmp_path / "edited-words_mask_1.png", tmp_path / "edited-words_mask_2.png")
    assert all(
        iou(f, g) > 0.8
        for f, g in zip(found, _masks(scene / "mask_1.png", scene / "mask_2.png"), strict=True)
    )
    square = _masks(tmp_path / "square.png")[0]
    x0, y0, x1, y1 = json.loads((scene / "scene.json").read_text())["objects"][2]["bbox"]
    assert square[y0:y1, x0:x1].mean() > 0.9 and square.sum() < 1.2 * (x1 - x0) * (
        y1 - y0
    )  # the purple square
    multimodal = image_metrics(
        _read(mm / "image.png"),
        _read(tmp_path / "mm-edited.png"),
        _masks(mm / "mask_1.png", mm / "mask_2.png"),
    )
    assert abs(multimodal["bg_psnr"] - claimed_db(text, "mm-edited.png")) < 0.1
    assert np.array_equal(
        _read(tmp_path / "edited.png"), _read(tmp_path / "edited-cli.png")
    )  # "the same pixels"
    assert np.array_equal(_read(tmp_path / "mm-edited-py.png"), _read(tmp_path / "mm-edited.png"))
    assert (tmp_path / "edited-again.png").exists() and (tmp_path / "demo-flow" / "comparison.png").exists()
    # the pictures the README shows are these outputs (redraw: python docs/readme_pictures.py DIR)
    (tmp_path / "pictures").mkdir()
    for drawn in draw(tmp_path, tmp_path / "pictures"):
        shown = _read(DOCS / drawn.name).astype(int)
        assert shown.shape == _read(drawn).shape and np.abs(shown - _read(drawn)).mean() < 2, drawn.name


def test_blocks_marked_not_run_are_left_out():
    text = "```bash\na\n```\n<!-- not run by the README test: why -->\n```python\nb\n```\n```python\nc\n```\n"
    assert blocks(text) == [("bash", "a\n"), ("python", "c\n")]
