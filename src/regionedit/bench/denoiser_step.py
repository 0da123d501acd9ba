"""One denoiser call of any family on random inputs, straight through the diffusers class.

For what needs the network alone (memory calibration, the GPU benchmark's pipeline step): the inputs
are laid out as each family's diffusers pipeline lays them out (FLUX's packed tokens and position
ids, FLUX.2's 4-axis ids, Qwen-Image's image shapes, Z-Image's per-item lists).
"""

from __future__ import annotations

import torch


def step_call(family: str, network: torch.nn.Module, batch: int, height: int, width: int, text_tokens: int,
              generator: torch.Generator | None = None, device=None):  # fmt: skip
    """Random inputs of one call of ``network`` (a family's diffusers denoiser) on ``batch`` latents.

    Returns ``(latents, call)``: ``call(latents)`` runs the network and returns its output as one
    tensor; ``latents`` is on ``device`` (default: the network's; give it where the network is
    offloaded), in the network's compute dtype (under layerwise casting too).
    """
    if family not in CALLS:
        raise ValueError(f"no denoiser call for the {family!r} family; known: {', '.join(CALLS)}")
    device = torch.device(device) if device is not None else next(network.parameters()).device
    generator = generator or torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(shape, generator=generator).to(device, network.dtype)

    inputs = _Inputs(dict(network.config), batch, height, width, text_tokens, device, network.dtype, randn)
    return CALLS[family](network, inputs)


class _Inputs:
    def __init__(self, config, batch, height, width, text_tokens, device, dtype, randn):
        self.config, self.batch, self.text_tokens = config, batch, text_tokens
        self.height, self.width, self.device, self.dtype, self.randn = height, width, device, dtype, randn
        self.grid = (height // 16, width // 16)  # tokens of the transformers (16 px each)
        self.t = torch.full((batch,), 0.5, device=device, dtype=dtype)

    def text(self, key: str):
        return self.randn(self.batch, self.text_tokens, self.config[key])


def _unet(network, x: _Inputs):
    latents = x.randn(x.batch, x.config["in_channels"], x.height // 8, x.width // 8)
    text, extra = x.text("cross_attention_dim"), {}
    if x.config.get("addition_embed_type") == "text_time":  # SDXL: pooled text and size conditioning
        pooled = x.config["projection_class_embeddings_input_dim"] - 6 * x.config["addition_time_embed_dim"]
        ids = torch.tensor([x.height, x.width, 0, 0, x.height, x.width], device=x.device, dtype=x.dtype)
        extra = {
            "added_cond_kwargs": {"text_embeds": x.randn(x.batch, pooled), "time_ids": ids.repeat(x.batch, 1)}
        }
    return latents, lambda z: network(z, x.t * 1000, encoder_hidden_states=text, **extra).sample


def _flux(network, x: _Inputs):
    (h, w), c = x.grid, x.config
    latents = x.randn(x.batch, h * w, c["in_channels"])
    text, pooled = x.text("joint_attention_dim"), x.randn(x.batch, c["pooled_projection_dim"])
    img_ids = torch.cartesian_prod(torch.zeros(1), torch.arange(float(h)), torch.arange(float(w))).to(
        x.device, x.dtype
    )
    txt_ids = torch.zeros(x.text_tokens, 3, device=x.device, dtype=x.dtype)
    guidance = (
        torch.full((x.batch,), 3.5, device=x.device, dtype=x.dtype) if c.get("guidance_embeds") else None
    )
    return latents, lambda z: network(hidden_states=z, encoder_hidden_states=text, pooled_projections=pooled,
                                      timestep=x.t, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance).sample  # fmt: skip


def _sd3(network, x: _Inputs):
    latents = x.randn(x.batch, x.config["in_channels"], x.height // 8, x.width // 8)
    text, pooled = x.text("joint_attention_dim"), x.randn(x.batch, x.config["pooled_projection_dim"])
    return latents, lambda z: network(hidden_states=z, encoder_hidden_states=text, pooled_projections=pooled,
                                      timestep=x.t * 1000).sample  # fmt: skip


def _flux2(network, x: _Inputs):
    (h, w), one = x.grid, torch.arange(1)
    latents = x.randn(x.batch, h * w, x.config["in_channels"])
    text = x.text("joint_attention_dim")
    img_ids = (
        torch.cartesian_prod(one, torch.arange(h), torch.arange(w), one).expand(x.batch, -1, -1).to(x.device)
    )
    txt_ids = (
        torch.cartesian_prod(one, one, one, torch.arange(x.text_tokens)).expand(x.batch, -1, -1).to(x.device)
    )
    return latents, lambda z: network(hidden_states=z, encoder_hidden_states=text, timestep=x.t, img_ids=img_ids,
                                      txt_ids=txt_ids, guidance=None).sample  # fmt: skip


def _qwenimage(network, x: _Inputs):
    (h, w) = x.grid
    latents = x.randn(x.batch, h * w, x.config["in_channels"])
    text = x.text("joint_attention_dim")
    mask = torch.ones(x.batch, x.text_tokens, device=x.device, dtype=torch.long)
    return latents, lambda z: network(hidden_states=z, encoder_hidden_states=text, encoder_hidden_states_mask=mask,
                                      timestep=x.t, img_shapes=[[(1, h, w)]] * x.batch).sample  # fmt: skip


def _zimage(network, x: _Inputs):
    latents = x.randn(x.batch, x.config["in_channels"], 1, x.height // 8, x.width // 8)
    text = [x.randn(x.text_tokens, x.config["cap_feat_dim"]) for _ in range(x.batch)]
    return latents, lambda z: torch.stack(network(list(z.unbind(0)), x.t, text, return_dict=False)[0])


CALLS = {"sd": _unet, "sdxl": _unet, "flux": _flux, "sd3": _sd3, "flux2": _flux2, "qwenimage": _qwenimage,
         "zimage": _zimage}  # fmt: skip
