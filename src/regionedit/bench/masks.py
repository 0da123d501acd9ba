"""``regionedit bench masks``: how well each finder draws the objects of shapes-world scenes.

Every object of a scene is named by its caption phrase ("a red triangle") and clicked once, at its
most interior pixel. A mask from words scores the IoU with the object's silhouette or its box,
whichever is higher, and with the best of the objects the phrase names (two red triangles: either
is right); a mask from a click scores the IoU with the clicked object's silhouette. Scenes follow
from ``(seed, index)``; objects are counted until ``n``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import masks
from ..io import write_text_atomic
from ..shapes.world import box_mask, random_scene, render

FINDERS = ("words", "click")


@dataclass
class Scene:
    image: np.ndarray
    caption: str
    phrases: list[str]
    silhouettes: list[np.ndarray]
    boxes: list[np.ndarray]


def scenes(n_objects: int, seed: int, size: int, min_objects: int, max_objects: int, noise: float = 0.0):
    """Scenes until they hold ``n_objects`` objects (the last one may be cut short), with Gaussian
    pixel noise of standard deviation ``noise`` (0-255 scale) when asked."""
    count, index = 0, 0
    while count < n_objects:
        rng = np.random.default_rng([seed, 7331, index])
        scene = random_scene(rng, int(rng.integers(min_objects, max_objects + 1)), size=size)
        image, silhouettes = render(scene)
        if noise:
            image = np.clip(image + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)
        keep = min(len(scene.objects), n_objects - count)
        yield Scene(image, scene.caption, [o.phrase for o in scene.objects][:keep], silhouettes[:keep],
                    [box_mask(o, size, margin=0) for o in scene.objects][:keep])  # fmt: skip
        count, index = count + keep, index + 1


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def interior_point(silhouette: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the pixel farthest from the object's edge: where a person would click."""
    distance = cv2.distanceTransform(np.pad(silhouette, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def run_masks(model, n: int = 100, seed: int = 0, min_objects: int = 2, max_objects: int = 4,
              finders=FINDERS, out: str | Path | None = None, progress: bool = True, noise: float = 0.0) -> dict:  # fmt: skip
    """Mean IoU and seconds per mask of each finder over ``n`` objects; rows per object to ``out``."""
    rows = []
    size = model.native_size
    bar = tqdm(total=n, desc="masks", unit="object", disable=not progress)
    for scene in scenes(n, seed, size, min_objects, max_objects, noise):
        image = Image.fromarray(scene.image)
        for k, phrase in enumerate(scene.phrases):
            row = {"phrase": phrase, "caption": scene.caption}
            if "words" in finders:
                same = [j for j, p in enumerate(scene.phrases) if p == phrase]
                start = time.perf_counter()
                try:
                    found = masks.from_words(model, image, phrase, caption=scene.caption, min_score=0,
                                             generator=torch.Generator().manual_seed(seed))  # fmt: skip
                except masks.MaskNotFoundError:  # no instance at all (only specks): a miss
                    found = masks.FoundMask(np.zeros(scene.image.shape[:2], bool), 0.0, "attention")
                row["words_seconds"] = time.perf_counter() - start
                row["words_iou"] = max(max(iou(found.mask, scene.silhouettes[j]), iou(found.mask, scene.boxes[j]))
                                       for j in same)  # fmt: skip
                row["words_score"] = found.score
            if "click" in finders:
                point = interior_point(scene.silhouettes[k])
                start = time.perf_counter()
                found = masks.from_points(image, [point])
                row["click_seconds"] = time.perf_counter() - start
                row["click_iou"] = iou(found.mask, scene.silhouettes[k])
            rows.append(row)
            bar.update()
    bar.close()
    summary = {
        "noise": noise,
        "model": model.name,
        "objects": len(rows),
        "seed": seed,
        "objects_per_scene": [min_objects, max_objects],
    }
    for finder in finders:
        values = np.array([r[f"{finder}_iou"] for r in rows])
        summary[finder] = {
            "mean_iou": float(values.mean()),
            "share_iou_0.5": float((values >= 0.5).mean()),
            "seconds_per_mask": float(np.mean([r[f"{finder}_seconds"] for r in rows])),
        }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def table(summary: dict) -> str:
    lines = ["| finder | objects | mean IoU | IoU >= 0.5 | s / mask |", "|---|---:|---:|---:|---:|"]
    for finder in FINDERS:
        if finder in summary:
            s = summary[finder]
            lines.append(f"| {finder} | {summary['objects']} | {s['mean_iou']:.3f} | {s['share_iou_0.5']:.1%} | "
                         f"{s['seconds_per_mask']:.2f} |")  # fmt: skip
    return "\n".join(lines)
