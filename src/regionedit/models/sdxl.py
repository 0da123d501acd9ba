"""SDXL: the SD UNet design with two text encoders and size micro-conditioning.

What differs from :class:`~regionedit.models.sd.StableDiffusion`, as diffusers' SDXL pipeline
does it: prompts go through both CLIP encoders (the penultimate hidden states concatenated, the
pooled embedding from the second), the UNet and its ControlNets take
``added_cond_kwargs={"text_embeds", "time_ids"}`` with ``time_ids = (H, W, 0, 0, H, W)`` from the
actual image size, an empty prompt is all zeros where the model's config says
``force_zeros_for_empty_prompt``, and a VAE with ``force_upcast`` runs in float32 when the rest
runs in half precision (its fp16 decode overflows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ModelLoadError
from .interface import Conditioning
from .sd import StableDiffusion, token_ids


@dataclass(eq=False, kw_only=True)
class StableDiffusionXL(StableDiffusion):
    """A ``StableDiffusionXLPipeline``'s components."""

    text_encoder_2: torch.nn.Module
    tokenizer_2: object
    force_zeros_for_empty_prompt: bool = True

    family = "sdxl"
    display_name = "SDXL (base)"
    pipeline = "StableDiffusionXLPipeline"
    modules = ("vae", "unet", "text_encoder", "text_encoder_2")
    objects = ("tokenizer", "tokenizer_2")
    pipeline_kwargs = {}
    config_fields = ("force_zeros_for_empty_prompt",)
    single_file_prefixes = ("conditioner.embedders.1.",)

    def __post_init__(self):
        super().__post_init__()
        self.text_encoder_2.requires_grad_(False).eval()
        passed = 6 * self.unet.config.addition_time_embed_dim + self.text_encoder_2.config.projection_dim
        expected = self.unet.add_embedding.linear_1.in_features
        if passed != expected:
            raise ModelLoadError(
                f"{self.name}: the UNet expects an added embedding of {expected} values but six time ids "
                f"and a {self.text_encoder_2.config.projection_dim}-wide pooled embedding give {passed}; "
                "this is not a base SDXL model (refiners are not supported)"
            )
        if self.vae_dtype != self.dtype:
            self.vae.to(self.vae_dtype)

    @property
    def vae_dtype(self) -> torch.dtype:
        upcast = getattr(self.vae.config, "force_upcast", False) and self.dtype == torch.float16
        return torch.float32 if upcast else self.dtype

    @staticmethod
    def _hidden(tokenizer, encoder, prompts, device):
        return encoder(token_ids(tokenizer, prompts).to(device), output_hidden_states=True)

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> Conditioning:
        first = self._hidden(self.tokenizer, self.text_encoder, prompts, self.device)
        second = self._hidden(self.tokenizer_2, self.text_encoder_2, prompts, self.device)
        embeds = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        pooled = second.text_embeds
        if self.force_zeros_for_empty_prompt:  # diffusers' unconditional input for these models
            empty = torch.tensor([p == "" for p in prompts], device=embeds.device)
            embeds = torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return Conditioning(embeds.to(self.dtype), {"text_embeds": pooled.to(self.dtype)})

    def denoiser_inputs(self, latents: torch.Tensor, cond: Conditioning) -> dict:
        h, w = (s * self.vae_scale_factor for s in latents.shape[-2:])
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=latents.dtype, device=latents.device)
        added = {"text_embeds": cond.extra["text_embeds"], "time_ids": time_ids.expand(latents.shape[0], -1)}
        return {"encoder_hidden_states": cond.embeds, "added_cond_kwargs": added}
