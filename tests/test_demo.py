import json

import numpy as np
from PIL import Image

from regionedit.demo import run_demo
from regionedit.lomoe import LoMOEOptions
from regionedit.shapes.evaluate import background_right, locate_object, text_to_image_accuracy, vae_psnr
from regionedit.shapes.judge import load_judge
from regionedit.shapes.world import make_scene, render


def test_demo_writes_every_file_and_a_report(tmp_path, tiny_model):
    opts = LoMOEOptions(num_inference_steps=2, bootstrap_steps=1)
    report = run_demo(tmp_path, seed=3, model=tiny_model, judge=load_judge(), options=opts)
    for name in ("input.png", "mask_1.png", "mask_2.png", "mask_3.png", "edited.png", "comparison.png"):
        assert (tmp_path / name).exists(), name
    assert Image.open(tmp_path / "comparison.png").width > 4 * 64 * 3
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["objects"] == report["objects"] and len(report["objects"]) == 3
    for obj in report["objects"]:
        assert obj["from"] != obj["to"] and obj["prompt"] == f"a {obj['to']['colour']} {obj['to']['shape']}"
    assert np.isfinite(report["background_psnr_db"])
    assert not list(tmp_path.glob("*.tmp"))


def test_locate_object_finds_the_rendered_shape():
    scene = make_scene(11, 1)
    image, masks = render(scene)
    found = locate_object(image, scene.background)
    assert found is not None and found[masks[0]].all()
    assert background_right(image, scene.background, found)
    flat = np.zeros_like(image) + np.array([128, 128, 128], np.uint8)
    assert locate_object(flat, "gray") is None


def test_eval_functions_run_on_a_tiny_model(tiny_model):
    assert np.isfinite(vae_psnr(tiny_model, n=4, batch=2))
    res = text_to_image_accuracy(tiny_model, load_judge(), n=3, steps=2, batch=3, progress=False)
    assert res["n"] == 3 and 0 <= res["colour"] <= res["object_found"] <= 1
