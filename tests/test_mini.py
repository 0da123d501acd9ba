"""The bundled mini model: loads by name and by diffusers, and the CLI edit is deterministic."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from regionedit.cli import main
from regionedit.edit_api import read_metadata
from regionedit.metrics import background_of, background_psnr
from regionedit.models.loading import MINI_DIR
from regionedit.shapes.judge import load_judge
from regionedit.shapes.world import make_scene, render, write_scene


def test_mini_is_a_small_diffusers_model():
    from diffusers import StableDiffusionPipeline

    size = sum(p.stat().st_size for p in MINI_DIR.rglob("*") if p.is_file())
    assert size <= 40 * 2**20, size
    pipe = StableDiffusionPipeline.from_pretrained(str(MINI_DIR))
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 4  # 128x128 images, 32x32 latents
    assert pipe.vae.config.sample_size == 128 and pipe.unet.config.sample_size == 32


def test_cli_edit_three_masks_is_deterministic_and_keeps_the_background(tmp_path):
    scene = make_scene(21, 3, size=128)
    d = write_scene(scene, tmp_path / "scene")
    before = hashlib.sha256((d / "image.png").read_bytes()).hexdigest()
    targets = ["a white square", "a yellow circle", "a purple triangle"]
    args = [
        "edit",
        "--image",
        str(d / "image.png"),
        "--background-prompt",
        scene.caption,
        "--steps",
        "25",
        "--bootstrap-steps",
        "20",
        "--region-negative-prompt",
        "",
        "--guidance-scale",
        "20",
        "--background-blend",
        "--guidance-rescale",
        "0.9",
        "--seed",
        "5",
    ]
    for i, p in enumerate(targets, start=1):
        args += ["--mask", str(d / f"mask_{i}.png"), "--prompt", p]
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.png")]) == 0
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert np.array_equal(a, b)
    assert hashlib.sha256((d / "image.png").read_bytes()).hexdigest() == before
    masks = [np.asarray(Image.open(d / f"mask_{i}.png")) > 127 for i in (1, 2, 3)]
    src = np.asarray(Image.open(d / "image.png"))
    # Regression guards at or below the measured result (the demo's settings: all three objects
    # judged as asked; the black background drifts towards dark grey-green, the mini model's
    # known weakness on black scenes, 16.2 dB before session 14; BENCHMARKS.md).
    verdicts = [load_judge().classify(a, m) for m in masks]
    assert [f"a {v.colour} {v.shape}" for v in verdicts] == targets
    assert background_psnr(src, a, background_of(masks, src.shape[:2])) >= 15.0
    meta = read_metadata(tmp_path / "a.png")
    assert meta["prompts"] == targets and meta["seed"] == 5 and meta["options"]["num_inference_steps"] == 25


@pytest.mark.parametrize("kind", ["edge", "scribble"])
def test_shipped_controlnets_fit_the_mini_model_and_run_from_the_cli(tmp_path, kind):
    from regionedit.models.loading import DATA_DIR
    from regionedit.multimodal.conditions import canny_edges, scribble_from_image

    size = sum(p.stat().st_size for p in (DATA_DIR / "controlnet-mini").rglob("*") if p.is_file())
    assert size <= 15 * 2**20, size  # every shipped ControlNet together
    scene = make_scene(4, 2)
    d = write_scene(scene, tmp_path / "scene")
    target = make_scene(5, 2)  # any other layout: its edge map is the instruction
    edges = tmp_path / "edges.png"
    to_map = canny_edges if kind == "edge" else scribble_from_image
    to_map(Image.fromarray(render(target)[0])).save(edges)
    out = tmp_path / "mm.png"
    args = ["edit", "--method", "multimodal", "--image", str(d / "image.png"), "--prompt", target.caption,
            "--source-prompt", scene.caption, "--control", f"{kind}={edges}", "--steps", "6", "--seed", "1",
            "--save-masks", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    edited = np.asarray(Image.open(out))
    assert edited.shape == (64, 64, 3)
    assert np.asarray(Image.open(tmp_path / f"mm_control_{kind}.png")).max() == 255
    # the estimated mask is not empty: the edge map asks for new shapes somewhere
    assert np.asarray(Image.open(tmp_path / "mm_mask.png")).max() == 255
