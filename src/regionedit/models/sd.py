"""Stable Diffusion 1.x/2.x: a UNet with cross-attention, one CLIP text encoder, DDIM schedules."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .interface import Conditioning, Model
from .schedule import DDIMInverse, DDIMSchedule


def token_ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    """CLIP token ids ``(len(prompts), model_max_length)``, padded and truncated as diffusers does."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@dataclass(eq=False, kw_only=True)
class StableDiffusion(Model):
    """A ``StableDiffusionPipeline``'s components: ``UNet2DConditionModel`` and ``CLIPTextModel``."""

    unet: torch.nn.Module

    family = "sd"
    pipeline = "StableDiffusionPipeline"  # the diffusers pipeline class that loads this family
    modules = ("vae", "unet", "text_encoder")  # components moved to the model's device and dtype
    objects = ("tokenizer",)  # components taken as they are
    pipeline_kwargs = {"safety_checker": None, "requires_safety_checker": False}
    config_fields: tuple = ()  # pipeline config entries the family reads

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> Conditioning:
        ids = token_ids(self.tokenizer, prompts).to(self.device)
        return Conditioning(self.text_encoder(ids)[0].to(self.dtype))

    def denoiser_inputs(self, latents: torch.Tensor, cond: Conditioning) -> dict:
        return {"encoder_hidden_states": cond.embeds}

    def scheduler(self, steps: int, size=None) -> DDIMSchedule:
        return DDIMSchedule(self.scheduler_config, steps, self.device)

    def inverse_scheduler(self, steps: int, size=None) -> DDIMInverse:
        return DDIMInverse(self.scheduler_config, steps, self.device)

    def cross_attention_layers(self) -> list[str]:
        """Processor names of the UNet's cross-attention layers (``...attn2.processor``)."""
        return [n for n in self.unet.attn_processors if n.endswith("attn2.processor")]

    def cross_attention_geometry(self, latent_hw: tuple[int, int]) -> list[tuple[str, int, int, int]]:
        """``(layer, heads, query pixels, text tokens)`` of each cross-attention layer on a latent of
        ``latent_hw``: a UNet level ``l`` sees the latent downsampled ``l`` times (ceil, as its
        stride-2 convolutions do)."""
        levels = len(self.unet.down_blocks) - 1
        tokens = self.tokenizer.model_max_length
        out = []
        for name in self.cross_attention_layers():
            part, _, rest = name.partition(".")
            index = int(rest.split(".")[0]) if part != "mid_block" else 0
            level = {"down_blocks": index, "mid_block": levels, "up_blocks": levels - index}[part]
            h, w = (-(-s // 2**level) for s in latent_hw)
            heads = self.unet.get_submodule(name.removesuffix(".processor")).heads
            out.append((name, heads, h * w, tokens))
        return out
