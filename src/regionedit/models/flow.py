"""Rectified-flow transformers: FLUX and Stable Diffusion 3 behind the family interface.

What differs from the UNet families, as diffusers' ``FluxPipeline`` and
``StableDiffusion3Pipeline`` do it:

- the network predicts a velocity on Euler sigmas (:class:`~regionedit.models.schedule.FlowSchedule`,
  with FLUX's image-size shift ``mu``); the inversion integrates the same ODE upwards;
- a token covers 2×2 latent cells (FLUX packs them, SD3 patchifies them), so image sides are
  multiples of twice the VAE factor and masks live on that token grid (``patch_size = 2``);
- prompts go through the pipeline's own ``encode_prompt`` (FLUX: CLIP pooled + T5 sequence;
  SD3: two CLIPs + an optional T5);
- text and image attend jointly; the preservation loss reads the image-to-text part of the
  double-stream (FLUX) or joint (SD3) blocks (:class:`~regionedit.attention.JointAttentionCapture`);
- FLUX.1-dev is guidance-distilled (``guidance_embeds``): one branch per prompt, the scale an input.

The latents an editor sees stay ``(B, C, h, w)``; packing is the family's business.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidInputError
from .interface import Conditioning, Model, templated_word_positions
from .schedule import FlowInverse, FlowSchedule

log = logging.getLogger(__name__)


@dataclass(eq=False, kw_only=True)
class FlowModel(Model):
    """What every rectified-flow transformer family shares: velocities on Euler sigmas (shifted by
    image size where the scheduler says so), 2×2-cell tokens, joint text-image attention, prompts
    through the family pipeline's own ``encode_prompt`` (``self._pipe``)."""

    transformer: torch.nn.Module
    max_sequence_length: int | None = None  # text tokens per prompt (None: the pipeline default)

    patch_size = 2
    denoiser_name = "transformer"
    euler_sigmas = False  # FLUX's pipeline passes linspace(1, 1/n, n) sigmas; SD3 the scheduler's own

    default_sequence_length = 256  # as the family's pipeline

    def __post_init__(self):
        super().__post_init__()
        for m in self._text_encoders():
            m.requires_grad_(False).eval()
        if self.max_sequence_length is None:
            tokenizer = self._sequence_tokenizer()
            limit = getattr(tokenizer, "model_max_length", None) or self.default_sequence_length
            self.max_sequence_length = min(self.default_sequence_length, int(limit))
        self._pipe = self._pipeline()

    def _sequence_tokenizer(self):
        return self.tokenizer

    def _text_encoders(self) -> list:
        return []

    def _pipeline(self):
        raise NotImplementedError

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.transformer

    @property
    def prediction_type(self) -> str:
        return "flow"

    def _mu(self, size) -> float | None:
        """FLUX's resolution-dependent shift of the sigmas (``use_dynamic_shifting``)."""
        config = self.scheduler_config
        if not config.get("use_dynamic_shifting"):
            return None
        if size is None:
            size = (self.native_size // self.vae_scale_factor,) * 2
        tokens = (int(size[0]) // 2) * (int(size[1]) // 2)
        base, top = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
        lo, hi = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
        return lo + (hi - lo) * (tokens - base) / (top - base)

    def scheduler(self, steps: int, size=None) -> FlowSchedule:
        sigmas = None
        if self.euler_sigmas and not self.scheduler_config.get("use_flow_sigmas"):
            sigmas = np.linspace(1.0, 1 / steps, steps)
        return FlowSchedule(self.scheduler_config, steps, self.device, sigmas, self._mu(size))

    def inverse_scheduler(self, steps: int, size=None) -> FlowInverse:
        return FlowInverse(self.scheduler(steps, size))

    def cross_attention_layers(self) -> list[str]:
        """The joint (text + image) attention layers: SD3's blocks, FLUX's double-stream blocks."""
        return [
            n for n in self.transformer.attn_processors
            if n.startswith("transformer_blocks.") and n.endswith(".attn.processor")
        ]  # fmt: skip

    def cross_attention(self, temperature: float = 1.0):
        from ..attention import joint_attention

        return joint_attention(self.transformer, self.cross_attention_layers(), temperature)

    def cross_attention_geometry(self, latent_hw: tuple[int, int]) -> list[tuple[str, int, int, int]]:
        """``(layer, heads, image tokens, text tokens)`` of each captured layer."""
        pixels = (latent_hw[0] // self.patch_size) * (latent_hw[1] // self.patch_size)
        tokens = self.text_tokens()
        return [
            (n, self.transformer.get_submodule(n.removesuffix(".processor")).heads, pixels, tokens)
            for n in self.cross_attention_layers()
        ]

    def text_tokens(self) -> int:
        """Text tokens the joint attention sees per prompt."""
        return int(self.max_sequence_length)

    def text_segments(self) -> list[tuple[object, int, int]]:
        return [(self._sequence_tokenizer(), 0, int(self.max_sequence_length))]

    def _check_controlnet_widths(self, net, index: int, keys: tuple[str, ...]) -> None:
        """One line unless ``net`` has the transformer's width and the config ``keys``' values."""
        mine, theirs = self.transformer.config, net.config
        if net.inner_dim != self.transformer.inner_dim or any(theirs[k] != mine[k] for k in keys):
            raise InvalidInputError(
                f"ControlNet {index} was made for another {self.family} transformer (width or "
                f"{', '.join(keys)} differ); use one made for this model"
            )

    def _timesteps(self, t, batch: int, dtype) -> torch.Tensor:
        return torch.as_tensor(t, device=self.device).to(dtype).reshape(-1).expand(batch)


class ChatPrompts:
    """Prompts wrapped in the tokenizer's chat template, as the pipelines of the Qwen3-encoded families
    (FLUX.2 [klein], Z-Image) wrap them; words are found in the templated text."""

    enable_thinking = False  # the template's switch, as the family's pipeline sets it

    def _template(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True,
            enable_thinking=self.enable_thinking,
        )  # fmt: skip

    def _template_head(self) -> str:
        """The template's text before a prompt."""
        return self._template("\x00").split("\x00")[0]

    def word_positions(self, prompt: str, words: str) -> list[int]:
        """Positions of ``words`` in the captured text axis: the chat-templated prompt's tokens."""
        start = len(self._template_head())
        found = templated_word_positions(self.tokenizer, self._template(prompt), start, prompt, words)
        return [k for k in found if k < self.text_tokens()]


@dataclass(eq=False, kw_only=True)
class FlowTransformer(FlowModel):
    """FLUX.1 and SD3: a CLIP (pooled) and a T5-like second encoder, whose sequence the joint
    attention reads."""

    text_encoder_2: torch.nn.Module
    tokenizer_2: object

    def _sequence_tokenizer(self):
        return self.tokenizer_2

    def _text_encoders(self) -> list:
        return [self.text_encoder_2]


@dataclass(eq=False, kw_only=True)
class Flux(FlowTransformer):
    """A ``FluxPipeline``'s components: ``FluxTransformer2DModel``, CLIP (pooled) and T5."""

    family = "flux"
    display_name = "FLUX.1"
    pipeline = "FluxPipeline"
    denoiser_class = "FluxTransformer2DModel"
    modules = ("vae", "transformer", "text_encoder", "text_encoder_2")
    objects = ("tokenizer", "tokenizer_2")
    single_file_prefixes = ("double_blocks.",)
    single_file_holds = "denoiser"  # FLUX files hold the transformer alone
    euler_sigmas = True
    default_sequence_length = 512

    def _pipeline(self):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        return FluxPipeline(
            FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config), self.vae, self.text_encoder,
            self.tokenizer, self.text_encoder_2, self.tokenizer_2, self.transformer,
        )  # fmt: skip

    @property
    def guidance(self) -> str:
        return "distilled" if self.transformer.config.guidance_embeds else "cfg"

    def with_guidance(self, cond: Conditioning, scale: float) -> Conditioning:
        scales = torch.full((len(cond),), float(scale), device=cond.embeds.device)
        return Conditioning(cond.embeds, {**cond.extra, "guidance": scales})

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> Conditioning:
        embeds, pooled, _ = self._pipe.encode_prompt(
            prompts, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return Conditioning(embeds.to(self.dtype), {"pooled_projections": pooled.to(self.dtype)})

    def _inputs(self, latents: torch.Tensor, t, cond: Conditioning) -> dict:
        b = latents.shape[0]
        guidance = self._guidance(cond, b) if self.transformer.config.guidance_embeds else None
        return flux_inputs(latents.to(self.dtype), self._timesteps(t, b, self.dtype) / 1000, cond.embeds,
                           cond.extra["pooled_projections"], guidance)  # fmt: skip

    def _guidance(self, cond: Conditioning, batch: int) -> torch.Tensor:
        """The distilled guidance input: the scale ``with_guidance`` set, else 1 (no guidance)."""
        if "guidance" in cond.extra:
            return cond.extra["guidance"].to(self.dtype)
        return torch.ones(batch, device=self.device, dtype=self.dtype)

    def predict(self, latents: torch.Tensor, t, cond: Conditioning, **residuals) -> torch.Tensor:
        out = self.transformer(**self._inputs(latents, t, cond), return_dict=False, **residuals)[0]
        return unpack(out, latents.shape[-2:]).float()

    # --- ControlNets (FluxControlNetModel: InstantX-style on packed latents, XLabs-style on pixels) ---

    controlnet_class = "FluxControlNetModel"

    def check_controlnet(self, net, index: int) -> None:
        self._check_controlnet_class(net, index)
        if net.union:
            raise InvalidInputError(
                f"ControlNet {index} is a union ControlNet (it needs a mode); give a single-kind one"
            )
        self._check_controlnet_widths(net, index, ("joint_attention_dim", "in_channels"))
        pixels = 8 * net.config.patch_size
        if net.input_hint_block is not None and pixels != self.size_factor:
            raise InvalidInputError(f"ControlNet {index} reads {pixels} pixels per token, the model "
                                    f"{self.size_factor}; use one made for this model")  # fmt: skip

    def control_input(self, net, image: torch.Tensor) -> torch.Tensor:
        """XLabs-style nets read the image in [-1, 1]; InstantX-style nets its packed latents."""
        pixels = image.float() * 2 - 1
        if net.input_hint_block is not None:
            return pixels.to(self.dtype)
        return flux_inputs(self.encode(pixels), None, None, None)["hidden_states"].to(self.dtype)

    def control_residuals(self, nets, inputs, scales, latents, t, cond) -> dict:
        kwargs = self._inputs(latents, t, cond)
        guidance = self._guidance(cond, latents.shape[0])
        blocks = singles = None
        for net, x, scale in zip(nets, inputs, scales, strict=True):
            own = kwargs | {
                "guidance": guidance if net.config.guidance_embeds else None
            }  # per net: they may differ
            b, s = net(controlnet_cond=x, conditioning_scale=scale, return_dict=False, **own)
            blocks, singles = _add(blocks, b), _add(singles, s)
        return dict(controlnet_block_samples=blocks, controlnet_single_block_samples=singles,
                    controlnet_blocks_repeat=nets[0].input_hint_block is not None)  # fmt: skip


def flux_inputs(latents: torch.Tensor, timestep, embeds, pooled, guidance=None) -> dict:
    """``FluxTransformer2DModel`` keyword inputs for unpacked latents ``(B, C, h, w)``: packed 2×2
    tokens, their position ids and the text's; ``timestep`` is σ (the pipeline's t / 1000)."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)
    tokens = 0 if embeds is None else embeds.shape[1]
    return dict(
        hidden_states=FluxPipeline._pack_latents(latents, b, c, h, w), encoder_hidden_states=embeds,
        pooled_projections=pooled, timestep=timestep, img_ids=ids,
        txt_ids=torch.zeros(tokens, 3, device=latents.device, dtype=latents.dtype), guidance=guidance,
    )  # fmt: skip


def unpack(tokens: torch.Tensor, hw) -> torch.Tensor:
    """Packed 2×2 tokens back to latents ``(B, C, h, w)``."""
    from diffusers import FluxPipeline

    return FluxPipeline._unpack_latents(tokens, int(hw[0]), int(hw[1]), 1)  # sizes given in latent cells


def _add(total, parts):
    """Element-wise sum of ControlNet residual lists (None: nothing yet, or none given)."""
    if parts is None or total is None:
        return parts if total is None else total
    return [a + b for a, b in zip(total, parts, strict=True)]


@dataclass(eq=False, kw_only=True)
class StableDiffusion3(FlowTransformer):
    """A ``StableDiffusion3Pipeline``'s components: ``SD3Transformer2DModel``, two CLIPs, T5 or none."""

    text_encoder_3: torch.nn.Module | None = None
    tokenizer_3: object = None

    family = "sd3"
    display_name = "SD3"
    pipeline = "StableDiffusion3Pipeline"
    denoiser_class = "SD3Transformer2DModel"
    modules = ("vae", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
    objects = ("tokenizer", "tokenizer_2", "tokenizer_3")
    optional_components = ("text_encoder_3", "tokenizer_3")  # SD3 without its T5, as diffusers allows
    single_file_prefixes = ("joint_blocks.",)

    def _text_encoders(self) -> list:
        return [self.text_encoder_2] + ([self.text_encoder_3] if self.text_encoder_3 is not None else [])

    def _sequence_tokenizer(self):
        return self.tokenizer_3

    def text_tokens(self) -> int:
        """CLIP tokens, then T5's (zeros without a T5), as the pipeline lays them out."""
        return int(self.tokenizer.model_max_length) + int(self.max_sequence_length)

    def text_segments(self) -> list[tuple[object, int, int]]:
        clip = int(self.tokenizer.model_max_length)
        t5 = (
            [(self.tokenizer_3, clip, int(self.max_sequence_length))]
            if self.text_encoder_3 is not None
            else []
        )
        return [(self.tokenizer, 0, clip), *t5]

    def _pipeline(self):
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(
            self.transformer, FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config), self.vae,
            self.text_encoder, self.tokenizer, self.text_encoder_2, self.tokenizer_2, self.text_encoder_3,
            self.tokenizer_3,
        )  # fmt: skip

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> Conditioning:
        embeds, _, pooled, _ = self._pipe.encode_prompt(
            prompts, prompts, prompts, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )  # fmt: skip
        return Conditioning(embeds.to(self.dtype), {"pooled_projections": pooled.to(self.dtype)})

    def _inputs(self, latents: torch.Tensor, t, cond: Conditioning) -> dict:
        return dict(hidden_states=latents.to(self.dtype), encoder_hidden_states=cond.embeds,
                    pooled_projections=cond.extra["pooled_projections"],
                    timestep=self._timesteps(t, latents.shape[0], self.dtype))  # fmt: skip

    def predict(self, latents: torch.Tensor, t, cond: Conditioning, **residuals) -> torch.Tensor:
        return self.transformer(**self._inputs(latents, t, cond), return_dict=False, **residuals)[0].float()

    # --- ControlNets (SD3ControlNetModel on the control image's latents) ---------------------

    controlnet_class = "SD3ControlNetModel"

    def check_controlnet(self, net, index: int) -> None:
        self._check_controlnet_class(net, index)
        if net.config.extra_conditioning_channels:
            raise InvalidInputError(
                f"ControlNet {index} takes extra (inpainting) channels; give a layout ControlNet"
            )
        self._check_controlnet_widths(net, index, ("in_channels", "patch_size"))
        if net.pos_embed is None:  # SD3.5 Large nets share the transformer's, as the pipeline sets it
            net.pos_embed = net._get_pos_embed_from_transformer(self.transformer).to(self.device, self.dtype)

    def control_input(self, net, image: torch.Tensor) -> torch.Tensor:
        """The image's latents; InstantX-style nets (zero pooled input) skip the VAE shift."""
        z = self.encode(image.float() * 2 - 1)
        if net.config.force_zeros_for_pooled_projection:
            z = z + self._vae_shift() * self.vae.config.scaling_factor
        return z.to(self.dtype)

    def control_residuals(self, nets, inputs, scales, latents, t, cond) -> dict:
        kwargs = self._inputs(latents, t, cond)
        blocks = None
        for net, x, scale in zip(nets, inputs, scales, strict=True):
            own = dict(kwargs)
            if net.config.force_zeros_for_pooled_projection:  # InstantX-style nets
                own["pooled_projections"] = torch.zeros_like(own["pooled_projections"])
            if net.config.joint_attention_dim is None:  # SD3.5 Large nets read no text
                own["encoder_hidden_states"] = None
            (b,) = net(controlnet_cond=x, conditioning_scale=scale, return_dict=False, **own)
            blocks = _add(blocks, b)
        return dict(block_controlnet_hidden_states=blocks)
