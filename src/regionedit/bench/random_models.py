"""Full-size model architectures with random weights, for speed and memory (speed does not depend on
what the weights are): ``--model sd2-base-random`` and ``--model sdxl-base-random`` in ``regionedit bench``.

The text encoders run once per prompt, so small ones of the right widths stand in for the real
ones without changing the per-step cost.
"""

from __future__ import annotations

import torch

from ..models.loading import from_components
from ..models.sd import StableDiffusion
from ..models.sdxl import StableDiffusionXL


class _NoFiniteCheck:
    """Random weights may decode to non-finite pixels; timing does not care."""

    def decode(self, latents, check_finite: bool = True):
        return super().decode(latents, check_finite=False)


def timing_model(components: dict, device="cpu", dtype=torch.float32, name="random"):
    """A model of the components' family that skips the decoder's finiteness check."""
    base = StableDiffusionXL if "text_encoder_2" in components else StableDiffusion
    cls = type(f"Timing{base.__name__}", (_NoFiniteCheck, base), {})
    return from_components(components, name=name, device=device, dtype=dtype, cls=cls)


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip


def _clip(tokenizer, width: int, layers: int, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=width // 64, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=projection or width,
    )  # fmt: skip
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def sd2_base_components(device="cpu", dtype=torch.float32, seed: int = 0, text_layers: int = 1) -> dict:
    """SD-2-base UNet (865 M parameters) and VAE with random weights, and a small text encoder of
    OpenCLIP-H's width (1024)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..shapes.model import build_tokenizer

    tokenizer = build_tokenizer(77)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
        )  # fmt: skip
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512,
            scaling_factor=0.18215,
        )  # fmt: skip
        text_encoder = _clip(tokenizer, 1024, text_layers)
    return dict(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=_scheduler())


def sdxl_base_components(device="cpu", dtype=torch.float32, seed: int = 0, text_layers: int = 1) -> dict:
    """SDXL-base UNet (2.6 G parameters) and VAE with random weights, and small text encoders of
    CLIP-L's and OpenCLIP-bigG's widths (768 and 1280; cross-attention width 2048)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..shapes.model import build_tokenizer

    tokenizer = build_tokenizer(77)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )  # fmt: skip
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=1024,
            scaling_factor=0.13025, force_upcast=True,
        )  # fmt: skip
        text_encoder = _clip(tokenizer, 768, text_layers)
        text_encoder_2 = _clip(tokenizer, 1280, text_layers, projection=1280)
    return dict(vae=vae, unet=unet, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=tokenizer, scheduler=_scheduler())  # fmt: skip


RANDOM_MODELS = {"sd2-base-random": sd2_base_components, "sdxl-base-random": sdxl_base_components}
