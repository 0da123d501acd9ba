"""Qwen-Image behind the family interface, as diffusers' ``QwenImagePipeline`` runs it.

What differs from FLUX.1:

- one text encoder, Qwen2.5-VL, read through the pipeline's chat template: its last hidden state
  with the template's first 34 tokens dropped; each prompt keeps its own length, and where prompts
  of a batch differ the padding mask goes to the transformer; nothing pooled;
- a video VAE run on one frame (latents ``(B, C, 1, h, w)``), each channel normalised by the
  VAE's ``latents_mean`` / ``latents_std``;
- true CFG, the guided prediction rescaled per token to the norm of the conditional one;
- the sigmas' shift ``mu`` from the image's tokens (``calculate_shift``); no guidance input;
- every block is double-stream, and its processor takes the text mask and complex rotary
  embeddings of image and text apart (text positions after the image's), so its capture is here;
  the captured maps run over ``max_sequence_length`` text positions (zero past a prompt's end), so
  that the preservation loss compares prompts of any length position by position.

The latents an editor sees stay ``(B, C, h, w)``; the 2×2 packing is the family's business.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError, ModelLoadError
from .flow import FlowModel, _add
from .interface import Conditioning, templated_word_positions

DEFAULT_SAMPLE_SIZE = 128  # the pipeline's default side, in latent cells (1024 px on Qwen-Image)


@dataclass(eq=False, kw_only=True)
class QwenImage(FlowModel):
    """A ``QwenImagePipeline``'s components: ``QwenImageTransformer2DModel``, ``AutoencoderKLQwenImage``
    and Qwen2.5-VL."""

    family = "qwenimage"
    display_name = "Qwen-Image"
    pipeline = "QwenImagePipeline"
    denoiser_class = "QwenImageTransformer2DModel"
    modules = ("vae", "transformer", "text_encoder")
    objects = ("tokenizer",)
    euler_sigmas = True
    default_sequence_length = 512  # the pipeline's max_sequence_length
    controlnet_class = "QwenImageControlNetModel"

    @classmethod
    def recognises(cls, classes: dict) -> bool:
        # the edit pipelines share the transformer but read the image through the text encoder
        return super().recognises(classes) and classes.get("_class_name") in (None, cls.pipeline)

    def __post_init__(self):
        if self.transformer.config.guidance_embeds:
            raise ModelLoadError(
                "this Qwen-Image transformer is guidance-distilled (guidance_embeds), which diffusers' "
                "QwenImageTransformer2DModel cannot run yet; use a base model"
            )
        super().__post_init__()

    def _pipeline(self):
        from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

        return QwenImagePipeline(
            FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config), self.vae, self.text_encoder,
            self.tokenizer, self.transformer,
        )  # fmt: skip

    # --- the video VAE, one frame ----------------------------------------------------------

    @classmethod
    def vae_factor(cls, vae_config: dict) -> int:
        return 2 ** len(vae_config.get("temperal_downsample", [False, True, True]))

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.z_dim)

    @property
    def native_size(self) -> int:
        """The pipeline's default image side."""
        return DEFAULT_SAMPLE_SIZE * self.vae_scale_factor

    def _statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel mean and 1 / std, shaped ``(1, C, 1, 1, 1)``, as the pipeline forms them."""
        c = self.vae.config
        mean = torch.tensor(c.latents_mean).view(1, c.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(c.latents_std).view(1, c.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std

    @torch.no_grad()
    def encode(
        self, image: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False
    ) -> torch.Tensor:
        return super().encode(image[:, :, None], generator, sample)

    def to_latents(self, z: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self._statistics(z)
        return ((z - mean) * inv_std)[:, :, 0]

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents[:, :, None].to(self.vae_dtype)
        mean, inv_std = self._statistics(z)
        return z / inv_std + mean

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, check_finite: bool = True) -> torch.Tensor:
        return super().decode(latents, check_finite)[:, :, 0]

    # --- schedule, guidance, text -----------------------------------------------------------

    def _mu(self, size) -> float:
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

        if size is None:
            size = (self.native_size // self.vae_scale_factor,) * 2
        c = self.scheduler_config
        return calculate_shift(
            (int(size[0]) // 2) * (int(size[1]) // 2), c.get("base_image_seq_len", 256),
            c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5), c.get("max_shift", 1.15),
        )  # fmt: skip

    def combine(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """CFG, then each token's prediction (its C×2×2 packed values) scaled back to the norm of the
        conditional one, as the pipeline does."""
        guided = _pack(super().combine(uncond, cond, scale))
        ratio = torch.norm(_pack(cond), dim=-1, keepdim=True) / torch.norm(guided, dim=-1, keepdim=True)
        return _unpack(guided * ratio, cond.shape[-2:])

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> Conditioning:
        # one prompt at a time, as each pipeline call encodes its prompt: no padding in the encoder
        parts = []
        for prompt in prompts:
            embeds, mask = self._pipe.encode_prompt(
                prompt, device=self.device, max_sequence_length=self.max_sequence_length
            )
            parts.append(Conditioning(embeds.to(self.dtype), mask=None if mask is None else mask.bool()))
        return Conditioning.cat(parts)

    def word_positions(self, prompt: str, words: str) -> list[int]:
        """Positions of ``words`` on the captured text axis: the templated prompt's tokens that overlap
        them, less the dropped template tokens."""
        template, drop = self._pipe.prompt_template_encode, self._pipe.prompt_template_encode_start_idx
        found = templated_word_positions(
            self.tokenizer, template.format(prompt), template.index("{}"), prompt, words
        )
        return [k - drop for k in found if 0 <= k - drop < self.max_sequence_length]

    # --- the denoiser -------------------------------------------------------------------------

    def _inputs(self, latents: torch.Tensor, t, cond: Conditioning) -> dict:
        b, _, h, w = latents.shape
        embeds, mask = cond.embeds, cond.mask
        if mask is not None:  # tokens padded in every item are left out; no mask where all are real
            keep = int(mask.any(0).nonzero().max()) + 1
            embeds, mask = embeds[:, :keep], mask[:, :keep]
            mask = None if mask.all() else mask
        return dict(
            hidden_states=_pack(latents.to(self.dtype)), timestep=self._timesteps(t, b, self.dtype) / 1000,
            encoder_hidden_states=embeds.to(self.dtype), encoder_hidden_states_mask=mask,
            img_shapes=[[(1, h // 2, w // 2)]] * b,
        )  # fmt: skip

    def predict(self, latents: torch.Tensor, t, cond: Conditioning, **residuals) -> torch.Tensor:
        out = self.transformer(**self._inputs(latents, t, cond), return_dict=False, **residuals)[0]
        return _unpack(out, latents.shape[-2:]).float()

    # --- attention capture -------------------------------------------------------------------

    def cross_attention(self, temperature: float = 1.0):
        return qwen_attention(
            self.transformer, self.cross_attention_layers(), temperature, self.text_tokens()
        )

    # --- ControlNets (QwenImageControlNetModel on the control image's packed latents) ----------

    def check_controlnet(self, net, index: int) -> None:
        self._check_controlnet_class(net, index)
        if net.config.extra_condition_channels:
            raise InvalidInputError(
                f"ControlNet {index} takes extra (inpainting) channels; give a layout ControlNet"
            )
        self._check_controlnet_widths(net, index, ("joint_attention_dim", "in_channels"))

    def control_input(self, net, image: torch.Tensor) -> torch.Tensor:
        """The control image's normalised latents (posterior mean), packed."""
        return _pack(self.encode(image.float() * 2 - 1)).to(self.dtype)

    def control_residuals(self, nets, inputs, scales, latents, t, cond) -> dict:
        kwargs = self._inputs(latents, t, cond)
        blocks = None
        for net, x, scale in zip(nets, inputs, scales, strict=True):
            blocks = _add(
                blocks, net(controlnet_cond=x, conditioning_scale=scale, return_dict=False, **kwargs)
            )
        return dict(controlnet_block_samples=blocks)


def _pack(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, h/2 · w/2, C·4)`` tokens, as the pipeline packs them."""
    from diffusers import QwenImagePipeline

    return QwenImagePipeline._pack_latents(latents.contiguous(), *latents.shape)


def _unpack(tokens: torch.Tensor, hw) -> torch.Tensor:
    """Packed tokens back to ``(B, C, h, w)``."""
    from diffusers import QwenImagePipeline

    return QwenImagePipeline._unpack_latents(tokens, int(hw[0]), int(hw[1]), 1)[:, :, 0]  # sizes in cells


class QwenAttentionCapture:
    """Wraps a Qwen double-stream attention processor: the forward is the original's, unchanged;
    with ``store.capture`` set it also stores the image queries' attention over the text keys alone,
    ``softmax_text(q_image · k_textᵀ · scale / temperature)``, with the processor's qk-norms and
    rotary embeddings, masked text tokens left out, and the text axis zero-padded to ``tokens`` so
    that maps of prompts of any length compare position by position.

    diffusers' ``Attention`` passes a processor only the keywords its ``__call__`` names, so they are
    named here.
    """

    def __init__(self, name: str, store, temperature: float, original, tokens: int):
        self.name = name
        self.store = store
        self.temperature = temperature
        self.original = original
        self.tokens = tokens

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                 attention_mask=None, image_rotary_emb=None):  # fmt: skip
        if self.store.capture and encoder_hidden_states is not None:
            self.store.maps[self.name] = self.maps(
                attn, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, image_rotary_emb
            )
        return self.original(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                             encoder_hidden_states_mask=encoder_hidden_states_mask,
                             attention_mask=attention_mask, image_rotary_emb=image_rotary_emb)  # fmt: skip

    def maps(self, attn, image, text, mask=None, rotary=None) -> torch.Tensor:
        """``(batch * heads, image tokens, tokens)`` probabilities, graph kept."""
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        from ..attention import text_probabilities

        head_dim = attn.inner_dim // attn.heads
        query = attn.to_q(image).unflatten(-1, (-1, head_dim))
        key = attn.add_k_proj(text).unflatten(-1, (-1, head_dim))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_added_k is not None:
            key = attn.norm_added_k(key)
        if rotary is not None:  # complex (image, text) frequencies
            query = apply_rotary_emb_qwen(query, rotary[0], use_real=False)
            key = apply_rotary_emb_qwen(key, rotary[1], use_real=False)
        return text_probabilities(query, key, self.temperature, mask, self.tokens)


@contextmanager
def qwen_attention(network, layers: list[str], temperature: float, tokens: int):
    """:func:`regionedit.attention.joint_attention` for Qwen-Image's blocks; yields the store."""
    from ..attention import AttentionStore, _installed

    store = AttentionStore()
    with _installed(
        network, layers, lambda name, p: QwenAttentionCapture(name, store, temperature, p, tokens)
    ):
        yield store
