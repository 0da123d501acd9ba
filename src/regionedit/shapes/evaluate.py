"""Measure the mini model: VAE round trip and text-to-image attribute binding, judged.

`regionedit eval-mini` runs both; the LoMOE edit thresholds are measured by
`regionedit bench shapes` (the same judge, background-only metrics).
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models.interface import Model
from .train import random_box
from .world import BACKGROUNDS, COLOURS, SHAPES, box_mask, make_scene, render

HELD_OUT_SEED = 50_000_000  # training scenes come from one numpy stream seeded 0


@torch.no_grad()
def vae_psnr(model: Model, n: int = 200, batch: int = 50) -> float:
    """Mean PSNR (dB) of the VAE round trip on ``n`` held-out scenes with 1-7 objects."""
    size = model.vae.config.sample_size
    images = np.stack([render(make_scene(HELD_OUT_SEED + i, 1 + i % 7, size))[0] for i in range(n)])
    scores = []
    for i in range(0, n, batch):
        x = torch.from_numpy(images[i : i + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
        rec = model.decode(model.encode(x.to(model.device))).cpu()
        mse = ((rec - (x + 1) / 2) ** 2).mean(dim=(1, 2, 3)).clamp(min=1e-10)
        scores += (10 * torch.log10(1 / mse)).tolist()
    return float(np.mean(scores))


@torch.no_grad()
def decoder_locality_psnr(model: Model, n: int = 48, batch: int = 16, seed: int = 0) -> float:
    """Mean PSNR (dB) outside a pasted box: held-out scene B's latent cells in one seeded box are
    pasted into scene A's latent, and the decoded image is compared with A's pixels outside the
    box: what an edit's background keeps. A perfectly local decoder scores about what the plain
    round trip does (:func:`vae_psnr`); one that spreads the pasted content scores less. The box
    is a quarter to a half of the latent grid on each side."""
    size = model.vae.config.sample_size
    f = model.vae_scale_factor
    h = size // f
    g = torch.Generator().manual_seed(seed)
    scenes = [render(make_scene(HELD_OUT_SEED + 10_000 + i, 1 + i % 7, size))[0] for i in range(2 * n)]
    images = torch.from_numpy(np.stack(scenes)).permute(0, 3, 1, 2).float() / 127.5 - 1
    scores = []
    for i in range(0, n, batch):
        a, b = images[i : min(i + batch, n)], images[n + i : n + min(i + batch, n)]
        za, zb = model.encode(a.to(model.device)), model.encode(b.to(model.device))
        m = torch.zeros(len(a), 1, h, h)
        for k in range(len(a)):
            ys, xs = random_box(h, h, h // 4, h // 2, g)
            m[k, :, ys, xs] = 1
        m = m.to(model.device)
        rec = model.decode(m * zb + (1 - m) * za).cpu()
        keep = 1 - F.interpolate(m.cpu(), scale_factor=f, mode="nearest")
        err = ((rec - (a + 1) / 2) ** 2 * keep).sum(dim=(1, 2, 3)) / (3 * keep.sum(dim=(1, 2, 3)))
        scores += (10 * torch.log10(1 / err.clamp(min=1e-10))).tolist()
    return float(np.mean(scores))


@torch.no_grad()
def sample(
    model: Model,
    prompts: list[str],
    steps: int = 25,
    guidance_scale: float = 5.0,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Plain DDIM text-to-image; uint8 images ``(B, H, W, 3)``."""
    size = model.native_size // model.vae_scale_factor
    sched = model.scheduler(steps, (size, size))
    z = torch.randn((len(prompts), model.latent_channels, size, size), generator=generator)
    z = z.to(model.device)
    negative, positive = model.encode_prompt([""] * len(prompts)), model.encode_prompt(list(prompts))
    for t in sched.timesteps:
        z = sched.step(model.guided(z, t, negative, positive, guidance_scale), t, z)
    x = model.decode(z).permute(0, 2, 3, 1).cpu().numpy()
    return (x * 255 + 0.5).astype(np.uint8)


def locate_object(image: np.ndarray, background: str, threshold: float = 60.0) -> np.ndarray | None:
    """Box mask of the largest blob that differs from the named background colour."""
    diff = np.linalg.norm(image.astype(np.float32) - np.array(BACKGROUNDS[background], np.float32), axis=-1)
    fg = (diff > threshold).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count < 2:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[k, :4])
    if w * h < 9:
        return None
    from .world import ShapeObject

    return box_mask(ShapeObject("square", "red", (x, y, x + w, y + h)), image.shape[0], margin=1)


def background_right(image: np.ndarray, background: str, mask: np.ndarray | None) -> bool:
    """Is the median colour outside the object nearest to the prompt's background?"""
    outside = image[~mask] if mask is not None else image.reshape(-1, 3)
    med = np.median(outside.reshape(-1, 3), axis=0)
    names = list(BACKGROUNDS)
    return (
        names[int(np.argmin([np.linalg.norm(med - np.array(BACKGROUNDS[b])) for b in names]))] == background
    )


def text_to_image_accuracy(
    model: Model,
    judge,
    n: int = 100,
    steps: int = 25,
    guidance_scale: float = 5.0,
    seed: int = 0,
    batch: int = 20,
    progress: bool = True,
) -> dict:
    """Judge ``n`` single-object prompts ("a red circle on a gray background")."""
    combos = list(itertools.product(COLOURS, SHAPES, BACKGROUNDS))
    rng = np.random.default_rng(seed)
    order = list(range(len(combos))) + list(rng.integers(0, len(combos), max(0, n - len(combos))))
    picks = [combos[i] for i in order[:n]]
    g = torch.Generator().manual_seed(seed)
    colour = shape = bg = found = 0
    for i in tqdm(range(0, n, batch), desc="text-to-image", disable=not progress):
        chunk = picks[i : i + batch]
        images = sample(
            model, [f"a {c} {s} on a {b} background" for c, s, b in chunk], steps, guidance_scale, g
        )
        for img, (c, s, b) in zip(images, chunk, strict=True):
            mask = locate_object(img, b)
            bg += background_right(img, b, mask)
            if mask is None:
                continue
            found += 1
            v = judge.classify(img, mask)
            colour += v.colour == c
            shape += v.shape == s
    return {
        "n": n,
        "colour": colour / n,
        "shape": shape / n,
        "background": bg / n,
        "object_found": found / n,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "seed": seed,
    }
