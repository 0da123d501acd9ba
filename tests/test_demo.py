import json

import numpy as np
import torch
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


class _PoolModel:
    """A 4x "VAE" whose decoder is local (nearest upsampling) or, with ``spill``, adds each
    image's mean latent everywhere, as GroupNorm statistics and attention do."""

    def __init__(self, spill: bool):
        self.spill, self.device, self.vae_scale_factor = spill, "cpu", 4
        self.vae = type("V", (), {"config": type("C", (), {"sample_size": 32})()})()

    def encode(self, x):
        return torch.nn.functional.avg_pool2d(x, 4)

    def decode(self, z):
        x = torch.nn.functional.interpolate(z, scale_factor=4, mode="nearest")
        if self.spill:
            x = x + 0.5 * (z.mean(dim=(2, 3), keepdim=True) - z.mean())
        return ((x + 1) / 2).clamp(0, 1)


def test_decoder_locality_falls_when_pasted_content_reaches_the_background():
    from regionedit.shapes.evaluate import decoder_locality_psnr

    local = decoder_locality_psnr(_PoolModel(spill=False), n=6, batch=4)
    spill = decoder_locality_psnr(_PoolModel(spill=True), n=6, batch=4)
    assert np.isfinite(local) and local > spill + 1.0, (local, spill)
