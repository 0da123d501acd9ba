"""Shapes world: deterministic procedural scenes with captions and per-object masks.

A scene is a plain background of a named kind with 1 to 7 non-overlapping objects, each a
named shape in a named colour. Everything is drawn from a seeded ``numpy`` generator, so the
same seed always gives the same scene, image and masks.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
    "brown": (120, 80, 45),
    "teal": (30, 120, 120),
}
MAX_OBJECTS = 7
_SUPERSAMPLE = 4  # shapes are drawn 4x larger and downsampled: soft, anti-aliased edges


@dataclass
class ShapeObject:
    shape: str
    colour: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.shape}"


@dataclass
class Scene:
    size: int
    background: str
    objects: list[ShapeObject] = field(default_factory=list)

    @property
    def caption(self) -> str:
        return caption_for(self.objects, self.background)


def caption_for(objects: list[ShapeObject], background: str | None) -> str:
    """Caption such as "a red circle and a blue square on a gray background"."""
    phrases = [o.phrase for o in objects]
    if len(phrases) <= 1:
        text = "".join(phrases)
    else:
        text = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if background is None:
        return text
    return f"{text} on a {background} background" if text else f"a {background} background"


def _boxes_overlap(a, b, gap: int) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def random_scene(
    rng: np.random.Generator,
    num_objects: int,
    size: int = 64,
    min_extent: float = 0.19,
    max_extent: float = 0.34,
) -> Scene:
    """Draw a scene with ``num_objects`` non-overlapping objects.

    Object extents are fractions of the image side; more objects get smaller ones so that
    seven still fit. Placement is by rejection sampling from ``rng``.
    """
    if not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in 1..{MAX_OBJECTS}, got {num_objects}")
    background = str(rng.choice(list(BACKGROUNDS)))
    shrink = 1.0 if num_objects <= 3 else math.sqrt(3 / num_objects) * 1.15
    lo, hi = min_extent * shrink, max_extent * shrink
    for _ in range(200):  # restart the whole layout when it gets stuck
        objects: list[ShapeObject] = []
        for _ in range(num_objects):
            for _ in range(200):
                extent = int(round(size * rng.uniform(lo, hi)))
                extent = max(extent, 6)
                x0 = int(rng.integers(1, size - extent))
                y0 = int(rng.integers(1, size - extent))
                box = (x0, y0, x0 + extent, y0 + extent)
                if not any(_boxes_overlap(box, o.bbox, 2) for o in objects):
                    objects.append(
                        ShapeObject(
                            shape=str(rng.choice(SHAPES)),
                            colour=str(rng.choice(list(COLOURS))),
                            bbox=box,
                        )
                    )
                    break
            else:
                break
        if len(objects) == num_objects:
            return Scene(size=size, background=background, objects=objects)
    raise RuntimeError("could not place objects; lower num_objects")  # pragma: no cover


def _draw_shape(draw: ImageDraw.ImageDraw, obj: ShapeObject, scale: int, fill) -> None:
    x0, y0, x1, y1 = (v * scale for v in obj.bbox)
    x1, y1 = x1 - 1, y1 - 1
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


def render(
    scene: Scene, background_rgb: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render a scene, on its named background or on ``background_rgb`` when given.

    Returns:
        image: ``uint8`` array ``(size, size, 3)``.
        masks: one ``bool`` array ``(size, size)`` per object, True on the object.
    """
    big = scene.size * _SUPERSAMPLE
    fill = (
        tuple(int(v) for v in background_rgb) if background_rgb is not None else BACKGROUNDS[scene.background]
    )
    canvas = Image.new("RGB", (big, big), fill)
    draw = ImageDraw.Draw(canvas)
    masks = []
    for obj in scene.objects:
        _draw_shape(draw, obj, _SUPERSAMPLE, COLOURS[obj.colour])
        m = Image.new("L", (big, big), 0)
        _draw_shape(ImageDraw.Draw(m), obj, _SUPERSAMPLE, 255)
        m = m.resize((scene.size, scene.size), Image.BOX)
        masks.append(np.asarray(m) >= 128)
    image = canvas.resize((scene.size, scene.size), Image.BOX)
    return np.asarray(image).copy(), masks


def box_mask(obj: ShapeObject, size: int, margin: int = 1) -> np.ndarray:
    """A rectangular mask around an object's box, grown by ``margin`` pixels on every side.

    Shape edits need room for the new silhouette, so editing masks are boxes, not outlines.
    """
    m = np.zeros((size, size), dtype=bool)
    x0, y0, x1, y1 = obj.bbox
    m[max(0, y0 - margin) : min(size, y1 + margin), max(0, x0 - margin) : min(size, x1 + margin)] = True
    return m


def make_scene(seed: int, num_objects: int, size: int = 64) -> Scene:
    """The scene for a seed: same seed and arguments, same scene."""
    return random_scene(np.random.default_rng(seed), num_objects, size=size)


def write_scene(scene: Scene, out_dir: str | Path, margin: int = 1, target: Scene | None = None) -> Path:
    """Write ``image.png``, ``mask_1.png`` … (white = edit region) and ``scene.json``.

    The masks written are the object boxes grown by ``margin`` pixels, ready to edit with;
    ``scene.json`` keeps the exact boxes. With a ``target`` (the same scene with objects changed,
    :func:`retarget`) also ``target.png``, its Canny edge map ``target_edges.png`` (what the edge
    ControlNet reads) and the target caption. Files of an earlier scene in the folder go.
    """
    from ..io import save_image  # local import: io imports nothing from shapes
    from ..multimodal.conditions import canny_edges

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image, _ = render(scene)
    save_image(Image.fromarray(image), out / "image.png", overwrite=True)
    records = []
    for i, obj in enumerate(scene.objects, start=1):
        name = f"mask_{i}.png"
        mask = box_mask(obj, scene.size, margin)
        save_image(Image.fromarray(mask.astype(np.uint8) * 255), out / name, overwrite=True)
        records.append({**asdict(obj), "mask": name})
    keep = {f"mask_{i}.png" for i in range(1, len(scene.objects) + 1)}
    stale = [p for p in out.glob("mask_*.png") if p.name not in keep]
    stale += [out / n for n in ("target.png", "target_edges.png") if target is None and (out / n).exists()]
    for p in stale:  # an earlier, bigger scene's files: the folder holds one scene
        p.unlink()
    meta = {
        "size": scene.size,
        "background": scene.background,
        "caption": scene.caption,
        "objects": records,
    }
    if target is not None:
        pixels = Image.fromarray(render(target)[0])
        save_image(pixels, out / "target.png", overwrite=True)
        save_image(canny_edges(pixels), out / "target_edges.png", overwrite=True)
        meta["target_caption"] = target.caption
        meta["target_objects"] = [asdict(o) for o in target.objects]
    tmp = out / "scene.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(out / "scene.json")
    return out


def retarget(scene: Scene, changes: dict[int, str]) -> Scene:
    """``scene`` with object ``i`` (1-based) redrawn as the phrase ``changes[i]`` ("blue circle"), in
    its box; the words name one colour and one shape of the world, either may be left out."""
    objects = list(scene.objects)
    for i, phrase in changes.items():
        if not 1 <= i <= len(objects):
            raise ValueError(f"object {i}: the scene has objects 1..{len(objects)}")
        words = phrase.lower().replace(",", " ").split()
        colours = [w for w in words if w in COLOURS]
        shapes = [w for w in words if w in SHAPES]
        if len(colours) > 1 or len(shapes) > 1 or not (colours or shapes):
            raise ValueError(
                f"{phrase!r}: name one colour ({', '.join(COLOURS)}) and/or one shape ({', '.join(SHAPES)})"
            )
        old = objects[i - 1]
        objects[i - 1] = ShapeObject(shapes[0] if shapes else old.shape, colours[0] if colours else old.colour,
                                     old.bbox)  # fmt: skip
    return Scene(scene.size, scene.background, objects)


def new_attributes(rng: np.random.Generator, obj: ShapeObject, shape_only: bool = False) -> tuple[str, str]:
    """A different colour, shape, or both (each a third of the time); or only a new shape."""
    kind = 1 if shape_only else int(rng.integers(0, 3))
    colour, shape = obj.colour, obj.shape
    if kind in (0, 2):
        colour = str(rng.choice([c for c in COLOURS if c != obj.colour]))
    if kind in (1, 2):
        shape = str(rng.choice([s for s in SHAPES if s != obj.shape]))
    return colour, shape
