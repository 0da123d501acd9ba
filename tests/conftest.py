"""Tiny random models built in code: fast, offline, deterministic."""

import numpy as np
import pytest
from PIL import Image

from regionedit.models.loading import from_components
from regionedit.shapes.model import MiniConfig, build_components, save_pipeline

TINY = MiniConfig(image_size=64, vae_channels=(32, 32, 32), unet_channels=(16, 32, 32), text_width=32)


@pytest.fixture(scope="session")
def tiny_components():
    return build_components(TINY, seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_components):
    return from_components(tiny_components, name="tiny")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_components):
    return save_pipeline(tiny_components, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def image64():
    rng = np.random.default_rng(0)
    arr = np.zeros((64, 64, 3), np.uint8) + np.array([128, 128, 128], np.uint8)
    arr[8:24, 8:24] = (220, 40, 40)
    arr[36:56, 30:54] = (40, 80, 220)
    arr = np.clip(arr.astype(int) + rng.integers(-10, 10, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def wide_image(seed: int) -> Image.Image:
    """A 96x64 (not square) noisy gray scene with a red and a blue box."""
    rng = np.random.default_rng(seed)
    arr = np.full((64, 96, 3), 128, np.uint8)
    arr[8:30, 8:40] = (220, 40, 40)
    arr[34:60, 50:90] = (40, 80, 220)
    return Image.fromarray(np.clip(arr + rng.integers(-8, 8, arr.shape), 0, 255).astype(np.uint8))


def null_edit_and_repeat(model, image, mask, options, atol: float):
    """Edit one region of a 96x64 image: the edit repeats bit for bit, and editing its inversion
    with no regions lands back on the inversion's start. Returns the first edit."""
    import torch

    import regionedit

    def once():
        region = regionedit.Region(mask, "a green triangle")
        caption = "a red square and a blue circle on a gray background"
        return regionedit.edit(model, image, [region], caption, options, progress=False)

    first = once()
    assert first.image.size == (96, 64)
    null = regionedit.edit(model, first.inversion, [], options=options, progress=False)
    assert torch.allclose(null.latents, first.inversion.latents[:1], atol=atol)
    assert np.array_equal(np.asarray(first.image), np.asarray(once().image))
    return first


def box_grid(n: int, top: int, left: int, pitch: tuple[int, int], size: tuple[int, int]) -> list[np.ndarray]:
    """``n`` boxes of ``size`` (h, w) on a 64x96 image, four to a row, ``pitch`` (dy, dx) apart."""
    out = []
    for k in range(n):
        m = np.zeros((64, 96), bool)
        y, x = divmod(k, 4)
        y0, x0 = top + pitch[0] * y, left + pitch[1] * x
        m[y0 : y0 + size[0], x0 : x0 + size[1]] = True
        out.append(m)
    return out


def box(y0, y1, x0, x1, size=64):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def build_sdxl_components(seed: int = 0) -> dict:
    """A tiny random SDXL (two text encoders, text-time added conditioning), as diffusers' own
    SDXL tests build one, with the shapes-world tokenizer (no download) and a 4x VAE."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from regionedit.shapes.model import build_tokenizer

    tokenizer = build_tokenizer(48)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=1,
        )  # fmt: skip
        vae = AutoencoderKL(
            block_out_channels=(32, 32, 32), in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            sample_size=64, force_upcast=True,
        )  # fmt: skip
        text_config = CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3, vocab_size=len(tokenizer),
            max_position_embeddings=48, projection_dim=32, hidden_act="gelu",
        )  # fmt: skip
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
    )  # fmt: skip
    return dict(vae=vae, unet=unet, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=tokenizer, scheduler=scheduler)  # fmt: skip


@pytest.fixture(scope="session")
def sdxl_components():
    return build_sdxl_components()


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory, sdxl_components):
    from diffusers import StableDiffusionXLPipeline

    folder = tmp_path_factory.mktemp("sdxl") / "model"
    StableDiffusionXLPipeline(**sdxl_components).save_pretrained(str(folder), safe_serialization=True)
    return folder


def _tiny_clip(tokenizer, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
        max_position_embeddings=48, projection_dim=32, hidden_act="gelu",
    )  # fmt: skip
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _tiny_flow_vae(shift: float, scale: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 32, 32), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        sample_size=64, shift_factor=shift, scaling_factor=scale, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip


def build_flux_components(seed: int = 0, guidance_embeds: bool = True) -> dict:
    """A tiny random FLUX (packed 2x2 latents, CLIP pooled + T5, guidance-distilled by default),
    as diffusers' FLUX tests build one, with the shapes-world tokenizer for both encoders."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from regionedit.shapes.model import build_tokenizer

    tokenizer = build_tokenizer(48)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=2, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
            guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8),
        )  # fmt: skip
        vae = _tiny_flow_vae(0.1159, 0.3611)
        text_encoder = _tiny_clip(tokenizer)
        t5 = T5EncoderModel(
            T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id)
        )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    return dict(vae=vae, transformer=transformer, text_encoder=text_encoder, text_encoder_2=t5, tokenizer=tokenizer,
                tokenizer_2=tokenizer, scheduler=scheduler)  # fmt: skip


def build_sd3_components(seed: int = 0) -> dict:
    """A tiny random SD3 (2x2 patches, two CLIPs, no T5), as diffusers' SD3 tests build one."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from regionedit.shapes.model import build_tokenizer

    tokenizer = build_tokenizer(48)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64, out_channels=4,
        )  # fmt: skip
        vae = _tiny_flow_vae(0.0609, 1.5305)
        text_encoder = _tiny_clip(tokenizer, projection=True)
        text_encoder_2 = _tiny_clip(tokenizer, projection=True)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return dict(vae=vae, transformer=transformer, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                text_encoder_3=None, tokenizer=tokenizer, tokenizer_2=tokenizer, tokenizer_3=None,
                scheduler=scheduler)  # fmt: skip
