"""Stable Diffusion 1.x/2.x: a UNet with cross-attention, one CLIP text encoder, DDIM schedules."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
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
    display_name = "Stable Diffusion 1.x/2.x"
    pipeline = "StableDiffusionPipeline"
    denoiser_name, denoiser_class = "unet", "UNet2DConditionModel"
    modules = ("vae", "unet", "text_encoder")
    objects = ("tokenizer",)
    pipeline_kwargs = {"safety_checker": None, "requires_safety_checker": False}
    single_file_prefixes = ("cond_stage_model.",)
    controlnet_class = "ControlNetModel"

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    @property
    def native_size(self) -> int:
        """The image side the model was trained at (its latent sample size times the VAE factor)."""
        size = getattr(self.unet.config, "sample_size", 64) or 64
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * self.vae_scale_factor

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

    def text_segments(self) -> list[tuple[object, int, int]]:
        return [(self.tokenizer, 0, self.tokenizer.model_max_length)]

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

    # --- ControlNets (ControlNetModel: the UNet's encoder copy, on the control image) ------------

    def check_controlnet(self, net, index: int) -> None:
        """One-line error unless ``net`` was made for this model (class, VAE factor, text width)."""
        self._check_controlnet_class(net, index)
        factor = 2 ** (len(net.config.conditioning_embedding_out_channels) - 1)
        if factor != self.vae_scale_factor:
            raise InvalidInputError(
                f"ControlNet {index} downsamples its control image by {factor} but the model's VAE by "
                f"{self.vae_scale_factor}; use a ControlNet made for this model"
            )
        width = self.denoiser.config.cross_attention_dim
        if net.config.cross_attention_dim != width:
            raise InvalidInputError(
                f"ControlNet {index} has cross_attention_dim {net.config.cross_attention_dim}, the model's "
                f"denoiser {width}; use a ControlNet made for this model"
            )

    def control_input(self, net, image: torch.Tensor) -> torch.Tensor:
        """What ``net`` reads for a control image ``(1, 3, H, W)`` in [0, 1]: a UNet ControlNet,
        the image itself."""
        return image.to(self.dtype)

    def control_residuals(self, nets, inputs, scales, latents, t, cond: Conditioning) -> dict:
        """``predict``'s keyword residuals from ``nets`` reading ``inputs`` (batched like ``latents``)
        at ``scales``; several nets' residuals add up (diffusers' ``MultiControlNetModel``)."""
        from diffusers.models.controlnets import MultiControlNetModel

        kwargs = self.denoiser_inputs(latents, cond)
        if len(nets) == 1:
            out = nets[0](latents, t, controlnet_cond=inputs[0], conditioning_scale=scales[0], return_dict=False,
                          **kwargs)  # fmt: skip
        else:
            out = MultiControlNetModel(list(nets))(
                latents,
                t,
                controlnet_cond=list(inputs),
                conditioning_scale=scales,
                return_dict=False,
                **kwargs,
            )
        return dict(down_block_additional_residuals=out[0], mid_block_additional_residual=out[1])
