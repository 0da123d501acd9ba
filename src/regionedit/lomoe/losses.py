"""LoMOE's fusion and losses as small pure functions (docs/lomoe.md, step 3: the gradient step)."""

from __future__ import annotations

import torch


def fuse(latents: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mask-weighted average of branch latents.

    Args:
        latents: ``(B, C, h, w)``, one per branch (background first).
        weights: ``(B, 1, h, w)`` branch masks.
    Returns:
        ``(1, C, h, w)``: ``Σ_b M_b z_b / Σ_b M_b`` where the denominator is > 0, else
        the background branch.
    """
    den = weights.sum(0, keepdim=True)
    num = (weights * latents).sum(0, keepdim=True)
    return torch.where(den > 0, num / den.clamp(min=1e-8), latents[:1])


def background_loss(fused: torch.Tensor, reference: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """L_b = mean over channels of Σ over pixels of (M_0 ⊙ (z̄ − z_ref))²."""
    return ((background * (fused - reference)) ** 2).sum(dim=(-2, -1)).mean()


def cross_attention_loss(
    maps: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], num_total: int | None = None
) -> torch.Tensor:
    """L_xa = Σ_layers mean over (batch·heads) of Σ over (pixels, tokens) of (A − A_ref)².

    Args:
        maps: layer -> ``(k * B * heads, pixels, tokens)`` from one call on the batch
            ``[uncond_1..B, cond_1..B]`` (k = 2) or ``[cond_1..B]`` (k = 1, distilled guidance).
        reference: layer -> ``(k, heads, pixels, tokens)``: broadcast over the B branches.
        num_total: number of branches the mean runs over (for chunked gradients); default B.
    """
    loss = None
    for name, probs in maps.items():
        ref = reference[name]
        k, heads = ref.shape[:2]
        b = probs.shape[0] // (k * heads)
        a = probs.reshape(k, b, heads, *probs.shape[1:])
        sq = ((a - ref[:, None].to(a.dtype)) ** 2).sum(dim=(-2, -1))
        term = sq.sum() / (k * (num_total or b) * heads)
        loss = term if loss is None else loss + term
    if loss is None:
        raise ValueError("no cross-attention maps were captured")
    return loss
