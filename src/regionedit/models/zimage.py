"""Z-Image behind the family interface, as diffusers' ``ZImagePipeline`` runs it.

What differs from the other flow transformers:

- one text encoder, Qwen3, read through its chat template: the second-to-last hidden state, each
  prompt's padding removed, so prompts have their own lengths (a :class:`Conditioning` mask);
- the transformer takes lists: latents ``(C, 1, h, w)`` and captions ``(tokens, width)`` per item;
  it patchifies 2×2 cells itself, reads the time as ``(1000 − t) / 1000`` and predicts the
  negated velocity;
- CFG is written ``c + s·(c − u)``: diffusers' scale s is our ``guidance_scale`` w minus 1;
- the sigmas are ``linspace(1, 1/n, n)`` with the scheduler's static shift;
- the network is single-stream: the refiners see image and caption apart, then every
  ``layers.*.attention`` attends over ``[image tokens, caption tokens]``, each padded to a multiple
  of 32. The preservation loss reads the image→caption part of those layers
  (:class:`ZImageAttentionCapture`).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.models.attention import AttentionMixin

from ..attention import AttentionStore, _installed, text_probabilities
from ..errors import InvalidInputError
from .flow import ChatPrompts, FlowModel
from .interface import Conditioning
from .schedule import FlowSchedule

log = logging.getLogger(__name__)


class SequenceStore(AttentionStore):
    """An :class:`AttentionStore` that also knows where the image and caption tokens of the call being
    captured lie in the joint sequence (set by :meth:`ZImage.predict` before each call).

    Attributes:
        text_tokens: the text axis of every map (captions are shorter; the rest is zeros).
        image_tokens: real image tokens N = (h/2)(w/2), first in the sequence.
        caption_start: where the caption starts: N padded to a multiple of 32.
        caption_lengths: ``(B,)`` real caption tokens per item.
    """

    def __init__(self, text_tokens: int):
        super().__init__()
        self.text_tokens = text_tokens
        self.image_tokens = 0
        self.caption_start = 0
        self.caption_lengths: torch.Tensor | None = None

    def set_layout(self, latent_hw, mask: torch.Tensor, patch: int) -> None:
        """The layout of the transformer's joint sequence for latents of ``latent_hw`` and captions whose
        real tokens are ``mask`` ``(B, tokens)``."""
        from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF

        n = (int(latent_hw[0]) // patch) * (int(latent_hw[1]) // patch)
        self.image_tokens, self.caption_start = n, n + (-n) % SEQ_MULTI_OF
        self.caption_lengths = mask.sum(1)


class ZImageAttentionCapture:
    """Wraps a ``ZSingleStreamAttnProcessor`` of the joint layers: the forward is the original's,
    unchanged; with ``store.capture`` set it also stores the image queries' attention over the real
    caption keys alone, ``softmax(q_image · k_captionᵀ · scale / temperature)`` with the processor's
    qk-norm and rotary embedding, as ``(batch * heads, image tokens, store.text_tokens)``; padding
    (image, caption and batch) is left out, and caption positions past a prompt's end are zero.
    """

    def __init__(self, name: str, store: SequenceStore, temperature: float, original):
        self.name = name
        self.store = store
        self.temperature = temperature
        self.original = original

    # diffusers' Attention drops keywords the processor does not name: freqs_cis must be named
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None):
        if self.store.capture:
            self.store.maps[self.name] = self.maps(attn, hidden_states, freqs_cis)
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, freqs_cis)

    def maps(self, attn, hidden_states: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
        """``(batch * heads, image tokens, text tokens)`` probabilities, graph kept."""
        from diffusers.models.embeddings import apply_rotary_emb

        store = self.store
        n, start, size = store.image_tokens, store.caption_start, store.text_tokens
        query = attn.to_q(hidden_states[:, :n]).unflatten(-1, (attn.heads, -1))
        key = attn.to_k(hidden_states[:, start : start + size]).unflatten(-1, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if freqs_cis is not None:  # the processor's complex rotation
            query = apply_rotary_emb(query, freqs_cis[:, :n], use_real=False)
            key = apply_rotary_emb(key, freqs_cis[:, start : start + key.shape[1]], use_real=False)
        real = torch.arange(key.shape[1], device=key.device) < store.caption_lengths.to(key.device)[:, None]
        return text_probabilities(query, key, self.temperature, real, size)  # the sequence may end sooner


class _Processors(AttentionMixin):
    """diffusers' ``attn_processors`` / ``set_attn_processor`` over a network that lacks them (the
    Z-Image transformer), for :func:`regionedit.attention._installed`."""

    def __init__(self, network: torch.nn.Module):
        self.network = network

    def named_children(self):
        return self.network.named_children()


@dataclass(eq=False, kw_only=True)
class ZImage(ChatPrompts, FlowModel):
    """A ``ZImagePipeline``'s components: ``ZImageTransformer2DModel``, ``AutoencoderKL``, Qwen3.

    ``guidance_scale`` is w of ``u + w·(c − u)`` here as in every family; the pipeline's scale is
    w − 1 (its ``pos + s·(pos − neg)``): a diffusers ``guidance_scale=5`` is our 6, and its 0 (no CFG)
    our 1. The text axis of the captured attention maps is ``max_sequence_length`` tokens (the
    pipeline's 512) for every prompt, so maps of prompts of different lengths compare position by
    position; positions past a prompt's end are zero.
    """

    family = "zimage"
    display_name = "Z-Image"
    pipeline = "ZImagePipeline"
    denoiser_class = "ZImageTransformer2DModel"
    modules = ("vae", "transformer", "text_encoder")
    objects = ("tokenizer",)
    default_sequence_length = 512
    controlnet_class = "ZImageControlNetModel"
    enable_thinking = True  # as ZImagePipeline templates prompts

    def __post_init__(self):
        super().__post_init__()
        self._store: SequenceStore | None = None

    def _pipeline(self):
        from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

        return ZImagePipeline(
            FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config), self.vae, self.text_encoder,
            self.tokenizer, self.transformer,
        )  # fmt: skip

    # --- schedule and guidance ---------------------------------------------------------------

    def scheduler(self, steps: int, size=None) -> FlowSchedule:
        """The pipeline's sigmas (a float32 ``linspace(1, 1/n, n)``) and its ``mu``, which the scheduler
        uses only where it shifts by image size (the released config's shift is static)."""
        from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift, get_default_z_image_sigmas

        if size is None:
            size = (self.native_size // self.vae_scale_factor,) * 2
        tokens = (int(size[0]) // 2) * (int(size[1]) // 2)
        c = self.scheduler_config
        mu = calculate_shift(tokens, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))  # fmt: skip
        return FlowSchedule(c, steps, self.device, get_default_z_image_sigmas(steps), mu)

    def combine(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """``c + (w − 1)·(c − u)``: the pipeline's own form, the same numbers as ``u + w·(c − u)``
        up to rounding."""
        return cond + (scale - 1) * (cond - uncond)

    # --- text ------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> Conditioning:
        # one prompt per call, as the pipeline encodes a single prompt: the embedding of a prompt then
        # does not depend on which prompts were encoded beside it
        items = []
        for p in prompts:
            (embeds,), _ = self._pipe.encode_prompt(
                [p],
                self.device,
                do_classifier_free_guidance=False,
                max_sequence_length=self.max_sequence_length,
            )
            mask = torch.ones(1, embeds.shape[0], dtype=torch.bool, device=embeds.device)
            items.append(Conditioning(embeds[None].to(self.dtype), mask=mask))
        return Conditioning.cat(items)

    def _prefix_tokens(self) -> int:
        """Tokens of the chat template before a prompt's first token."""
        return len(self.tokenizer(self._template_head(), add_special_tokens=False).input_ids)

    def text_segments(self) -> list[tuple[object, int, int]]:
        start = self._prefix_tokens()
        return [(self.tokenizer, start, self.text_tokens() - start)]

    # --- the transformer ---------------------------------------------------------------------

    def _inputs(self, latents: torch.Tensor, t, cond: Conditioning) -> dict:
        """The transformer's list inputs: latents ``(C, 1, h, w)`` and real caption tokens per item, and
        the time as the pipeline gives it (in float32, whatever the network's dtype)."""
        b = latents.shape[0]
        t = torch.as_tensor(t, device=self.device).to(torch.float32).reshape(-1).expand(b)
        mask = cond.token_mask()
        return dict(
            x=list(latents.to(self.dtype).unsqueeze(2).unbind(0)),
            t=(1000 - t) / 1000,  # the pipeline's 1000, not the scheduler's config
            cap_feats=[e[m] for e, m in zip(cond.embeds, mask, strict=True)],
        )

    def predict(self, latents: torch.Tensor, t, cond: Conditioning, **residuals) -> torch.Tensor:
        """The velocity ``noise − x0`` (the transformer predicts its negative, as the pipeline's sign
        flip says)."""
        if self._store is not None:
            self._store.set_layout(latents.shape[-2:], cond.token_mask(), self.patch_size)
        out = self.transformer(**self._inputs(latents, t, cond), return_dict=False, **residuals)[0]
        return -torch.stack(out).float().squeeze(2)

    # --- attention -----------------------------------------------------------------------------

    def cross_attention_layers(self) -> list[str]:
        """The joint layers (the refiners see one modality each)."""
        return [n for n in _Processors(self.transformer).attn_processors if n.startswith("layers.")]

    @contextmanager
    def cross_attention(self, temperature: float = 1.0):
        store = SequenceStore(self.text_tokens())
        make = lambda name, p: ZImageAttentionCapture(name, store, temperature, p)  # noqa: E731
        previous, self._store = self._store, store
        try:
            with _installed(_Processors(self.transformer), self.cross_attention_layers(), make):
                yield store
        finally:
            self._store = previous

    # --- ControlNets (ZImageControlNetModel: the control image's latents; it shares the transformer's
    # embedders and refiners, as the pipeline attaches it) --------------------------------------------

    def check_controlnet(self, net, index: int) -> None:
        self._check_controlnet_class(net, index)
        mine, theirs = self.transformer.config, net.config
        if (
            theirs.dim != mine.dim
            or theirs.n_heads != mine.n_heads
            or tuple(theirs.all_patch_size) != tuple(mine.all_patch_size)
            or max(net.control_layers_places) >= mine.n_layers
            or theirs.control_in_dim < self.latent_channels
        ):
            raise InvalidInputError(
                f"ControlNet {index} was made for another {self.family} transformer (width, heads, patch "
                "size, layers or input channels differ); use one made for this model"
            )
        if net.t_embedder is not self.transformer.t_embedder:
            type(net).from_transformer(net, self.transformer)
        if not hasattr(
            net, "gradient_checkpointing"
        ):  # diffusers 0.42 sets it only when enabled; read with grads
            net.gradient_checkpointing = False

    def control_input(self, net, image: torch.Tensor) -> torch.Tensor:
        """The image's latents, zero channels added up to what the net reads (version-2 nets)."""
        z = self.encode(image.float() * 2 - 1)
        extra = net.config.control_in_dim - z.shape[1]
        return torch.nn.functional.pad(z, (0, 0, 0, 0, 0, extra)).to(self.dtype)

    def control_residuals(self, nets, inputs, scales, latents, t, cond) -> dict:
        kwargs = self._inputs(latents, t, cond)
        total: dict = {}
        for net, x, scale in zip(nets, inputs, scales, strict=True):
            samples = net(kwargs["x"], kwargs["t"], kwargs["cap_feats"], list(x.unsqueeze(2).unbind(0)),
                          conditioning_scale=scale)  # fmt: skip
            for layer, s in samples.items():
                total[layer] = total[layer] + s if layer in total else s
        return dict(controlnet_block_samples=total)
