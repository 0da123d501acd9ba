"""One edit path: every front end builds the same options and pixels from the same inputs.

A tiny model folder carries recommended settings (``regionedit_settings.json``); a CLI edit, a
``--spec`` edit, a batch line, the web page's request and the library call must all start from
them and agree bit for bit.
"""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import regionedit
from regionedit.cli import main
from regionedit.edit_api import read_metadata

from .conftest import box

SETTINGS = {
    "lomoe": {
        "num_inference_steps": 3,
        "guidance_scale": 5.0,
        "bootstrap_steps": 1,
        "background_blend": True,
    },
    "multimodal": {
        "num_inference_steps": 4,
        "optimize_steps": 3,
        "loss_space": "noisy",
        "solver": "closed_form",
    },
}
CAPTION = "a red square and a blue square on a gray background"
PROMPTS = ["a blue circle", "a green triangle"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_model_dir, image64):
    d = tmp_path_factory.mktemp("one-path")
    model = shutil.copytree(tiny_model_dir, d / "model")
    (model / "regionedit_settings.json").write_text(json.dumps(SETTINGS))
    image64.save(d / "in.png")
    for i, m in enumerate((box(6, 26, 6, 26), box(34, 58, 28, 56)), start=1):
        Image.fromarray(m.astype(np.uint8) * 255).save(d / f"m{i}.png")
    return d


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_cli_spec_batch_page_and_library_agree(folder, tmp_path, capsys):
    model_dir = str(folder / "model")
    flags = ["--image", str(folder / "in.png"), "--mask", str(folder / "m1.png"), "--prompt", PROMPTS[0],
             "--mask", str(folder / "m2.png"), "--prompt", PROMPTS[1], "--background-prompt", CAPTION]  # fmt: skip
    assert (
        main(["edit", "--model", model_dir, *flags, "--seed", "3", "--out", str(tmp_path / "cli.png")]) == 0
    )
    spec = {"image": "in.png", "masks": ["m1.png", "m2.png"], "prompts": PROMPTS, "background_prompt": CAPTION,
            "seed": 3, "model": model_dir, "out": str(tmp_path / "spec.png")}  # fmt: skip
    (folder / "spec.json").write_text(json.dumps(spec))
    assert main(["edit", "--spec", str(folder / "spec.json")]) == 0, capsys.readouterr().err
    job = {k: v for k, v in spec.items() if k not in ("model", "out")}
    (folder / "jobs.jsonl").write_text(json.dumps({"id": "job", **job}) + "\n")
    assert (
        main(["batch", str(folder / "jobs.jsonl"), "--model", model_dir, "--out", str(tmp_path / "batch")])
        == 0
    )

    from regionedit.ui.app import build_app
    from regionedit.ui.engine import MAX_OBJECTS, page_values

    model = regionedit.load(model_dir)
    app = build_app(model, model_name=model_dir, output_dir=tmp_path / "page")
    base = app.engine.options("lomoe", {"paste_back": True})
    fields = {"num_inference_steps": float(base.num_inference_steps), "guidance_scale": base.guidance_scale,
              "paste_back": False}  # what the page sends, paste-back unticked  # fmt: skip
    page = app.engine.edit(
        Image.open(folder / "in.png"),
        [np.stack([box(6, 26, 6, 26)] * 4, -1) * 255, np.stack([box(34, 58, 28, 56)] * 4, -1) * 255],
        PROMPTS + [""] * (MAX_OBJECTS - 2),
        [""] * MAX_OBJECTS,
        CAPTION,
        seed=3,
        options=app.engine.options("lomoe", page_values(fields, {"num_inference_steps": int}), base=base),
    )
    library = regionedit.edit(
        model,
        folder / "in.png",
        [regionedit.Region(folder / "m1.png", PROMPTS[0]), regionedit.Region(folder / "m2.png", PROMPTS[1])],
        background_prompt=CAPTION,
        generator=torch.Generator().manual_seed(3),
        progress=False,
    )

    outputs = [tmp_path / "cli.png", tmp_path / "spec.png", tmp_path / "batch" / "job.png", page.png_path]
    expected = dataclasses.asdict(regionedit.make_options("lomoe", {}, SETTINGS["lomoe"]))
    for path in outputs:
        assert read_metadata(path)["options"] == expected, path
        assert np.array_equal(pixels(path), np.asarray(library.image)), path
    assert library.options == expected
    assert expected["num_inference_steps"] == 3 and expected["background_blend"] is True


def test_multimodal_cli_and_spec_start_from_the_models_settings(folder, tmp_path):
    flags = ["--method", "multimodal", "--model", str(folder / "model"), "--image", str(folder / "in.png"),
             "--mask", str(folder / "m1.png"), "--prompt", PROMPTS[0], "--source-prompt", CAPTION]  # fmt: skip
    assert main(["edit", *flags, "--lambda", "0.3", "--out", str(tmp_path / "a.png")]) == 0
    assert main(["edit", *flags, "--steps", "8", "--out", str(tmp_path / "b.png")]) == 0
    a, b = read_metadata(tmp_path / "a.png")["options"], read_metadata(tmp_path / "b.png")["options"]
    assert (a["num_inference_steps"], a["optimize_steps"], a["solver"]) == (4, 3, "closed_form")
    assert a["preservation_weight"] == 0.3 and b["preservation_weight"] == 0.6
    assert (b["num_inference_steps"], b["optimize_steps"]) == (8, 6)  # t_u keeps its share of the steps


def test_mini_edit_without_tuning_flags_is_the_documented_recipe(tmp_path):
    """`regionedit edit --model mini` with image, masks, prompts and caption only: the recipe's pixels."""
    from regionedit.shapes.world import make_scene, write_scene

    scene = make_scene(4, 3, size=128)
    d = write_scene(scene, tmp_path / "scene")
    prompts = ["a yellow square", "a white circle"]
    argv = ["edit", "--image", str(d / "image.png"), "--mask", str(d / "mask_1.png"), "--prompt", prompts[0],
            "--mask", str(d / "mask_2.png"), "--prompt", prompts[1], "--background-prompt", scene.caption,
            "--out", str(tmp_path / "plain.png")]  # fmt: skip
    assert main(argv) == 0
    # the recipe measured on the mini model (BENCHMARKS.md), spelled out
    recipe = regionedit.LoMOEOptions(
        num_inference_steps=25, guidance_scale=20.0, guidance_rescale=0.9, region_negative_prompt="",
        background_blend=True,
    )  # fmt: skip
    model = regionedit.load("mini")
    regions = [regionedit.Region(d / f"mask_{i}.png", p) for i, p in enumerate(prompts, start=1)]
    ref = regionedit.edit(model, d / "image.png", regions, scene.caption, options=recipe, progress=False)
    assert np.array_equal(pixels(tmp_path / "plain.png"), np.asarray(ref.image))


def test_a_manifest_is_checked_against_the_models_settings_before_any_job(folder, tmp_path, capsys):
    line = {"id": "mm", "method": "multimodal", "image": "in.png", "prompts": ["a blue circle"],
            "background_prompt": CAPTION, "options": {"optimize_steps": 5}}  # more than the model's 4 steps  # fmt: skip
    (folder / "bad.jsonl").write_text(json.dumps(line) + "\n")
    out = tmp_path / "out"
    assert (
        main(["batch", str(folder / "bad.jsonl"), "--model", str(folder / "model"), "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert "manifest line 1" in err and "optimize_steps" in err and not out.exists()
