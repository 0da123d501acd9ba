"""Cross-attention with a temperature, and capture of its probabilities.

Installed through diffusers' attention-processor API on the cross-attention layers a model
names (``Model.cross_attention_layers``); self-attention keeps its fast SDPA processor. The
originals are restored when the context manager exits, whatever happens inside.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F


class AttentionStore:
    """Holds the probabilities of each captured layer from the latest UNet call.

    ``maps[name]`` has shape ``(batch * heads, pixels, tokens)``.
    """

    def __init__(self):
        self.capture = False
        self.maps: dict[str, torch.Tensor] = {}

    def clear(self):
        self.maps = {}


class TemperatureCrossAttnProcessor:
    """Cross-attention computing ``softmax(QK^T * scale / temperature)``.

    With ``store.capture`` set, probabilities are formed explicitly (keeping the autograd
    graph) and saved in ``store``; otherwise SDPA with the same scale is used.
    """

    def __init__(self, name: str, store: AttentionStore, temperature: float):
        self.name = name
        self.store = store
        self.temperature = temperature

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        batch, seq, _ = context.shape
        mask = attn.prepare_attention_mask(attention_mask, seq, batch)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        scale = attn.scale / self.temperature
        if self.store.capture:
            scores = torch.bmm(query, key.transpose(-1, -2)) * scale
            if mask is not None:
                scores = scores + mask
            probs = scores.float().softmax(dim=-1)
            self.store.maps[self.name] = probs
            out = torch.bmm(probs.to(value.dtype), value)
        else:
            out = F.scaled_dot_product_attention(
                query[:, None],
                key[:, None],
                value[:, None],
                attn_mask=None if mask is None else mask[:, None],
                scale=scale,
            )[:, 0]
        out = attn.batch_to_head_dim(out)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class JointAttentionCapture:
    """Wraps a joint text-image attention processor (SD3, FLUX's double-stream blocks): the
    forward is the original processor's, unchanged; with ``store.capture`` set it also stores the
    image queries' attention over the text keys alone,
    ``softmax_text(q_image · k_textᵀ · scale / temperature)``.

    That is the UNet's cross-attention map in a joint block: one distribution over the prompt's
    tokens per image token, which does not depend on how much the image attends to itself. The
    temperature therefore shapes the maps the preservation loss compares and leaves the joint
    softmax exact.
    FLUX's rotary embedding covers its joint sequence ``[text; image]``; it is split the same way.
    """

    def __init__(self, name: str, store: AttentionStore, temperature: float, original):
        self.name = name
        self.store = store
        self.temperature = temperature
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None, **kwargs):  # fmt: skip
        if self.store.capture and encoder_hidden_states is not None:
            self.store.maps[self.name] = self.maps(
                attn, hidden_states, encoder_hidden_states, image_rotary_emb
            )
        if image_rotary_emb is not None:
            kwargs["image_rotary_emb"] = image_rotary_emb
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    def maps(self, attn, image, text, rotary=None) -> torch.Tensor:
        """``(batch * heads, image tokens, text tokens)`` probabilities, graph kept."""
        query, key = attn.to_q(image), attn.add_k_proj(text)
        head_dim = query.shape[-1] // attn.heads
        query, key = query.unflatten(-1, (attn.heads, head_dim)), key.unflatten(-1, (attn.heads, head_dim))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_added_k is not None:
            key = attn.norm_added_k(key)
        if rotary is not None:  # FLUX: positions of [text; image]
            from diffusers.models.embeddings import apply_rotary_emb

            n = text.shape[1]
            query = apply_rotary_emb(query, tuple(r[n:] for r in rotary), sequence_dim=1)
            key = apply_rotary_emb(key, tuple(r[:n] for r in rotary), sequence_dim=1)
        return text_probabilities(query, key, self.temperature)


def text_probabilities(query, key, temperature: float, real=None, tokens: int | None = None) -> torch.Tensor:
    """``(batch * heads, image tokens, text tokens)``: ``softmax(q · kᵀ · scale / temperature)`` over the
    text keys, from ``(batch, tokens, heads, head_dim)`` queries and keys (norms and rotary applied),
    in float32 with the graph kept. ``real`` ``(batch, text tokens)`` leaves padding out (probability 0);
    ``tokens`` zero-pads the text axis to that length so maps of prompts of any length compare."""
    scores = torch.einsum("bihd,bjhd->bhij", query.float(), key.float()) * (
        query.shape[-1] ** -0.5 / temperature
    )
    if real is not None:
        scores = scores.masked_fill(~real.bool()[:, None, None, :].to(scores.device), float("-inf"))
    probs = scores.softmax(dim=-1)
    if tokens is not None:
        probs = F.pad(probs, (0, max(0, tokens - probs.shape[-1])))
    return probs.flatten(0, 1)


@contextmanager
def _installed(network, layers: list[str], make):
    """``make(name, original)`` processors on the layers named, the originals restored on exit."""
    original = network.attn_processors
    chosen = set(layers)
    network.set_attn_processor({n: make(n, p) if n in chosen else p for n, p in original.items()})
    try:
        yield
    finally:
        network.set_attn_processor(original)


@contextmanager
def temperature_attention(network, layers: list[str], temperature: float = 1.0):
    """Install temperature/capture processors on the processors named ``layers``; yield the store.

    >>> with temperature_attention(unet, names, 1.25) as store:
    ...     store.capture = True
    ...     unet(latents, t, encoder_hidden_states=emb)
    ...     maps = store.maps
    """
    store = AttentionStore()
    with _installed(network, layers, lambda name, _: TemperatureCrossAttnProcessor(name, store, temperature)):
        yield store


@contextmanager
def joint_attention(network, layers: list[str], temperature: float = 1.0):
    """:func:`temperature_attention` for joint-attention transformers (see :class:`JointAttentionCapture`)."""
    store = AttentionStore()
    with _installed(network, layers, lambda name, p: JointAttentionCapture(name, store, temperature, p)):
        yield store
