"""Full-size model architectures with random weights, for speed and memory (speed does not depend on
what the weights are): ``--model sd2-base-random``, ``sdxl-base-random``, ``flux-dev-random`` and
``sd3-medium-random`` in ``regionedit bench``.

The text encoders run once per prompt, so small ones of the right widths stand in for the real
ones without changing the per-step cost. Keywords beyond the builders' own change the denoiser's config
(a reduced depth of the real widths: ``sdxl_base_components(transformer_layers_per_block=1)``).
"""

from __future__ import annotations

import torch

from ..models.families import family_of_components
from ..models.loading import from_components


class _NoFiniteCheck:
    """Random weights may decode to non-finite pixels; timing does not care."""

    def decode(self, latents, check_finite: bool = True):
        return super().decode(latents, check_finite=False)


def timing_model(components: dict, device="cpu", dtype=torch.float32, name="random"):
    """A model of the components' family that skips the decoder's finiteness check."""
    base = family_of_components(components)
    cls = type(f"Timing{base.__name__}", (_NoFiniteCheck, base), {})
    return from_components(components, name=name, device=device, dtype=dtype, cls=cls)


def qwen_tokenizer(max_tokens: int = 512):
    """A byte-level Qwen2 tokenizer (one token per byte, no merges) with the chat special tokens and
    a Qwen chat template, built offline: what the Qwen3 / Qwen2.5-VL families' pipelines call
    (``apply_chat_template``, padding) at the real tokenizer's token layout, for random models."""
    import json
    import tempfile
    from pathlib import Path

    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "vocab.json").write_text(json.dumps(vocab))
        Path(tmp, "merges.txt").write_text("#version: 0.2\n")
        tokenizer = Qwen2Tokenizer.from_pretrained(
            tmp, model_max_length=max_tokens, unk_token=None, bos_token=None, eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
        )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tokenizer


def _denoiser(name: str, **changes) -> torch.nn.Module:
    """The released denoiser of architecture ``name`` (:mod:`regionedit.bench.architectures`), random
    weights, with config ``changes`` (a reduced depth, a sample size)."""
    from ..plan.shape import build_network
    from .architectures import ARCHITECTURES

    cls, config = ARCHITECTURES[name].denoiser
    return build_network(cls, {**config, **changes}, torch.get_default_device())


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


def sd2_base_components(
    device="cpu", dtype=torch.float32, seed: int = 0, text_layers: int = 1, **denoiser
) -> dict:
    """SD-2-base UNet (865 M parameters) and VAE with random weights, and a small text encoder of
    OpenCLIP-H's width (1024)."""
    from diffusers import AutoencoderKL

    from ..shapes.model import build_tokenizer

    tokenizer = build_tokenizer(77)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        unet = _denoiser("sd2-base-random", sample_size=64, **denoiser)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512,
            scaling_factor=0.18215,
        )  # fmt: skip
        text_encoder = _clip(tokenizer, 1024, text_layers)
    return dict(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=_scheduler())


def sdxl_base_components(
    device="cpu", dtype=torch.float32, seed: int = 0, text_layers: int = 1, **denoiser
) -> dict:
    """SDXL-base UNet (2.6 G parameters) and VAE with random weights, and small text encoders of
    CLIP-L's and OpenCLIP-bigG's widths (768 and 1280; cross-attention width 2048)."""
    from diffusers import AutoencoderKL

    from ..shapes.model import build_tokenizer

    tokenizer = build_tokenizer(77)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        unet = _denoiser("sdxl-base-random", sample_size=128, **denoiser)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=1024,
            scaling_factor=0.13025, force_upcast=True,
        )  # fmt: skip
        text_encoder = _clip(tokenizer, 768, text_layers)
        text_encoder_2 = _clip(tokenizer, 1280, text_layers, projection=1280)
    return dict(vae=vae, unet=unet, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=tokenizer, scheduler=_scheduler())  # fmt: skip


def _flow_vae(scale: float, shift: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=16, sample_size=1024,
        scaling_factor=scale, shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip


def _t5(tokenizer, width: int, layers: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_ff=2 * width, d_kv=64, num_heads=width // 64,
                      num_layers=layers, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return T5EncoderModel(config)


def flux_dev_components(
    device="cpu", dtype=torch.float32, seed: int = 0, text_layers: int = 1, **denoiser
) -> dict:
    """FLUX.1-dev's transformer (12 B parameters: 19 double- and 38 single-stream blocks, 24 heads of
    128, guidance embedding) and 16-channel VAE with random weights; a CLIP of width 768 (pooled)
    and a small T5 of width 4096 (512 tokens, as FLUX.1-dev's pipeline)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..shapes.model import build_tokenizer

    tokenizer = build_tokenizer(77)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        transformer = _denoiser("flux-dev-random", **denoiser)
        vae = _flow_vae(0.3611, 0.1159)
        text_encoder = _clip(tokenizer, 768, text_layers)
        text_encoder_2 = _t5(tokenizer, 4096, text_layers)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    return dict(vae=vae, transformer=transformer, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=build_tokenizer(512), scheduler=scheduler)  # fmt: skip


def sd3_medium_components(
    device="cpu", dtype=torch.float32, seed: int = 0, text_layers: int = 1, **denoiser
) -> dict:
    """SD3-medium's transformer (2 B parameters: 24 joint blocks of 24 heads × 64, 2x2 patches) and
    16-channel VAE with random weights; CLIPs of widths 768 and 1280 and a small T5 of width 4096
    (256 tokens, as the pipeline's default)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..shapes.model import build_tokenizer

    tokenizer = build_tokenizer(77)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        transformer = _denoiser("sd3-medium-random", **denoiser)
        vae = _flow_vae(1.5305, 0.0609)
        text_encoder = _clip(tokenizer, 768, text_layers, projection=768)
        text_encoder_2 = _clip(tokenizer, 1280, text_layers, projection=1280)
        text_encoder_3 = _t5(tokenizer, 4096, text_layers)
    return dict(vae=vae, transformer=transformer, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                text_encoder_3=text_encoder_3, tokenizer=tokenizer, tokenizer_2=tokenizer, tokenizer_3=build_tokenizer(256),
                scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))  # fmt: skip


RANDOM_MODELS = {
    "sd2-base-random": sd2_base_components,
    "sdxl-base-random": sdxl_base_components,
    "flux-dev-random": flux_dev_components,
    "sd3-medium-random": sd3_medium_components,
}
