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


@contextmanager
def temperature_attention(network, layers: list[str], temperature: float = 1.0):
    """Install temperature/capture processors on the processors named ``layers``; yield the store.

    >>> with temperature_attention(unet, names, 1.25) as store:
    ...     store.capture = True
    ...     unet(latents, t, encoder_hidden_states=emb)
    ...     maps = store.maps
    """
    original = network.attn_processors
    store = AttentionStore()
    chosen = set(layers)
    procs = {
        name: TemperatureCrossAttnProcessor(name, store, temperature) if name in chosen else proc
        for name, proc in original.items()
    }
    network.set_attn_processor(procs)
    try:
        yield store
    finally:
        network.set_attn_processor(original)
