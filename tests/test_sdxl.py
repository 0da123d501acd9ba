"""SDXL as a family: both editors, the request path and loading, on a tiny random SDXL."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import regionedit
from regionedit import ExecutionOptions, LoMOEOptions, MultimodalOptions, Region
from regionedit.cli import main
from regionedit.edit_api import read_metadata
from regionedit.errors import ModelLoadError

from .conftest import box_grid, null_edit_and_repeat, wide_image

FAST = LoMOEOptions(num_inference_steps=3, bootstrap_steps=1)
CAPTION = "a red square and a blue circle on a gray background"


@pytest.fixture(scope="module")
def model(sdxl_dir):
    return regionedit.load(sdxl_dir)  # loaded from the saved folder, as a user's model is


@pytest.fixture(scope="module")
def image():
    return wide_image(1)


def masks(n: int) -> list[np.ndarray]:
    """``n`` disjoint boxes on the 64x96 image."""
    return box_grid(n, 4, 4, (30, 23), (24, 16))


def test_loaded_as_sdxl_with_both_encoders_and_size_conditioning(model):
    assert model.family == "sdxl" and regionedit.describe(model.name).family == "sdxl"
    cond = model.encode_prompt(["", CAPTION])
    assert cond.embeds.shape == (2, 48, 64)  # both encoders' penultimate states, concatenated
    assert cond.extra["text_embeds"].shape == (2, 32)  # pooled, from the second encoder
    assert not cond.embeds[0].any() and not cond.extra["text_embeds"][0].any()  # force_zeros_for_empty_prompt
    inputs = model.denoiser_inputs(torch.zeros(3, 4, 16, 24), cond[[1, 1, 1]])
    assert inputs["added_cond_kwargs"]["time_ids"].tolist() == [[64, 96, 0, 0, 64, 96]] * 3


def test_null_edit_reproduces_the_inversion_and_seeds_repeat(model, image):
    null_edit_and_repeat(model, image, masks(1)[0], FAST, atol=1e-4)


@pytest.mark.parametrize("n", [1, 2, 7])
def test_regions(model, image, n):
    regions = [Region(m, "a yellow circle") for m in masks(n)]
    res = regionedit.edit(model, image, regions, CAPTION, FAST, progress=False)
    assert res.masks.shape == (n + 1, 16, 24) and np.isfinite(res.latents.numpy()).all()
    outside = res.masks[0] == 1
    assert not torch.allclose(res.latents[0][:, ~outside], res.inversion.latents[0][:, ~outside], atol=1e-3)


def test_chunked_gradient_equals_unchunked(model, image):
    regions = [Region(m, "a yellow circle") for m in masks(3)]
    full = regionedit.edit(model, image, regions, CAPTION, FAST, progress=False)
    chunked = regionedit.edit(model, full.inversion, regions, options=FAST, progress=False,
                              execution=ExecutionOptions(chunk_size=1))  # fmt: skip
    assert torch.allclose(full.latents, chunked.latents, atol=1e-4)
    assert chunked.timings["unet_calls"] > full.timings["unet_calls"]


def test_every_lomoe_option_runs_on_sdxl(model, image):
    import dataclasses

    regions = [Region(m, "a yellow circle", start=0.0 if i else 0.34) for i, m in enumerate(masks(3))]
    regions[1] = Region(
        regions[1].mask | masks(3)[2], "a white square", negative_prompt="blurry"
    )  # overlaps 3
    opts = dataclasses.replace(FAST, feather=1.0, overlap="last", paste_back=True, background_blend=True,
                               guidance_rescale=0.7)  # fmt: skip
    res = regionedit.edit(model, image, regions, CAPTION, opts, progress=False)
    union = np.any(np.stack([r.mask for r in regions]), axis=0)
    assert np.array_equal(np.asarray(res.image)[~union], np.asarray(image)[~union])  # pasted back exactly


def test_bench_takes_an_sdxl_folder(sdxl_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["bench", "shapes", "--model", str(sdxl_dir), "--n", "1", "--min-masks", "2", "--max-masks", "2",
                 "--methods", "lomoe,sdedit", "--steps", "1", "--no-judge", "--out", str(out)]) == 0  # fmt: skip
    assert set(json.loads((out / "summary.json").read_text())["methods"]) == {"lomoe", "sdedit"}


def test_multimodal_with_a_tiny_sdxl_controlnet(model, image):
    from diffusers import ControlNetModel

    from regionedit.multimodal import Condition
    from regionedit.multimodal import edit as multimodal_edit

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ControlNetModel.from_unet(model.unet, conditioning_embedding_out_channels=(8, 16, 32))
    with torch.no_grad():  # random output convolutions, so the net's residuals reach the UNet
        g = torch.Generator().manual_seed(0)
        for name, p in net.named_parameters():
            if "zero_conv" in name or "controlnet_mid_block" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    opts = MultimodalOptions(num_inference_steps=3, optimize_steps=2, grad_steps=2)
    kw = dict(mask=masks(1)[0], options=opts, generator=torch.Generator().manual_seed(0))
    with_map = multimodal_edit(model, image, "a blue circle", CAPTION, controlnets=[net],
                               conditions=[Condition("edge", "auto")], **kw)  # fmt: skip
    kw["generator"] = torch.Generator().manual_seed(0)
    text_only = multimodal_edit(model, image, "a blue circle", CAPTION, **kw)
    assert with_map.image.size == (96, 64) and np.isfinite(with_map.latents.numpy()).all()
    assert not torch.allclose(with_map.latents, text_only.latents, atol=1e-4)  # the net reaches the UNet
    estimated = multimodal_edit(model, image, "a blue circle", CAPTION, controlnets=[net], options=opts,
                                conditions=[Condition("scribble", "auto")], generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert estimated.mask_estimated and set(estimated.mask_parts) == {"text", "diff", "layout"}


def test_a_batch_line_and_the_page_edit_an_sdxl_folder(sdxl_dir, image, tmp_path):
    from regionedit.ui.app import build_app
    from regionedit.ui.engine import MAX_OBJECTS

    image.save(tmp_path / "in.png")
    Image.fromarray(masks(1)[0].astype(np.uint8) * 255).save(tmp_path / "m.png")
    job = {"id": "xl", "image": "in.png", "masks": ["m.png"], "prompts": ["a green triangle"],
           "background_prompt": CAPTION, "options": {"steps": 3, "bootstrap_steps": 1}}  # fmt: skip
    (tmp_path / "jobs.jsonl").write_text(json.dumps(job) + "\n")
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "jobs.jsonl"), "--model", str(sdxl_dir), "--out", str(out)]) == 0
    app = build_app(regionedit.load(sdxl_dir), model_name=str(sdxl_dir), output_dir=tmp_path / "page")
    layer = np.stack([masks(1)[0]] * 4, -1).astype(np.uint8) * 255
    page = app.engine.edit(image, [layer], ["a green triangle"] + [""] * (MAX_OBJECTS - 1), [""] * MAX_OBJECTS,
                           CAPTION, options=dict(paste_back=False, num_inference_steps=3, bootstrap_steps=1))  # fmt: skip
    for path in (out / "xl.png", page.png_path):
        meta = read_metadata(path)
        assert meta["model"] == str(sdxl_dir) and meta["options"]["num_inference_steps"] == 3
    with Image.open(out / "xl.png") as a, Image.open(page.png_path) as b:
        assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def test_half_precision_keeps_an_upcast_vae_in_float32(sdxl_components):
    import copy

    from regionedit.models.loading import from_components

    model = from_components(copy.deepcopy(sdxl_components), name="half", dtype=torch.float16)
    assert model.vae_dtype == torch.float32 and next(model.vae.parameters()).dtype == torch.float32
    assert next(model.unet.parameters()).dtype == torch.float16


def test_single_files_need_a_config_offline(tmp_path, capsys, image, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(4)}, path)
    assert regionedit.describe(path).family == "sdxl"  # told by its tensor names
    with pytest.raises(ModelLoadError, match="--model-config"):
        regionedit.load(path)
    image.save(tmp_path / "in.png")
    Image.fromarray(masks(1)[0].astype(np.uint8) * 255).save(tmp_path / "m.png")
    code = main(["edit", "--model", str(path), "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "m.png"),
                 "--prompt", "x", "--background-prompt", "y", "--out", str(tmp_path / "o.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert (
        code == 2 and err.count("\n") == 1 and "--model-config" in err and not (tmp_path / "o.png").exists()
    )
    Image.new("L", (8, 8)).save(tmp_path / "small.png")  # a bad input is said before the model is loaded
    code = main(["edit", "--model", str(path), "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "small.png"),
                 "--prompt", "x", "--background-prompt", "y", "--out", str(tmp_path / "o.png")])  # fmt: skip
    assert code == 2 and "mask 1 is 8x8" in capsys.readouterr().err
    flux = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(4)}, flux)
    assert regionedit.describe(flux).family == "flux"  # a FLUX transformer file: configs and encoders needed
    with pytest.raises(ModelLoadError, match="single-file FLUX.1 checkpoint.*--model-config"):
        regionedit.load(flux)
