"""Qwen-Image as a family: parity with diffusers' own pipelines, both editors, the attention capture,
words on the text axis, ControlNets and loading, on a tiny random model."""

import numpy as np
import pytest
import torch
from PIL import Image

import regionedit
from regionedit import LoMOEOptions, MultimodalOptions, Region
from regionedit.models.loading import from_components
from regionedit.models.qwenimage import _pack
from regionedit.multimodal import edit as edit_multimodal

from .conftest import box_grid, wide_image

CAPTION = "a red square and a blue circle on a gray background"
TOKENS = 256  # text tokens per prompt: the tiny byte-level tokenizer leaves 115 template tokens first
ATOL = 1e-5  # float32 parity: our CFG runs both branches in one batch, the pipeline one at a time


def build_qwenimage_components(seed: int = 0) -> dict:
    """A tiny random Qwen-Image, as diffusers' own Qwen-Image tests build one, with a byte-level Qwen2
    tokenizer built in code, uneven VAE channel statistics and Qwen-Image's own scheduler config."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from regionedit.bench.random_models import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
            joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
        )  # fmt: skip
        vae = AutoencoderKLQwenImage(
            base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
            latents_mean=[0.1, -0.2, 0.3, -0.05], latents_std=[0.9, 1.2, 0.7, 1.5],
        )  # fmt: skip
        text = dict(
            hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}, rope_theta=1e6,
            vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        vision = dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16)
        config = Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, hidden_size=16, vocab_size=len(tokenizer), bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0, shift_terminal=0.02,
        time_shift_type="exponential", use_dynamic_shifting=True,
    )  # fmt: skip
    return dict(
        vae=vae, transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
    )


@pytest.fixture(scope="module")
def components():
    return build_qwenimage_components()


@pytest.fixture(scope="module")
def model(components):
    model = from_components(components, name="tiny-qwenimage")
    model.max_sequence_length = TOKENS
    return model


@pytest.fixture(scope="module")
def image():
    return wide_image(3)


def _pipeline_images(model, prompt, negative, scale, steps, latents, **kwargs) -> torch.Tensor:
    """diffusers' QwenImagePipeline from ``latents`` ``(1, C, h, w)``: images ``(1, 3, H, W)`` in [0, 1]."""
    h, w = latents.shape[-2:]
    f = model.vae_scale_factor
    return model._pipe(prompt, negative_prompt=negative, true_cfg_scale=scale, height=h * f, width=w * f,
                       num_inference_steps=steps, latents=_pack(latents), output_type="pt",
                       max_sequence_length=model.max_sequence_length, **kwargs).images  # fmt: skip


def test_family_traits_and_the_vae_as_diffusers_encodes(model, components, image):
    from diffusers import QwenImageImg2ImgPipeline

    traits = (
        model.family,
        model.patch_size,
        model.vae_scale_factor,
        model.size_factor,
        model.latent_channels,
    )
    assert traits == ("qwenimage", 2, 4, 8, 4) and model.native_size == 128 * 4  # the pipeline's default size
    assert model.guidance == "cfg" and model.prediction_type == "flow"
    x = model.image_to_tensor(image)
    z = model.encode(x, generator=torch.Generator().manual_seed(0), sample=True)
    pipe = QwenImageImg2ImgPipeline(**components)
    theirs = pipe._encode_vae_image(x[:, :, None], torch.Generator().manual_seed(0))[:, :, 0]
    assert z.shape == (1, 4, 16, 24) and torch.allclose(z, theirs, atol=1e-6)  # normalised per channel
    assert model.decode(z).shape == (1, 3, 64, 96)
    with pytest.raises(regionedit.errors.ImageSizeError, match="multiples of 8"):
        model.check_image_size(60, 96)


def test_sampling_equals_the_pipeline(model):
    """Our Euler loop over ``guided`` (true CFG, norm-rescaled) equals diffusers' pipeline; the prompts
    differ in length, so the batched call pads and masks the shorter one."""
    noise = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(1))
    prompt, negative, scale, steps = CAPTION, "blurry", 4.0, 4
    neg, pos = model.encode_prompt([negative]), model.encode_prompt([prompt])
    assert neg.embeds.shape[1] < pos.embeds.shape[1]
    sched = model.scheduler(steps, noise.shape[-2:])
    z = noise
    with torch.no_grad():
        for t in sched.timesteps:
            z = sched.step(model.guided(z, t, neg, pos, scale), t, z)
    ours = model.decode(z)
    theirs = _pipeline_images(model, prompt, negative, scale, steps, noise)
    assert torch.equal(sched.sigmas, model._pipe.scheduler.sigmas)  # mu by the pipeline's calculate_shift
    assert torch.allclose(ours, theirs, atol=ATOL)
    plain = _pipeline_images(model, prompt, negative, 1.0, steps, noise)  # no CFG: a different image
    assert not torch.allclose(plain, theirs, atol=100 * ATOL)
    assert float(sched.sigmas[-2]) == pytest.approx(0.02)  # shift_terminal, as the pipeline's scheduler


def test_a_lomoe_edit_without_losses_equals_the_pipeline_from_the_inversion(model, image):
    """With the losses and bootstrapping off and one region covering the image, LoMOE is the region
    prompt's guided sampling from the inversion's noise plus, after every step, the reference pass's
    offset δ_i; the pipeline adds the same offsets in its step-end callback."""
    options = LoMOEOptions(num_inference_steps=4, guidance_scale=4.0, cross_attention_weight=0.0,
                           background_weight=0.0, bootstrap_steps=0,
                           region_negative_prompt="blurry")  # fmt: skip
    region = Region(np.ones((64, 96), bool), "a green triangle")
    result = regionedit.edit(model, image, [region], CAPTION, options, progress=False)
    inversion = result.inversion

    def add_offset(pipe, i, t, tensors):
        return {"latents": tensors["latents"] + _pack(inversion.offsets[i : i + 1])}

    theirs = _pipeline_images(model, "a green triangle", "blurry", 4.0, 4, inversion.latents[-1:],
                              callback_on_step_end=add_offset,
                              callback_on_step_end_tensor_inputs=["latents"])  # fmt: skip
    assert torch.allclose(model.decode(result.latents), theirs, atol=ATOL)
    pixels = (theirs[0].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    assert np.abs(np.asarray(result.image).astype(int) - pixels).max() <= 1
    without = _pipeline_images(model, "a green triangle", "blurry", 4.0, 4, inversion.latents[-1:])
    assert not torch.allclose(without, theirs, atol=100 * ATOL)  # the offsets matter


def test_both_editors_edit_two_regions_of_a_wide_image(model, image):
    masks = box_grid(2, 8, 8, (32, 48), (24, 32))
    regions = [Region(masks[0], "a green triangle"), Region(masks[1], "a yellow star under a night sky")]
    options = LoMOEOptions(num_inference_steps=3, bootstrap_steps=2)

    def lomoe():
        return regionedit.edit(model, image, regions, CAPTION, options, progress=False)

    first = lomoe()
    assert first.image.size == (96, 64) and first.masks.shape == (3, 16, 24)
    assert all(np.isfinite(v) for step in first.losses for v in step.values())
    assert (
        first.losses[0]["cross_attention"] > 0
    )  # region maps against the caption's, prompts of other lengths
    assert np.array_equal(np.asarray(first.image), np.asarray(lomoe().image))

    mm_options = MultimodalOptions(num_inference_steps=4, optimize_steps=2)

    def multimodal():
        return edit_multimodal(model, image, source_prompt=CAPTION, regions=regions, options=mm_options,
                               generator=torch.Generator().manual_seed(0))  # fmt: skip

    one = multimodal()
    assert one.image.size == (96, 64)
    losses = [v for step in one.losses + one.guidance_losses for k, v in step.items() if k != "stage"]
    assert losses and all(np.isfinite(v) for v in losses)
    assert any("loss_after" in step for step in one.losses)
    assert np.array_equal(np.asarray(one.image), np.asarray(multimodal().image))


def test_attention_capture_is_exact(model, monkeypatch):
    """The capture leaves the forward alone, and its maps are the joint attention's image-to-text block
    renormalised over the real text tokens (read from what the processor hands to SDPA)."""
    import diffusers.models.transformers.transformer_qwenimage as qwen

    z = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(2))
    cond = model.encode_prompt(["a red square", CAPTION])  # different lengths: padded and masked
    real = cond.token_mask()
    assert not real.all()
    t = model.scheduler(4, (8, 12)).timesteps[1]
    before = dict(model.transformer.attn_processors)
    plain = model.predict(z, t, cond)
    joint = []
    dispatch = qwen.dispatch_attention_fn

    def record(query, key, value, attn_mask=None, **kwargs):
        joint.append((query, key, attn_mask))
        return dispatch(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(qwen, "dispatch_attention_fn", record)
    maps = {}
    for temperature in (1.0, 0.5):
        with model.cross_attention(temperature) as store:
            store.capture = True
            assert torch.equal(model.predict(z, t, cond), plain)  # the original processor's output
            maps[temperature] = dict(store.maps)
    assert model.transformer.attn_processors == before
    layers = model.cross_attention_layers()
    assert len(layers) == 2 and set(maps[1.0]) == set(layers)
    n = real.shape[1]
    for k, name in enumerate(layers):
        probs = maps[1.0][name].reshape(2, 3, 24, TOKENS)  # (batch, heads, 4x6 image tokens, text axis)
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
        assert not probs[..., n:].any() and not (probs[..., :n] * ~real[:, None, None, :]).any()
        query, key, mask = joint[k]  # the first forward: [text; image] along the sequence
        scores = torch.einsum("bihd,bjhd->bhij", query[:, n:], key[:, :n]) * 16**-0.5
        expected = scores.masked_fill(~mask[:, :, :, :n], float("-inf")).softmax(-1)
        assert torch.allclose(probs[..., :n], expected, atol=1e-5)
        # a temperature τ sharpens the same map: p^(1/τ), renormalised
        sharp = probs[..., :n] ** 2
        assert torch.allclose(maps[0.5][name].reshape(probs.shape)[..., :n], sharp / sharp.sum(-1, keepdim=True),
                              atol=1e-5)  # fmt: skip
    geometry = model.cross_attention_geometry((8, 12))
    assert [(n_, h, p, k) for n_, h, p, k in geometry] == [(name, 3, 24, TOKENS) for name in layers]


def test_word_positions_point_at_the_words(model, image):
    from regionedit.masks import word_map

    template = model._pipe.prompt_template_encode
    drop = model._pipe.prompt_template_encode_start_idx
    ids = model.tokenizer(template.format(CAPTION)).input_ids
    positions = model.word_positions(CAPTION, "a blue circle")
    assert model.tokenizer.decode([ids[drop + p] for p in positions]).replace(" ", "") == "bluecircle"
    assert model.word_positions(CAPTION, "Blue Circle") == positions
    assert model.word_positions(CAPTION, "a green triangle") == []
    assert len(model.word_positions(CAPTION, "a")) == CAPTION.split().count("a")  # nothing else left
    found = word_map(model, image, "a blue circle", CAPTION)  # masks from words read these positions
    assert found.positions == positions and found.values.shape == (64, 96) and np.isfinite(found.values).all()


def tiny_controlnet(model, seed: int = 3, **overrides):
    """A random QwenImageControlNetModel for ``model``; its zero-initialised outputs get random weights."""
    from diffusers import QwenImageControlNetModel

    cfg = dict(model.transformer.config) | overrides
    keys = ("patch_size", "in_channels", "out_channels", "attention_head_dim", "num_attention_heads",
            "joint_attention_dim", "axes_dims_rope", "extra_condition_channels")  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = QwenImageControlNetModel(**{k: cfg[k] for k in keys if k in cfg}, num_layers=1)
        for p in net.parameters():
            if not p.any():
                torch.nn.init.normal_(p, std=0.3)
    return net


def test_the_controlnet_steers_sampling_as_the_controlnet_pipeline_does(
    model, components, image, monkeypatch
):
    """Without CFG (the pipeline feeds the conditional prompt's residuals to both CFG branches; we
    give each branch its own), sampling with the net's residuals equals QwenImageControlNetPipeline
    whose VAE reads the posterior mean, as ``control_input`` does."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_controlnet as qwen_controlnet
    from diffusers import QwenImageControlNetPipeline

    net = tiny_controlnet(model)
    model.check_controlnet(net, 0)
    control = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]
    x = model.control_input(net, control)
    noise = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(4))
    cond = model.encode_prompt([CAPTION])
    sched = model.scheduler(3, (16, 24))
    z = noise
    with torch.no_grad():
        for t in sched.timesteps:
            residuals = model.control_residuals([net], [x], [0.7], z, t, cond)
            z = sched.step(model.predict(z, t, cond, **residuals), t, z)
    real = qwen_controlnet.retrieve_latents
    monkeypatch.setattr(
        qwen_controlnet, "retrieve_latents", lambda out, generator=None: real(out, sample_mode="argmax")
    )
    pipe = QwenImageControlNetPipeline(**{k: v for k, v in components.items()}, controlnet=net)
    theirs = pipe(CAPTION, true_cfg_scale=1.0, height=64, width=96, num_inference_steps=3, latents=_pack(noise),
                  control_image=control * 2 - 1, controlnet_conditioning_scale=0.7, output_type="pt",
                  max_sequence_length=TOKENS).images  # fmt: skip
    assert torch.allclose(model.decode(z), theirs, atol=ATOL)
    with torch.no_grad():
        t = sched.timesteps[0]
        off = model.predict(noise, t, cond, **model.control_residuals([net], [x], [0.0], noise, t, cond))
        assert torch.equal(off, model.predict(noise, t, cond))  # scale 0: no effect
    from regionedit.multimodal import Condition

    edges = Image.fromarray(((np.asarray(image).sum(2) > 200) * 255).astype(np.uint8)).convert("RGB")

    mask = box_grid(1, 8, 8, (32, 48), (24, 32))[0]

    def steered(scale):  # through the multi-modal editor
        result = edit_multimodal(model, image, "a green triangle", CAPTION, mask=mask,
                                 conditions=[Condition("edge", edges, scale=scale)], controlnets=[net],
                                 options=MultimodalOptions(num_inference_steps=4, optimize_steps=2))  # fmt: skip
        return np.asarray(result.image)

    on = steered(1.0)
    assert np.array_equal(on, steered(1.0)) and not np.array_equal(on, steered(0.0))
    with pytest.raises(regionedit.errors.InvalidInputError, match="extra \\(inpainting\\) channels"):
        model.check_controlnet(tiny_controlnet(model, extra_condition_channels=4), 0)
    with pytest.raises(regionedit.errors.InvalidInputError, match="made for another qwenimage transformer"):
        model.check_controlnet(tiny_controlnet(model, joint_attention_dim=8), 0)
    with pytest.raises(regionedit.errors.InvalidInputError, match="take a QwenImageControlNetModel"):
        model.check_controlnet(object(), 0)


def test_guidance_distilled_transformers_are_refused_in_one_line(components):
    from diffusers import QwenImageTransformer2DModel

    config = dict(components["transformer"].config) | {"guidance_embeds": True, "num_layers": 1}
    distilled = QwenImageTransformer2DModel.from_config(config)
    with pytest.raises(regionedit.errors.ModelLoadError, match="guidance-distilled"):
        from_components({**components, "transformer": distilled})


def test_a_saved_folder_loads_and_edits_from_the_cli(components, image, tmp_path):
    from diffusers import QwenImagePipeline

    from regionedit.cli import main

    folder = tmp_path / "model"
    QwenImagePipeline(**components).save_pretrained(str(folder), safe_serialization=True)
    info = regionedit.describe(str(folder))
    assert (info.family, info.patch_size, info.vae_scale_factor) == ("qwenimage", 2, 4)
    loaded = regionedit.load(str(folder))
    assert type(loaded).__name__ == "QwenImage" and loaded.max_sequence_length == 512
    image.save(tmp_path / "in.png")
    pairs = []
    for k, (mask, prompt) in enumerate(
        zip(box_grid(2, 8, 8, (32, 48), (24, 32)), ["a green triangle", "a star"], strict=True)
    ):
        Image.fromarray(mask).save(tmp_path / f"m{k}.png")
        pairs += ["--mask", str(tmp_path / f"m{k}.png"), "--prompt", prompt]
    args = ["edit", "--model", str(folder), "--image", str(tmp_path / "in.png"), *pairs, "--background-prompt",
            CAPTION, "--steps", "2", "--bootstrap-steps", "1"]  # fmt: skip
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.png")]) == 0
    first, second = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert first.shape == (64, 96, 3) and np.array_equal(first, second)
    assert not np.array_equal(first, np.asarray(image))
