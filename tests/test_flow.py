"""Flow-matching transformers (FLUX, SD3) as families: inversion, both editors, the token grid,
joint-attention capture and loading, on tiny random models."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import regionedit
from regionedit import ExecutionOptions, LoMOEOptions, MultimodalOptions, Region
from regionedit.inversion import InversionOptions, ddim_invert
from regionedit.models.loading import from_components
from regionedit.multimodal import edit as edit_multimodal

from .conftest import box_grid, build_flux_components, build_sd3_components, null_edit_and_repeat, wide_image

FAST = LoMOEOptions(
    num_inference_steps=3, bootstrap_steps=2
)  # step 0 is at σ = 1: pure noise, nothing to bootstrap
CAPTION = "a red square and a blue circle on a gray background"
BUILDERS = {"flux": build_flux_components, "sd3": build_sd3_components}


def _model(family: str):
    model = from_components(BUILDERS[family](), name=f"tiny-{family}")
    model.max_sequence_length = 24  # T5 tokens (FLUX) / T5 slots (SD3): small and fast
    return model


@pytest.fixture(scope="module", params=["flux", "sd3"])
def model(request):
    return _model(request.param)


@pytest.fixture(scope="module")
def image():
    return wide_image(3)


def masks(n: int) -> list[np.ndarray]:
    """``n`` disjoint boxes on the 64x96 image, each a whole number of 8-px tokens."""
    return box_grid(n, 8, 8, (32, 24), (16, 16))


def test_family_traits(model):
    assert model.prediction_type == "flow" and model.patch_size == 2 and model.size_factor == 8
    assert model.guidance == ("distilled" if model.family == "flux" else "cfg")
    with pytest.raises(regionedit.errors.ImageSizeError, match="multiples of 8"):
        model.check_image_size(60, 64)  # a multiple of the VAE's 4, not of a 2x2 token
    sched = model.scheduler(4, (16, 24))
    z0, noise = torch.randn(1, 4, 16, 24), torch.randn(1, 4, 16, 24)
    t = sched.timesteps[1]
    zt = sched.add_noise(z0, noise, t)
    v = noise - z0  # the exact velocity
    assert torch.allclose(sched.to_x0(v, zt, t), z0, atol=1e-5)
    assert torch.allclose(sched.to_epsilon(v, zt, t), noise, atol=1e-5)
    # Euler with the exact velocity walks the straight path: one step lands on the next noise level
    assert torch.allclose(sched.step(v, t, zt), sched.add_noise(z0, noise, sched.timesteps[2]), atol=1e-5)


def test_null_edit_reproduces_the_inversion_and_seeds_repeat(model, image):
    first = null_edit_and_repeat(model, image, masks(1)[0], FAST, atol=1e-5)
    other = regionedit.edit(model, image, [Region(masks(1)[0], "a green triangle")], CAPTION, FAST,
                            generator=torch.Generator().manual_seed(5), progress=False)  # fmt: skip
    assert not torch.equal(first.latents, other.latents)  # the bootstrap colours differ


@pytest.mark.parametrize("n", [1, 2, 7])
def test_regions_edit_and_losses_are_finite(model, image, n):
    regions = [
        Region(m, f"a {c} triangle") for m, c in zip(masks(n), ["green", "red", "blue"] * 3, strict=False)
    ]
    result = regionedit.edit(model, image, regions, CAPTION, FAST, progress=False)
    assert result.masks.shape == (n + 1, 16, 24) and len(result.mask_images) == n
    assert all(np.isfinite(v) for step in result.losses for v in step.values())
    assert result.losses[0]["cross_attention"] > 0 and result.losses[0]["background"] >= 0
    per_branch = 1 if model.guidance == "distilled" else 2
    # per step: the recomputed reference maps (one latent), the gradient pass and the step, on every branch
    assert result.timings["unet_latent_evals"] == FAST.num_inference_steps * per_branch * (1 + 2 * (n + 1))
    assert result.timings["unet_backward_latent_evals"] == FAST.num_inference_steps * per_branch * (n + 1)


def test_chunked_gradients_equal_one_batch(model, image):
    regions = [Region(m, "a green triangle") for m in masks(3)]
    whole = regionedit.edit(model, image, regions, CAPTION, FAST, progress=False)
    inv = whole.inversion
    chunked = regionedit.edit(model, inv, regions, options=FAST, progress=False,
                              execution=ExecutionOptions(chunk_size=1))  # fmt: skip
    assert torch.allclose(whole.latents, chunked.latents, atol=1e-5)


def test_every_lomoe_option_and_a_saved_inversion(model, image, tmp_path, caplog):
    import dataclasses

    regions = [Region(m, "a yellow circle", start=0.0 if i else 0.34) for i, m in enumerate(masks(3))]
    regions[1] = Region(
        regions[1].mask | masks(3)[2], "a white square", negative_prompt="blurry"
    )  # overlaps 3
    opts = dataclasses.replace(FAST, feather=1.0, overlap="last", paste_back=True, background_blend=True,
                               guidance_rescale=0.7, mask_resize="majority")  # fmt: skip
    execution = ExecutionOptions(chunk_size=2, gradient_checkpointing=True, reference_maps="device")
    res = regionedit.edit(model, image, regions, CAPTION, opts, progress=False, execution=execution)
    union = np.any(np.stack([r.mask for r in regions]), axis=0)
    assert np.array_equal(np.asarray(res.image)[~union], np.asarray(image)[~union])  # pasted back exactly
    said = "negative prompts have no effect" in caplog.text
    assert said == (model.guidance == "distilled")  # one line where guidance is distilled
    res.inversion.save(tmp_path / "inv.safetensors")
    loaded = regionedit.Inversion.load(tmp_path / "inv.safetensors")
    again = regionedit.edit(
        model, loaded, regions, options=opts, progress=False, original=image, execution=execution
    )
    assert torch.equal(again.latents, res.latents)


def test_a_mask_on_one_token_edits_exactly_that_token(model, image):
    """One 8x8-px mask = one 2x2 latent patch = one token; and a smaller mark inside a token takes
    the whole token, never part of one (the branch's prediction is per token)."""
    # pure fusion, the background pinned to the inversion (joint attention lets every token see the
    # edited one, so without the blend the background moves by ~1e-4 on this random model)
    options = LoMOEOptions(num_inference_steps=3, bootstrap_steps=0, learning_rate=0.0, background_blend=True)
    for y0, y1, x0, x1 in ((16, 24, 40, 48), (16, 20, 40, 44)):  # a whole token; one latent cell of it
        mask = np.zeros((64, 96), bool)
        mask[y0:y1, x0:x1] = True
        result = regionedit.edit(model, image, [Region(mask, "a green triangle")], CAPTION, options,
                                 progress=False)  # fmt: skip
        token = torch.zeros(16, 24, dtype=torch.bool)
        token[4:6, 10:12] = True  # latent cells of the token at pixels 16..24 x 40..48
        assert torch.equal(result.masks[1] > 0, token)
        changed = (result.latents[0] != result.inversion.latents[0]).any(0)
        assert torch.equal(changed, token)


def test_on_the_latent_grid_a_mask_edits_latent_cells(model, image):
    """``mask_grid="latent"`` fuses the branches per latent cell: one cell of a token, not all four."""
    options = LoMOEOptions(num_inference_steps=3, bootstrap_steps=0, learning_rate=0.0, background_blend=True,
                           mask_grid="latent")  # fmt: skip
    mask = np.zeros((64, 96), bool)
    mask[16:20, 40:44] = True  # one latent cell of the token at pixels 16..24 x 40..48
    result = regionedit.edit(
        model, image, [Region(mask, "a green triangle")], CAPTION, options, progress=False
    )
    cell = torch.zeros(16, 24, dtype=torch.bool)
    cell[4, 10] = True
    assert torch.equal(result.masks[1] > 0, cell)
    changed = (result.latents[0] != result.inversion.latents[0]).any(0)
    assert torch.equal(changed, cell)


def test_joint_attention_capture_is_exact_and_restored(model):
    z = torch.randn(2, 4, 8, 8)
    cond = model.encode_prompt(["a red square", "a blue circle"])
    t = model.scheduler(4, (8, 8)).timesteps[1]
    before = dict(model.transformer.attn_processors)
    plain = model.predict(z, t, cond)
    with model.cross_attention(temperature=0.5) as store:
        store.capture = True
        captured = model.predict(z, t, cond)
    assert torch.equal(plain, captured)  # the forward is the original processor's
    assert model.transformer.attn_processors == before
    layers = model.cross_attention_layers()
    assert set(store.maps) == set(layers) and len(layers) == 2
    tokens = cond.embeds.shape[1]
    for name, probs in store.maps.items():
        heads = model.transformer.get_submodule(name.removesuffix(".processor")).heads
        assert probs.shape == (2 * heads, 16, tokens)  # 4x4 tokens of an 8x8 latent, over the text keys
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    geometry = model.cross_attention_geometry((8, 8))
    assert [(n, p, k) for n, _, p, k in geometry] == [(n, 16, tokens) for n in layers]


def test_inversion_reconstruction_error_falls_with_steps(model, image, capsys):
    """Without the reference pass's offsets, sampling back from the inverted noise reconstructs the
    image up to the Euler discretisation error: report it per step count, and require it to fall."""
    z0 = model.encode(model.image_to_tensor(image))
    cond = model.encode_prompt([CAPTION])
    errors = {}
    for steps in (2, 8, 32):
        traj = ddim_invert(model, z0, CAPTION, InversionOptions(steps), torch.Generator(), progress=False)
        sched = model.scheduler(steps, z0.shape[-2:])
        z = traj[-1:]
        with torch.no_grad():
            for t in sched.timesteps:
                z = sched.step(model.predict(z, t, cond), t, z)
        errors[steps] = float((z - z0).pow(2).mean().sqrt() / z0.pow(2).mean().sqrt())
    with capsys.disabled():
        print(f"\n{model.family} inversion relative RMS error by steps: {errors}")
    assert errors[2] > errors[8] > errors[32]


def test_multimodal_editor_runs_on_flows(model, image):
    options = MultimodalOptions(num_inference_steps=4, optimize_steps=3)
    mask = masks(1)[0]
    first = edit_multimodal(
        model, image, "a green triangle", CAPTION, mask=mask, options=options, progress=False
    )
    again = edit_multimodal(
        model, image, "a green triangle", CAPTION, mask=mask, options=options, progress=False
    )
    assert first.image.size == (96, 64)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    outside = np.asarray(first.mask_image) == 0  # the mask on latent cells, the round trip outside it
    assert np.array_equal(np.asarray(first.image)[outside], np.asarray(first.reconstruction)[outside])
    cell = np.zeros((64, 96), bool)
    cell[16:20, 40:44] = True  # one latent cell of a 2x2-cell token
    one = edit_multimodal(
        model, image, "a green triangle", CAPTION, mask=cell, options=options, progress=False
    )
    assert int(one.mask.sum()) == 1


def tiny_controlnet(model, pixels: bool = False, seed: int = 3, **overrides):
    """A random ControlNet of the family's class for ``model`` (FLUX: InstantX-style on packed
    latents, or XLabs-style reading pixels); its zero-initialised outputs get random weights."""
    import diffusers

    cfg = dict(model.transformer.config) | overrides
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model.family == "flux":
            keys = ("patch_size", "in_channels", "attention_head_dim", "num_attention_heads", "joint_attention_dim",
                    "pooled_projection_dim", "guidance_embeds", "axes_dims_rope")  # fmt: skip
            net = diffusers.FluxControlNetModel(**{k: cfg[k] for k in keys}, num_layers=1, num_single_layers=1,
                                                conditioning_embedding_channels=16 if pixels else None)  # fmt: skip
        else:
            keys = ("sample_size", "patch_size", "in_channels", "attention_head_dim", "num_attention_heads",
                    "joint_attention_dim", "caption_projection_dim", "pooled_projection_dim", "out_channels",
                    "pos_embed_max_size")  # fmt: skip
            net = diffusers.SD3ControlNetModel(**{k: cfg[k] for k in keys}, num_layers=1)
        for p in net.parameters():
            if not p.any():
                torch.nn.init.normal_(p, std=0.3)
    return net


def _controlled(model, image, nets, scales):
    from regionedit.multimodal import Condition

    edges = Image.fromarray(((np.asarray(image).sum(2) > 200) * 255).astype(np.uint8)).convert("RGB")
    conditions = [Condition(k, edges, scale=s) for k, s in zip(["edge", "scribble"], scales, strict=False)]
    options = MultimodalOptions(num_inference_steps=4, optimize_steps=3)
    result = edit_multimodal(model, image, "a green triangle", CAPTION, mask=masks(1)[0], conditions=conditions,
                             controlnets=nets, options=options, progress=False)  # fmt: skip
    return np.asarray(result.image)


@pytest.mark.parametrize("pixels", [False, True], ids=["latent-net", "pixel-net"])
def test_the_familys_controlnet_steers_the_multimodal_editor(model, image, pixels):
    if pixels and model.family != "flux":
        pytest.skip("pixel-reading (XLabs-style) ControlNets are FLUX's")
    net = tiny_controlnet(model, pixels)
    on = _controlled(model, image, [net], [1.0])
    assert np.array_equal(on, _controlled(model, image, [net], [1.0]))  # same seed, same pixels
    assert not np.array_equal(on, _controlled(model, image, [net], [0.0]))
    # a second net adds its residuals; at scale 0 it changes nothing
    other = tiny_controlnet(model, pixels, seed=4)
    assert np.array_equal(on, _controlled(model, image, [net, other], [1.0, 0.0]))
    assert not np.array_equal(on, _controlled(model, image, [net, other], [1.0, 1.0]))


def test_controlnets_of_another_kind_are_refused_in_one_line(model, image, tmp_path):
    from regionedit.models.controlnet import load_controlnet
    from regionedit.models.loading import DATA_DIR

    wanted = {"flux": "FluxControlNetModel", "sd3": "SD3ControlNetModel"}[model.family]
    with pytest.raises(
        regionedit.errors.InvalidInputError, match=f"ControlNet 0 is a object; .* take a {wanted}"
    ):
        _controlled(model, image, [object()], [1.0])
    with pytest.raises(
        regionedit.errors.InvalidInputError, match=f"is a ControlNetModel; .* take a {wanted}$"
    ):
        load_controlnet(DATA_DIR / "controlnet-mini" / "edge", model, "edge")
    with pytest.raises(
        regionedit.errors.InvalidInputError, match=f"made for another {model.family} transformer"
    ):
        _controlled(model, image, [tiny_controlnet(model, num_attention_heads=1)], [1.0])
    tiny_controlnet(model).save_pretrained(str(tmp_path / "net"), safe_serialization=True)
    assert type(load_controlnet(tmp_path / "net", model, "edge")).__name__ == wanted
    if model.family == "flux":
        import diffusers

        cfg = dict(model.transformer.config)
        union = diffusers.FluxControlNetModel(**{k: cfg[k] for k in ("in_channels", "attention_head_dim",
                                              "num_attention_heads", "joint_attention_dim", "pooled_projection_dim",
                                              "axes_dims_rope")}, num_layers=1, num_single_layers=0, num_mode=3)  # fmt: skip
        with pytest.raises(regionedit.errors.InvalidInputError, match="union ControlNet"):
            _controlled(model, image, [union], [1.0])


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_loaded_from_a_folder_and_edited_from_the_cli(family, tmp_path, image):
    import diffusers

    from regionedit.cli import main

    components = BUILDERS[family]()
    pipeline = getattr(diffusers, {"flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline"}[family])
    folder = tmp_path / "model"
    pipeline(**components).save_pretrained(str(folder), safe_serialization=True)
    info = regionedit.describe(str(folder))
    assert (info.family, info.patch_size, info.vae_scale_factor) == (family, 2, 4)
    model = regionedit.load(str(folder))
    assert model.family == family
    image.save(tmp_path / "in.png")
    Image.fromarray(masks(1)[0]).save(tmp_path / "m.png")
    code = main(["edit", "--model", str(folder), "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "m.png"),
                 "--prompt", "a green triangle", "--background-prompt", CAPTION, "--steps", "2", "--bootstrap-steps", "1",
                 "--out", str(tmp_path / "out.png")])  # fmt: skip
    assert code == 0 and Image.open(tmp_path / "out.png").size == (96, 64)
    # the multi-modal editor with the family's ControlNet from a folder; a UNet one exits 2
    tiny_controlnet(model).save_pretrained(str(tmp_path / "net"), safe_serialization=True)
    mm = ["edit", "--model", str(folder), "--method", "multimodal", "--image", str(tmp_path / "in.png"), "--mask",
          str(tmp_path / "m.png"), "--prompt", "a green triangle", "--source-prompt", CAPTION, "--control",
          "edge=auto", "--steps", "3", "--optimize-steps", "2"]  # fmt: skip
    code = main(mm + ["--controlnet", f"edge={tmp_path / 'net'}", "--out", str(tmp_path / "mm.png")])
    assert code == 0 and Image.open(tmp_path / "mm.png").size == (96, 64)
    from regionedit.models.loading import DATA_DIR

    code = main(
        mm
        + ["--controlnet", f"edge={DATA_DIR / 'controlnet-mini' / 'edge'}", "--out", str(tmp_path / "x.png")]
    )
    assert code == 2 and not (tmp_path / "x.png").exists()
    bad = np.zeros((60, 96, 3), np.uint8)  # 60 is a multiple of the VAE's 4 but not of a token's 8
    Image.fromarray(bad).save(tmp_path / "bad.png")
    Image.fromarray(np.ones((60, 96), bool)).save(tmp_path / "badm.png")
    code = main(["edit", "--model", str(folder), "--image", str(tmp_path / "bad.png"), "--mask", str(tmp_path / "badm.png"),
                 "--prompt", "x", "--background-prompt", "y", "--out", str(tmp_path / "o2.png")])  # fmt: skip
    assert code == 2 and not (tmp_path / "o2.png").exists()


def test_estimated_masks_grow_to_whole_tokens():
    from regionedit.multimodal.mask import to_token_grid

    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[1, 2] = mask[4, 7] = True
    tokens = to_token_grid(mask, 2)
    expected = torch.zeros(6, 8, dtype=torch.bool)
    expected[0:2, 2:4] = expected[4:6, 6:8] = True
    assert torch.equal(tokens, expected)
    assert to_token_grid(mask, 1) is mask


def test_the_shipped_mini_flow_model_loads_as_a_flux_pipeline_with_its_settings():
    from regionedit.models.loading import MINI_FLOW_DIR

    size = sum(p.stat().st_size for p in MINI_FLOW_DIR.rglob("*") if p.is_file())
    assert size <= 40 * 2**20
    assert regionedit.describe("mini-flow").family == "flux"
    model = regionedit.load("mini-flow")
    assert model.family == "flux" and model.native_size == 128 and model.guidance == "cfg"
    assert model.settings["lomoe"]["guidance_scale"] == 5.0
    # export_flow copies the package's settings file into the folder: the two must not drift apart
    shipped = json.loads((MINI_FLOW_DIR.parent / "mini_flow_settings.json").read_text())
    assert json.loads((MINI_FLOW_DIR / "regionedit_settings.json").read_text()) == shipped
    from diffusers import FluxPipeline

    assert FluxPipeline.from_pretrained(str(MINI_FLOW_DIR)).transformer.config.guidance_embeds is False


def test_a_missing_mini_flow_model_is_one_line(monkeypatch, capsys, tmp_path):
    from regionedit.cli import main
    from regionedit.errors import ModelLoadError

    monkeypatch.setattr("regionedit.models.loading.MINI_FLOW_DIR", tmp_path / "absent")
    with pytest.raises(ModelLoadError, match="train-mini --family flow"):
        regionedit.load("mini-flow")
    assert main(["demo", "--model", "mini-flow", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mini flow model" in err and not (tmp_path / "d").exists()


def test_each_flux_controlnet_gets_the_guidance_input_it_takes():
    flux = _model("flux")  # guidance-distilled
    plain, distilled = tiny_controlnet(flux, guidance_embeds=False), tiny_controlnet(flux, seed=4)
    seen = []
    for net in (plain, distilled):
        net.register_forward_pre_hook(
            lambda m, args, kwargs: seen.append(kwargs["guidance"]), with_kwargs=True
        )
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = flux.with_guidance(flux.encode_prompt([CAPTION]), 3.5)
    x = flux.control_input(plain, torch.zeros(1, 3, 32, 32))
    flux.control_residuals(
        [plain, distilled], [x, x], [1.0, 1.0], z, flux.scheduler(4, (8, 8)).timesteps[1], cond
    )
    assert seen[0] is None and torch.equal(seen[1], torch.tensor([3.5]))
