"""FLUX.2 [klein] as a family, on tiny random models: parity with diffusers' own pipeline, both
editors, loading a folder and the CLI."""

import numpy as np
import pytest
import torch
from PIL import Image

import regionedit
from regionedit import LoMOEOptions, Region
from regionedit.models.loading import from_components
from regionedit.multimodal import edit as edit_multimodal

from .conftest import box_grid, wide_image

FAST = LoMOEOptions(num_inference_steps=3, bootstrap_steps=2)
CAPTION = "a red square and a blue circle"
TEXT_TOKENS = 96


def build_flux2_components(seed: int = 0, distilled: bool = False) -> dict:
    """A tiny random FLUX.2 [klein] (as diffusers' tests build one): a two-layer Qwen3 whose two
    hidden states are stacked per token, a 4-channel VAE whose 2x2 patches make 16 channels, and
    batch-norm statistics far from 0 and 1 so the normalisation is exercised."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from regionedit.bench.random_models import qwen_tokenizer

    tokenizer = qwen_tokenizer(TEXT_TOKENS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = Flux2Transformer2DModel(
            patch_size=1, in_channels=16, num_layers=2, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=256,
            axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
        )  # fmt: skip
        text_encoder = Qwen3ForCausalLM(
            Qwen3Config(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512)
        )  # fmt: skip
        vae = AutoencoderKLFlux2(
            block_out_channels=(32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=4, norm_num_groups=8,
            sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
        )  # fmt: skip
        vae.bn.running_mean.uniform_(-0.5, 0.5)
        vae.bn.running_var.uniform_(0.3, 3.0)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    return dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                transformer=transformer)  # fmt: skip


def _model(distilled: bool = False):
    return from_components(
        build_flux2_components(distilled=distilled), name="tiny-flux2", is_distilled=distilled
    )


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def image():
    return wide_image(3)


def _pipeline(model):
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    return Flux2KleinPipeline(
        FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config), model.vae, model.text_encoder,
        model.tokenizer, model.transformer, is_distilled=model.is_distilled,
    )  # fmt: skip


def _pipeline_sample(model, z, prompt, steps, scale, after_step=None):
    """diffusers' pipeline from latents ``z``; ``after_step(i, packed latents)`` may change each step's
    result, as the pipeline's ``callback_on_step_end`` allows."""
    pipe = _pipeline(model)
    pipe.set_progress_bar_config(disable=True)

    def callback(pipe, i, t, tensors):
        return {"latents": after_step(i, tensors["latents"])}

    out = pipe(prompt=prompt, height=64, width=96, num_inference_steps=steps, guidance_scale=scale,
               latents=z.clone(), max_sequence_length=model.max_sequence_length,
               text_encoder_out_layers=model.text_layers, output_type="pt",
               callback_on_step_end=callback if after_step else None)  # fmt: skip
    return out.images.float()


def test_family_traits(model):
    assert model.family == "flux2" and model.patch_size == 1 and model.vae_scale_factor == 8
    assert model.latent_channels == 16 and model.guidance == "cfg" and model.text_layers == (1, 2)
    assert _model(distilled=True).guidance == "distilled"
    x = model.image_to_tensor(wide_image(1))
    z = model.encode(x)
    assert z.shape == (1, 16, 8, 12)
    raw = model.vae.encode(x).latent_dist.mean
    assert torch.allclose(model.from_latents(z), raw, atol=1e-5)  # normalisation and patches undone


@pytest.mark.parametrize("distilled", [False, True])
def test_sampling_matches_diffusers_pipeline(distilled):
    model = _model(distilled)
    z = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(1))
    steps, scale = 3, 4.0
    sched = model.scheduler(steps, z.shape[-2:])
    pos, neg = model.encode_prompt(["a green circle"]), model.encode_prompt([""])
    ours = z
    for t in sched.timesteps:
        ours = sched.step(model.guided(ours, t, neg, pos, scale), t, ours)
    theirs = _pipeline_sample(model, z, "a green circle", steps, scale)
    assert torch.allclose(model.decode(ours), theirs, atol=1e-4)


def test_the_inversion_and_an_empty_edit_are_the_pipeline_plus_the_offsets(model, image):
    """LoMOE's background follows the inverted trajectory: each step is the pipeline's step with
    the caption (its negative is the caption too, so the guidance scale drops out) plus the
    inversion's offset. So diffusers' pipeline from the inverted latents, with the offsets added
    after each of its steps, gives the reconstruction, and the edit without regions too."""
    from diffusers import Flux2KleinPipeline

    options = LoMOEOptions(num_inference_steps=3, bootstrap_steps=0, guidance_scale=4.0)
    inversion = regionedit.edit(model, image, [], CAPTION, options, progress=False).inversion
    null = regionedit.edit(model, inversion, [], options=options, progress=False)

    def plus_offset(i, packed):
        return packed + Flux2KleinPipeline._pack_latents(inversion.offsets[i : i + 1])

    assert inversion.negative_prompt == CAPTION
    theirs = _pipeline_sample(model, inversion.latents[-1:], CAPTION, 3, 1.0, plus_offset)
    assert torch.allclose(model.decode(inversion.latents[:1]), theirs, atol=1e-4)
    assert torch.allclose(model.decode(null.latents), theirs, atol=1e-4)
    plain = _pipeline_sample(model, inversion.latents[-1:], CAPTION, 3, 1.0)
    assert not torch.allclose(plain, theirs, atol=1e-2)  # the offsets matter: the test can fail


def masks(n: int) -> list[np.ndarray]:
    return box_grid(n, 8, 8, (32, 24), (16, 16))


def test_both_editors_two_regions_repeat(model, image):
    regions = [Region(m, p) for m, p in zip(masks(2), ["a green triangle", "a yellow circle"], strict=True)]
    first = regionedit.edit(model, image, regions, CAPTION, FAST, progress=False)
    again = regionedit.edit(model, image, regions, CAPTION, FAST, progress=False)
    assert first.image.size == (96, 64) and torch.equal(first.latents, again.latents)
    assert all(np.isfinite(v) for step in first.losses for v in step.values())
    assert first.losses[0]["cross_attention"] > 0
    opts = regionedit.MultimodalOptions(num_inference_steps=3, optimize_steps=2)
    mm = [edit_multimodal(model, image, source_prompt=CAPTION, regions=regions, options=opts, progress=False)
          for _ in range(2)]  # fmt: skip
    assert mm[0].image.size == (96, 64) and np.array_equal(np.asarray(mm[0].image), np.asarray(mm[1].image))


def test_attention_capture_leaves_the_output_and_reads_the_text(model):
    z = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(2))
    cond = model.encode_prompt(["a green circle"])
    t = model.scheduler(3, (8, 12)).timesteps[1]
    plain = model.predict(z, t, cond)
    with model.cross_attention() as store:
        store.capture = True
        captured = model.predict(z, t, cond)
    assert torch.equal(plain, captured)
    geometry = model.cross_attention_geometry((8, 12))
    assert len(store.maps) == len(geometry) == 2
    for name, heads, pixels, tokens in geometry:
        assert store.maps[name].shape == (heads, pixels, tokens)
        assert torch.allclose(store.maps[name].sum(-1), torch.ones(heads, pixels), atol=1e-5)


def test_word_positions_follow_the_chat_template(model):
    positions = model.word_positions("a green circle", "green")
    ids = model.tokenizer(model._template("a green circle")).input_ids
    assert positions and model.tokenizer.decode([ids[p] for p in positions]) == "green"
    assert positions[0] > len("a ")  # after the template's user prefix
    assert model.word_positions("a green circle", "red") == []


def test_a_folder_loads_and_edits_from_the_cli(tmp_path, image):
    from diffusers import Flux2KleinPipeline

    from regionedit.cli import main

    Flux2KleinPipeline(**build_flux2_components()).save_pretrained(
        str(tmp_path / "model"), safe_serialization=True
    )
    info = regionedit.describe(str(tmp_path / "model"))
    assert (info.family, info.patch_size, info.vae_scale_factor) == ("flux2", 1, 8)
    image.save(tmp_path / "in.png")
    args = ["edit", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "in.png"),
            "--background-prompt", CAPTION, "--steps", "2", "--bootstrap-steps", "1"]  # fmt: skip
    for k, (m, p) in enumerate(zip(masks(2), ["a green triangle", "a yellow circle"], strict=True)):
        Image.fromarray(m).save(tmp_path / f"m{k}.png")
        args += ["--mask", str(tmp_path / f"m{k}.png"), "--prompt", p]
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.png")]) == 0
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert a.shape == (64, 96, 3) and np.array_equal(a, b)


def test_an_original_flux2_file_is_told_apart_and_needs_its_configs(tmp_path, capsys):
    from safetensors.torch import save_file

    from regionedit.cli import main

    path = tmp_path / "klein.safetensors"
    save_file(
        {"single_stream_modulation.lin.weight": torch.zeros(2, 2), "double_blocks.0.x": torch.zeros(1)}, path
    )
    assert regionedit.describe(str(path)).family == "flux2"  # not FLUX.1, whose files share double_blocks
    Image.new("RGB", (96, 64)).save(tmp_path / "in.png")
    Image.fromarray(masks(1)[0]).save(tmp_path / "m.png")
    code = main(["edit", "--model", str(path), "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "m.png"),
                 "--prompt", "x", "--background-prompt", "y", "--out", str(tmp_path / "o.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--model-config" in err and "Traceback" not in err
