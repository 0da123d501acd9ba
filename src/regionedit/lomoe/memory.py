"""How much memory LoMOE's reference cross-attention maps take, from the model's layer geometry.

The reference pass records, per step and per cross-attention layer, the attention probabilities
of its CFG halves (two; one where guidance is distilled): ``2 · heads · pixels · tokens`` values. Held for a whole edit
(``ExecutionOptions(reference_maps="device")``) that is

    bytes = T · Σ_layers 2 · heads_l · pixels_l · tokens · bytes_per_value,

independent of the number of regions (every branch reads the same maps). Recomputed per step
(the default) only one step's maps exist at a time; with ``"cpu"`` the sum lives in host memory.
"""

from __future__ import annotations

import torch


def reference_bytes_per_step(model, height: int, width: int, dtype: torch.dtype | None = None) -> int:
    """Bytes of one step's reference maps for an image of ``height`` × ``width``."""
    f = model.vae_scale_factor
    size = torch.tensor([], dtype=dtype or model.dtype).element_size()
    geometry = model.cross_attention_geometry((height // f, width // f))
    halves = model.guidance_batches  # 2 for CFG, 1 where guidance is distilled
    return sum(halves * heads * pixels * tokens * size for _, heads, pixels, tokens in geometry)


def reference_bytes(model, height: int, width: int, steps: int, dtype: torch.dtype | None = None) -> int:
    """Bytes of the reference maps held for a whole ``steps``-step edit (``reference_maps="device"``)."""
    return steps * reference_bytes_per_step(model, height, width, dtype)
