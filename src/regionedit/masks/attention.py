"""Find what words name with the editing model itself: its cross-attention and its prediction.

The image is encoded and noised to a few timesteps. One denoiser call at each, with the caption,
records every captured layer's attention of the image positions over the words' tokens (a UNet's
cross-attention; the image-to-text part of a transformer's joint attention): summed over the
words' tokens, averaged over heads, brought to the image's size, normalised per layer, averaged
over layers and timesteps (DAAM, arXiv 2210.04885). Attention alone mixes objects that share a
colour or a shape with the words; so the map adds how much the prediction changes when the words
are left out of the caption (DiffEdit's difference, arXiv 2210.11427), which is high where the
object the words name is. Each high component of the sum is an instance; GrabCut started from it
fits it to the image's edges (:func:`~.refine.grabcut`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models.interface import Model
from .refine import component_at, components, grabcut, grow

STRENGTHS = (0.3, 0.5, 0.7)  # how far the image is noised for each attention reading
ATTENTION_DRAWS = 3  # readings of the attention under fresh noise, each at every strength
REMOVAL_DRAWS = 6  # noises at each strength the prediction's change is averaged over
MIN_AREA = 0.002  # an instance covers at least this share of the image (smaller: a speck of the map)


@dataclass
class WordMap:
    """Where the model places the words in the image.

    Attributes:
        values: float ``(H, W)``: the words' attention (each layer's divided by its maximum,
            averaged) plus the prediction's change without the words, each scaled to span [0, 1].
        attention: float ``(H, W)``: the attention alone (what a mask's score is read from).
        prompt: the prompt the maps were read with.
        positions: the words' text positions in it.
    """

    values: np.ndarray
    attention: np.ndarray
    prompt: str
    positions: list[int]

    @property
    def normalised(self) -> np.ndarray:
        v = self.values - self.values.min()
        return v / max(float(v.max()), 1e-12)


def _grid(count: int, latent_hw: tuple[int, int], patch: int) -> tuple[int, int]:
    """The ``(h, w)`` of a layer whose map has ``count`` positions (UNet levels halve the latent,
    rounding up; transformer tokens cover ``patch`` latent cells)."""
    for down in (patch, 1, 2, 4, 8, 16, 32, 64):
        h, w = math.ceil(latent_hw[0] / down), math.ceil(latent_hw[1] / down)
        if h * w == count:
            return h, w
    raise ValueError(f"no grid of {count} positions under a {latent_hw} latent")


@torch.no_grad()
def attention_map(model: Model, image: torch.Tensor, size: tuple[int, int], prompt: str, positions: list[int],
                  generator: torch.Generator, draws: int = ATTENTION_DRAWS) -> np.ndarray:  # fmt: skip
    """The attention of ``positions`` over an image ``(1, 3, H, W)`` in [-1, 1], at ``size`` ``(H, W)``
    (see :class:`WordMap`), averaged over ``draws`` readings under fresh noise."""
    readings = [_attention_once(model, image, size, prompt, positions, generator) for _ in range(draws)]
    return np.mean(readings, axis=0)


def _attention_once(model, image, size, prompt, positions, generator) -> np.ndarray:
    z0 = model.encode(image)
    latent_hw = tuple(z0.shape[-2:])
    cond = model.encode_prompt([prompt])
    if model.guidance != "cfg":
        cond = model.with_guidance(cond, 1.0)
    schedule = model.scheduler(50, latent_hw)
    per_layer: dict[str, list[torch.Tensor]] = {}
    with model.cross_attention(1.0) as store:
        store.capture = True
        for strength in STRENGTHS:
            t = schedule.timesteps[int((1 - strength) * len(schedule.timesteps))]
            noise = torch.randn(z0.shape, generator=generator).to(z0.device)
            model.predict(schedule.add_noise(z0, noise, t), t, cond)
            for name, probs in store.maps.items():
                words = probs[:, :, positions].sum(-1).mean(0).float()  # heads averaged: (positions,)
                h, w = _grid(words.numel(), latent_hw, model.patch_size)
                per_layer.setdefault(name, []).append(
                    F.interpolate(words.reshape(1, 1, h, w), size=size, mode="bilinear")[0, 0].cpu()
                )
            store.clear()
    counts = {name: maps[0].numel() for name, maps in per_layer.items()}
    coarsest = min(counts.values())  # a UNet's middle block (a few positions) blurs more than it finds
    chosen = [n for n in per_layer if counts[n] > coarsest or len(set(counts.values())) == 1]
    maps = torch.stack([torch.stack(per_layer[n]).mean(0) for n in chosen])
    return (maps / maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)).mean(0).numpy()  # layers alike


@torch.no_grad()
def removal_map(model: Model, image: torch.Tensor, size: tuple[int, int], prompt: str, without: str,
                generator: torch.Generator, draws: int = REMOVAL_DRAWS) -> np.ndarray:  # fmt: skip
    """Mean absolute change of the model's prediction between ``prompt`` and ``without`` (the prompt
    with the words left out), over ``draws`` noises at each strength, at ``size``."""
    z0 = model.encode(image)
    latent_hw = tuple(z0.shape[-2:])
    with_words, without_words = model.encode_prompt([prompt]), model.encode_prompt([without])
    if model.guidance != "cfg":
        with_words, without_words = (
            model.with_guidance(with_words, 1.0),
            model.with_guidance(without_words, 1.0),
        )
    schedule = model.scheduler(50, latent_hw)
    total = torch.zeros(1, 1, *latent_hw)
    for strength in STRENGTHS:
        t = schedule.timesteps[int((1 - strength) * len(schedule.timesteps))]
        for _ in range(draws):
            z = schedule.add_noise(z0, torch.randn(z0.shape, generator=generator).to(z0.device), t)
            change = model.predict(z, t, with_words) - model.predict(z, t, without_words)
            total += change.abs().mean(1, keepdim=True).cpu()
    return F.interpolate(total, size=size, mode="bilinear")[0, 0].numpy()


def instances(
    image: np.ndarray, found: WordMap, threshold: float = 0.5, count: int = 1
) -> list[tuple[np.ndarray, float]]:
    """Every instance the map finds, the one with the highest peak first: ``(mask, score)``.

    Each component of the normalised map above ``threshold`` is one instance: GrabCut starts from
    the map with the other instances' peaks left out. While fewer than ``count`` are found, the map
    outside them is normalised again and searched the same way (a second object the words name
    often draws less attention than the first). Specks under :data:`MIN_AREA` of the image and
    masks mostly inside an earlier instance are left out. ``score`` is how many times more attention the
    words get inside the mask than outside it (1: no more; words the image lacks score low).
    """
    rest, out = found.normalised, []
    taken = np.zeros(rest.shape, bool)
    while len(out) < count and rest.max() > 0:
        rest = rest / rest.max()
        high = rest >= threshold
        new = []
        for part in sorted(components(high), key=lambda c: -float(rest[c].max())):
            mask = grabcut(image, rest * (part | ~high))
            y, x = np.unravel_index(np.argmax(np.where(part, rest, -1)), rest.shape)
            mask = component_at(mask, int(y), int(x)) if mask[y, x] else mask
            if mask.sum() >= MIN_AREA * mask.size and not any(
                (mask & m).sum() > 0.5 * mask.sum() for m, _ in out + new
            ):
                new.append((mask, _contrast(found.attention, mask)))
        if not new:
            break
        out += new
        for m, _ in new:
            taken |= grow(m, 2)
        rest = np.where(taken, 0.0, rest)
    return out


def _contrast(attention: np.ndarray, mask: np.ndarray) -> float:
    inside, outside = attention[mask].mean(), attention[~mask].mean() if (~mask).any() else 0.0
    return float(inside / max(outside, 1e-12))
