"""The Z-Image family on tiny random models: parity with diffusers' ``ZImagePipeline``, both editors,
the single-stream attention capture, words, ControlNets and loading from a folder."""

import numpy as np
import pytest
import torch
from PIL import Image

import regionedit
from regionedit import ExecutionOptions, LoMOEOptions, MultimodalOptions, Region
from regionedit.models.interface import to_pil
from regionedit.models.loading import from_components
from regionedit.multimodal import edit as edit_multimodal

from .conftest import box_grid, wide_image
from .test_flow import _controlled  # the same scene, masks and caption

CAPTION = "a red square and a blue circle on a gray background"
NEGATIVE = "blurry, bad quality"
FAST = LoMOEOptions(num_inference_steps=3, bootstrap_steps=2)
TEXT_TOKENS = 96  # the byte-level tokenizer spends a token per letter; CAPTION in its template is 70


def build_zimage_components(seed: int = 0) -> dict:
    """A tiny random Z-Image as diffusers' own Z-Image tests build one (2x VAE, a 2-layer Qwen3 of
    width 16), with a byte-level Qwen tokenizer built offline."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from regionedit.bench.random_models import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=1,
            n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0,
            axes_dims=[8, 4, 4], axes_lens=[256, 32, 32],
        )  # fmt: skip
        with torch.no_grad():  # made with torch.empty: give them numbers, and ones that matter
            transformer.x_pad_token.normal_()
            transformer.cap_pad_token.normal_()
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 64], layers_per_block=1,
            latent_channels=16, norm_num_groups=32, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
        )  # fmt: skip
        text_encoder = Qwen3Model(
            Qwen3Config(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512)
        )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                scheduler=scheduler)  # fmt: skip


@pytest.fixture(scope="module")
def components():
    return build_zimage_components()


@pytest.fixture(scope="module")
def model(components):
    model = from_components(components, name="tiny-zimage")
    model.max_sequence_length = TEXT_TOKENS
    return model


@pytest.fixture(scope="module")
def pipe(components, model):
    """diffusers' pipeline on the very modules the model holds."""
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def image():
    return wide_image(3)


def masks(n: int) -> list[np.ndarray]:
    """``n`` disjoint boxes on the 64x96 image, on whole 4-px tokens."""
    return box_grid(n, 8, 8, (32, 24), (16, 16))


def _sample(model, noise, prompt, negative, scale, steps):
    """Our own Euler loop: the model's schedule, guided velocity and decoder."""
    sched = model.scheduler(steps, noise.shape[-2:])
    neg, pos = model.encode_prompt([negative]), model.encode_prompt([prompt])
    z = noise
    with torch.no_grad():
        for t in sched.timesteps:
            z = sched.step(model.guided(z, t, neg, pos, scale), t, z)
    return model.decode(z)


def test_family_traits_and_registry(model):
    assert model.family == "zimage" and model.prediction_type == "flow" and model.guidance == "cfg"
    assert (model.vae_scale_factor, model.patch_size, model.size_factor) == (2, 2, 4)
    with pytest.raises(regionedit.errors.ImageSizeError, match="multiples of 4"):
        model.check_image_size(62, 96)
    sched = model.scheduler(7, (32, 48))
    # the pipeline's float32 linspace (numpy's differs by an ulp at 7 steps) under the static shift 3
    expected = torch.linspace(1.0, 1 / 7, 7)
    assert torch.equal(sched.sigmas[:-1], 3 * expected / (1 + 2 * expected))
    gen = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(1, 16, 32, 48, generator=gen), torch.randn(1, 16, 32, 48, generator=gen)
    t = sched.timesteps[1]
    v = noise - z0  # the exact velocity: Euler walks the straight path with it
    assert torch.allclose(sched.step(v, t, sched.add_noise(z0, noise, t)), sched.add_noise(z0, noise, sched.timesteps[2]),
                          atol=1e-5)  # fmt: skip


def test_sampling_equals_the_diffusers_pipeline(model, pipe):
    """Our loop with w equals ``ZImagePipeline`` with ``guidance_scale = w − 1`` from the same noise."""
    w, steps = 4.0, 7
    noise = torch.randn(1, 16, 32, 48, generator=torch.Generator().manual_seed(1))
    ours = _sample(model, noise, "a red square", NEGATIVE, w, steps)
    common = dict(prompt="a red square", negative_prompt=NEGATIVE, height=64, width=96, num_inference_steps=steps,
                  max_sequence_length=TEXT_TOKENS, output_type="pt")  # fmt: skip
    theirs = pipe(**common, guidance_scale=w - 1, latents=noise.clone()).images
    assert ours.shape == theirs.shape == (1, 3, 64, 96)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    # the comparison tells the conventions apart: diffusers' scale w is another image
    other = pipe(**common, guidance_scale=w, latents=noise.clone()).images
    assert (other - ours).abs().max() > 1e-3


def test_a_lomoe_edit_without_losses_is_the_pipeline_plus_the_inversions_offsets(model, pipe, image):
    """With its losses and bootstrapping off and one region over the whole image, a LoMOE edit samples
    the region's prompt from the inversion's noise as the pipeline does, plus the reference pass's
    offsets δ_i after each step. They make the background branch retrace the inversion (Euler run up
    and back down is not exact), so δ_i ≠ 0 and the edit is not the plain pipeline: it is the pipeline
    with a step callback adding δ_i, run on the edit's batch (background caption, region prompt)."""
    w, steps = 3.0, 3
    options = LoMOEOptions(num_inference_steps=steps, guidance_scale=w, cross_attention_weight=0.0,
                           background_weight=0.0, bootstrap_steps=0, region_negative_prompt=NEGATIVE)  # fmt: skip
    region = Region(np.ones((64, 96), bool), "a green triangle")
    result = regionedit.edit(model, image, [region], CAPTION, options, progress=False)
    inv = result.inversion
    assert inv.offsets.abs().max() > 1e-4

    def add_offset(pipeline, i, t, tensors):
        return {"latents": tensors["latents"] + inv.offsets[i : i + 1]}

    def run(**kwargs):  # fresh prompt lists each call: the pipeline writes the templated prompts into them
        return pipe(prompt=[CAPTION, "a green triangle"], negative_prompt=[inv.negative_prompt, NEGATIVE], height=64,
                    width=96, num_inference_steps=steps, guidance_scale=w - 1, max_sequence_length=TEXT_TOKENS,
                    latents=inv.latents[-1:].expand(2, -1, -1, -1).clone(), **kwargs).images  # fmt: skip

    latents = run(callback_on_step_end=add_offset, output_type="latent")
    assert torch.equal(result.latents, latents[1:])
    pixels = run(callback_on_step_end=add_offset, output_type="pt")
    assert np.array_equal(np.asarray(result.image), np.asarray(to_pil(pixels[1:])[0]))
    plain = run(output_type="latent")
    assert (plain[1:] - result.latents).abs().max() > 1e-4  # the offsets are what separates the two


def test_both_editors_on_two_regions_repeat_with_finite_losses(model, image):
    regions = [Region(m, p) for m, p in zip(masks(2), ["a green triangle", "a yellow circle"], strict=True)]
    first = regionedit.edit(model, image, regions, CAPTION, FAST, progress=False)
    again = regionedit.edit(model, image, regions, CAPTION, FAST, progress=False)
    assert first.image.size == (96, 64) and first.masks.shape == (3, 32, 48)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert all(np.isfinite(v) for step in first.losses for v in step.values())
    assert first.losses[0]["cross_attention"] > 0
    # chunks of one branch with the transformer's checkpointing: the capture's layout follows each call
    chunked = regionedit.edit(model, first.inversion, regions, options=FAST, progress=False,
                              execution=ExecutionOptions(chunk_size=1, gradient_checkpointing=True))  # fmt: skip
    assert torch.allclose(chunked.latents, first.latents, atol=1e-5)
    options = MultimodalOptions(num_inference_steps=4, optimize_steps=3)
    mm = [edit_multimodal(model, image, source_prompt=CAPTION, regions=regions, options=options, progress=False)
          for _ in range(2)]  # fmt: skip
    assert mm[0].image.size == (96, 64)
    assert np.array_equal(np.asarray(mm[0].image), np.asarray(mm[1].image))
    numbers = [v for step in mm[0].losses for v in step.values() if isinstance(v, float)]
    assert numbers and all(np.isfinite(numbers))
    outside = np.asarray(mm[0].mask_image) == 0  # the round trip outside the masks
    assert np.array_equal(np.asarray(mm[0].image)[outside], np.asarray(mm[0].reconstruction)[outside])


def _sequence_layout(transformer, latents, caps):
    """Image tokens, padded image length and caption lengths per item, by the transformer's own code."""
    x = list(latents.unsqueeze(2).unbind(0))
    img, cap, _, _, _, img_pad, cap_pad = transformer.patchify_and_embed(x, caps, 2, 1)
    return [int((~m).sum()) for m in img_pad], [len(i) for i in img], [int((~m).sum()) for m in cap_pad]


def test_attention_capture_is_exact(model):
    from diffusers.models.embeddings import apply_rotary_emb

    z = torch.randn(3, 16, 10, 14, generator=torch.Generator().manual_seed(0))  # 35 tokens: padded to 64
    cond = model.encode_prompt(["a red square", "", CAPTION])  # captions of three lengths
    t = model.scheduler(4, (10, 14)).timesteps[1]
    plain = model.predict(z, t, cond)
    seen = {}  # what the first joint layer's processor is given
    layer = model.transformer.layers[0].attention
    hook = layer.register_forward_pre_hook(lambda m, a, k: seen.update(k, x=a[0]), with_kwargs=True)
    try:
        with model.cross_attention(temperature=0.5) as store:
            store.capture = True
            captured = model.predict(z, t, cond)
    finally:
        hook.remove()
    assert torch.equal(plain, captured)  # the forward is the original processor's
    assert model.transformer.layers[0].attention.processor.__class__.__name__ == "ZSingleStreamAttnProcessor"
    layers = model.cross_attention_layers()
    assert layers == ["layers.0.attention.processor", "layers.1.attention.processor"] and set(
        store.maps
    ) == set(layers)
    n, padded, lengths = _sequence_layout(
        model.transformer, z, [e[m] for e, m in zip(cond.embeds, cond.mask, strict=True)]
    )
    assert n == [35] * 3 and padded == [64] * 3 and lengths == cond.mask.sum(1).tolist()
    assert len(set(lengths)) == 3
    for name in layers:
        probs = store.maps[name].reshape(3, 2, 35, TEXT_TOKENS)
        for i, length in enumerate(lengths):
            assert torch.allclose(probs[i, :, :, :length].sum(-1), torch.ones(()), atol=1e-5)
            assert not probs[i, :, :, length:].any()  # caption padding and the text axis past it
    # independently: the whole joint softmax over each item's sequence, at the temperature, its
    # image→caption block renormalised (positions from the transformer's own patchify_and_embed)
    x, freqs = seen["x"], seen["freqs_cis"]
    q = layer.norm_q(layer.to_q(x).unflatten(-1, (2, -1)))
    k = layer.norm_k(layer.to_k(x).unflatten(-1, (2, -1)))
    q, k = apply_rotary_emb(q, freqs, use_real=False), apply_rotary_emb(k, freqs, use_real=False)
    mine = store.maps["layers.0.attention.processor"].reshape(3, 2, 35, TEXT_TOKENS)
    for i, length in enumerate(lengths):
        live = padded[i] + length + (-length) % 32  # the item's sequence: batch padding left out
        part = torch.einsum("bihd,bjhd->bhij", q[i : i + 1, :live], k[i : i + 1, :live]) * (16**-0.5 / 0.5)
        block = part.softmax(-1)[0, :, :35, padded[i] : padded[i] + length]
        assert torch.allclose(mine[i, :, :, :length], block / block.sum(-1, keepdim=True), atol=1e-5)
        unpadded = part.softmax(-1)[0, :, :35, 35 : 35 + length]  # the caption placed after the real image
        assert not torch.allclose(
            mine[i, :, :, :length], unpadded / unpadded.sum(-1, keepdim=True), atol=1e-3
        )
    geometry = model.cross_attention_geometry((10, 14))
    assert geometry == [(n, 2, 35, TEXT_TOKENS) for n in layers]


def test_words_are_found_in_the_templated_caption(model, image):
    positions = model.word_positions(CAPTION, "blue circle")
    ids = model.tokenizer(model._template(CAPTION)).input_ids
    assert model.tokenizer.decode([ids[p] for p in positions]) == "bluecircle"  # the space token left out
    ((tokenizer, start, length),) = model.text_segments()
    assert model.tokenizer.decode(ids[:start]).endswith("user\n") and start + length == TEXT_TOKENS
    assert positions[0] == start + CAPTION.index("blue")  # one byte, one token
    assert model.word_positions(CAPTION, "green triangle") == []
    from regionedit.masks import word_map

    found = word_map(model, image, "blue circle", CAPTION)
    assert found.values.shape == (64, 96) and found.positions == positions and np.isfinite(found.values).all()


def test_a_word_is_found_with_its_leading_space_merged_into_it(model, tmp_path):
    """Byte-level BPE spells " blue" in a caption as one token and "blue" alone otherwise, as Qwen's does."""
    import dataclasses
    import json

    from transformers import Qwen2Tokenizer

    vocab = dict(model.tokenizer.get_vocab())
    merges = ["Ġ b", "Ġb l", "Ġbl u", "Ġblu e"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = Qwen2Tokenizer.from_pretrained(str(tmp_path), unk_token=None, bos_token=None,
                                               eos_token="<|endoftext|>", pad_token="<|endoftext|>")  # fmt: skip
    tokenizer.chat_template = model.tokenizer.chat_template
    merged = dataclasses.replace(model, tokenizer=tokenizer, _prompt_cache={})
    (position,) = merged.word_positions(CAPTION, "blue")
    ids = tokenizer(merged._template(CAPTION)).input_ids
    assert tokenizer.convert_ids_to_tokens(ids[position]) == "Ġblue"
    assert len(merged.word_positions("blue sky", "blue")) == 4  # at the start: four bytes


def tiny_controlnet(model, seed: int = 3, **overrides):
    """A random ``ZImageControlNetModel`` for ``model``; its zero-initialised outputs get random weights."""
    from diffusers import ZImageControlNetModel

    cfg = dict(control_layers_places=[0, 1], control_refiner_layers_places=[0], control_in_dim=16, dim=32,
               n_refiner_layers=1, n_heads=2, n_kv_heads=2) | overrides  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ZImageControlNetModel(**cfg)
        for p in net.parameters():
            if not p.any():
                torch.nn.init.normal_(p, std=0.3)
    return net


def test_the_familys_controlnet_steers_the_multimodal_editor(model, image):
    net = tiny_controlnet(model)
    on = _controlled(model, image, [net], [1.0])
    assert not np.array_equal(on, _controlled(model, image, [net], [0.0]))
    other = tiny_controlnet(model, seed=4, control_in_dim=32)  # a version-2 net: zero channels added
    assert np.array_equal(on, _controlled(model, image, [net, other], [1.0, 0.0]))
    assert not np.array_equal(on, _controlled(model, image, [net, other], [1.0, 1.0]))
    with pytest.raises(regionedit.errors.InvalidInputError, match="made for another zimage transformer"):
        _controlled(model, image, [tiny_controlnet(model, control_layers_places=[0, 5])], [1.0])
    with pytest.raises(
        regionedit.errors.InvalidInputError, match="ControlNet 0 is a object; .* ZImageControlNetModel"
    ):
        _controlled(model, image, [object()], [1.0])


def test_loaded_from_a_folder_and_edited_from_the_cli(components, tmp_path, image):
    from diffusers import ZImagePipeline

    from regionedit.cli import main

    folder = tmp_path / "model"
    ZImagePipeline(**build_zimage_components()).save_pretrained(str(folder), safe_serialization=True)
    info = regionedit.describe(str(folder))
    assert (info.family, info.patch_size, info.vae_scale_factor) == ("zimage", 2, 2)
    loaded = regionedit.load(str(folder))
    z = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    model = from_components(build_zimage_components())
    cond, t = model.encode_prompt([CAPTION]), model.scheduler(2, (8, 8)).timesteps[0]
    assert type(loaded).__name__ == "ZImage" and torch.equal(
        loaded.predict(z, t, cond), model.predict(z, t, cond)
    )
    image.save(tmp_path / "in.png")
    args = ["edit", "--model", str(folder), "--image", str(tmp_path / "in.png")]
    for k, m in enumerate(masks(2)):
        Image.fromarray(m).save(tmp_path / f"m{k}.png")
        args += [
            "--mask",
            str(tmp_path / f"m{k}.png"),
            "--prompt",
            ["a green triangle", "a yellow circle"][k],
        ]
    args += ["--background-prompt", CAPTION, "--steps", "2", "--bootstrap-steps", "1"]
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.png")]) == 0
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert a.shape == (64, 96, 3) and np.array_equal(a, b)
