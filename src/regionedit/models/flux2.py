"""FLUX.2 [klein] behind the family interface, as diffusers' ``Flux2KleinPipeline`` runs it.

What differs from FLUX.1:

- one text encoder, Qwen3, read through its chat template (thinking off): the hidden states of
  three of its layers (9, 18, 27) side by side per token, the text padded to 512 tokens and all of
  it attended; nothing pooled;
- the VAE's 2×2 patches are folded into channels and each channel normalised by the VAE's
  batch-norm statistics, so a latent cell *is* a token (``patch_size = 1``, 16 px per cell);
- base models use true CFG against an empty prompt; step-distilled ones (``is_distilled``) run one
  branch and ignore the scale; the transformer takes no guidance input;
- the sigmas' shift ``mu`` is an empirical function of the image's tokens and the step count.

The preservation loss reads the image-to-text part of the double-stream blocks, as on FLUX.1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .flow import ChatPrompts, FlowModel
from .interface import Conditioning
from .schedule import FlowSchedule

log = logging.getLogger(__name__)

PIPELINE_LAYERS = (9, 18, 27)  # the text encoder's hidden states the pipeline stacks


@dataclass(eq=False, kw_only=True)
class Flux2Klein(ChatPrompts, FlowModel):
    """A ``Flux2KleinPipeline``'s components: ``Flux2Transformer2DModel``, ``AutoencoderKLFlux2``, Qwen3."""

    is_distilled: bool = False  # the pipeline's config: step-distilled models skip CFG
    text_layers: tuple[int, ...] | None = None  # hidden states stacked per token (None: the pipeline's)

    family = "flux2"
    display_name = "FLUX.2 [klein]"
    pipeline = "Flux2KleinPipeline"
    denoiser_class = "Flux2Transformer2DModel"
    modules = ("vae", "transformer", "text_encoder")
    objects = ("tokenizer",)
    config_fields = ("is_distilled",)
    text_encoder_classes = ("Qwen3ForCausalLM", "Qwen3Model")  # FLUX.2 [dev] has Mistral: not this family
    single_file_prefixes = ("single_stream_modulation.",)  # Black Forest Labs' FLUX.2 tensor names
    single_file_holds = "denoiser"
    patch_size = 1
    euler_sigmas = True
    default_sequence_length = 512

    @classmethod
    def recognises(cls, classes: dict) -> bool:
        return (
            super().recognises(classes)
            and classes.get("text_encoder") in cls.text_encoder_classes
            and classes.get("_class_name") in (None, cls.pipeline)
        )

    def __post_init__(self):
        super().__post_init__()
        if self.text_layers is None:
            self.text_layers = self._default_text_layers()

    def _default_text_layers(self) -> tuple[int, ...]:
        """The pipeline's layers; a random encoder too shallow for them gives its last ones (as many
        as the transformer's text width asks for)."""
        count = self.transformer.config.joint_attention_dim // self.text_encoder.config.hidden_size
        depth = self.text_encoder.config.num_hidden_layers
        if count == len(PIPELINE_LAYERS) and depth > max(PIPELINE_LAYERS):
            return PIPELINE_LAYERS
        layers = tuple(range(depth + 1 - count, depth + 1))
        log.info("text encoder of %d layers: reading hidden states %s", depth, layers)
        return layers

    def _pipeline(self):
        from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

        return Flux2KleinPipeline(
            FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config), self.vae, self.text_encoder,
            self.tokenizer, self.transformer, is_distilled=self.is_distilled,
        )  # fmt: skip

    # --- latents: 2x2 patches folded into channels, batch-norm statistics ---------------------

    @classmethod
    def vae_factor(cls, vae_config: dict) -> int:
        return 2 * super().vae_factor(vae_config)

    @property
    def latent_channels(self) -> int:
        return 4 * int(self.vae.config.latent_channels)

    def _statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(
            like.device, like.dtype
        )
        return mean, std

    def to_latents(self, z: torch.Tensor) -> torch.Tensor:
        from diffusers import Flux2KleinPipeline

        z = Flux2KleinPipeline._patchify_latents(z)
        mean, std = self._statistics(z)
        return (z - mean) / std

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        from diffusers import Flux2KleinPipeline

        mean, std = self._statistics(latents)
        return Flux2KleinPipeline._unpatchify_latents(latents * std + mean)

    # --- schedule, guidance, text -------------------------------------------------------------

    def scheduler(self, steps: int, size=None) -> FlowSchedule:
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        sigmas = None if self.scheduler_config.get("use_flow_sigmas") else np.linspace(1.0, 1 / steps, steps)
        if size is None:
            size = (self.native_size // self.vae_scale_factor,) * 2
        mu = compute_empirical_mu(int(size[0]) * int(size[1]), steps)
        return FlowSchedule(self.scheduler_config, steps, self.device, sigmas, mu)

    @property
    def guidance(self) -> str:
        return "distilled" if self.is_distilled else "cfg"

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> Conditioning:
        embeds, _ = self._pipe.encode_prompt(
            prompts, device=self.device, max_sequence_length=self.max_sequence_length,
            text_encoder_out_layers=self.text_layers,
        )  # fmt: skip
        return Conditioning(embeds.to(self.dtype))

    # --- the denoiser -------------------------------------------------------------------------

    def _inputs(self, latents: torch.Tensor, t, cond: Conditioning) -> dict:
        from diffusers import Flux2KleinPipeline

        x = latents.to(self.dtype)
        return dict(
            hidden_states=Flux2KleinPipeline._pack_latents(x),
            timestep=self._timesteps(t, x.shape[0], self.dtype) / 1000,
            guidance=None,
            encoder_hidden_states=cond.embeds,
            txt_ids=Flux2KleinPipeline._prepare_text_ids(cond.embeds).to(self.device),
            img_ids=Flux2KleinPipeline._prepare_latent_ids(x).to(self.device),
        )

    def predict(self, latents: torch.Tensor, t, cond: Conditioning, **residuals) -> torch.Tensor:
        out = self.transformer(**self._inputs(latents, t, cond), return_dict=False, **residuals)[0]
        return out.transpose(1, 2).reshape(latents.shape).float()  # tokens are the cells, row by row
