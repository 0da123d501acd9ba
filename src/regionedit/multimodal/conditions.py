"""Layout conditions (docs/multimodal.md, "Layout conditions"): control images for ControlNet, and the nets that read them.

A :class:`Condition` names a kind (edge, scribble, pose, seg) and its source. Control images
are RGB in [0, 1] at the input image's size, not normalised to [-1, 1] (the SD-1.5 v1.1
ControlNets' convention). Edge maps and scribbles can be derived with OpenCV; a pose is an
OpenPose-18 keypoint JSON that we render to the standard skeleton image ourselves.
"""

from __future__ import annotations

import colorsys
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from ..errors import DependencyError, InvalidInputError
from ..io import load_image, read_json

KINDS = ("edge", "scribble", "pose", "seg")
log = logging.getLogger(__name__)

AUTO = "auto"  # derive the map from the input image itself

# OpenPose-18 (COCO order): 0 nose, 1 neck, 2-4 right arm, 5-7 left arm, 8-10 right leg,
# 11-13 left leg, 14/15 eyes, 16/17 ears. The 17 limbs of the standard skeleton, as joint pairs.
POSE_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
# The standard palette: 18 hues 20° apart at full saturation (red, orange, ..., rose).
POSE_COLOURS = tuple(
    tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(i / 18, 1.0, 1.0)) for i in range(18)
)


class InvalidConditionError(InvalidInputError):
    """A control image or keypoint file is unreadable, malformed, or of the wrong size."""


@dataclass(frozen=True)
class Condition:
    """One layout instruction.

    Args:
        kind: ``"edge"``, ``"scribble"``, ``"pose"`` or ``"seg"``.
        source: the control image (path, PIL image or ``(H, W[, 3])`` array, at the input's
            size); for ``"pose"`` also a keypoint JSON (path ending in ``.json``, a dict or a
            list); ``"auto"`` derives an edge map or scribble from the input image.
        scale: ControlNet ``conditioning_scale``; None: the options' ``control_scale`` (1.0).
        start, end: fractions of the denoising schedule during which the net acts
            (``control_guidance_start/end`` in diffusers).
        preprocess: ``source`` is a photo: derive the map from it (Canny for edge, OpenCV
            strokes for scribble, a detector for pose, which needs the ``pose`` extra).
        region: the index of the region it instructs (0 = the first); None: every region.
    """

    kind: str
    source: object
    scale: float | None = None
    start: float = 0.0
    end: float = 1.0
    preprocess: bool = False
    region: int | None = None

    def __post_init__(self):
        if self.region is not None and (
            not isinstance(self.region, int) or isinstance(self.region, bool) or self.region < 0
        ):
            raise InvalidConditionError(
                f"{self.kind}: region must be an index >= 0 or None, got {self.region!r}"
            )
        if self.kind not in KINDS:
            raise InvalidConditionError(f"condition kind must be one of {KINDS}, got {self.kind!r}")
        if self.scale is not None and (
            not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale) or self.scale < 0
        ):
            raise InvalidConditionError(f"{self.kind} scale must be a finite number >= 0, got {self.scale!r}")
        if not (0.0 <= self.start < self.end <= 1.0):
            raise InvalidConditionError(
                f"{self.kind}: need 0 <= start < end <= 1, got start={self.start}, end={self.end}"
            )
        if isinstance(self.source, str) and self.source == AUTO and self.kind not in ("edge", "scribble"):
            what = (
                "an OpenPose-18 keypoint JSON or a skeleton image"
                if self.kind == "pose"
                else "a colour-coded map"
            )
            raise InvalidConditionError(
                f"{self.kind}=auto: 'auto' draws only edge maps and scribbles from the input; give {what} at "
                f"the input's size ({self.kind}=PATH)"
            )


# --- deriving maps with OpenCV ------------------------------------------------------------


def canny_edges(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """White Canny edges on black, RGB (the canny ControlNet's input convention).

    Edges of each colour channel, joined: two colours of the same grey level (green or blue on teal)
    have an edge between them that a grey-level Canny would miss."""
    rgb = np.asarray(image.convert("RGB"))
    edges = np.maximum.reduce([cv2.Canny(np.ascontiguousarray(rgb[..., c]), low, high) for c in range(3)])
    return Image.fromarray(np.repeat(edges[..., None], 3, axis=2))


def scribble_from_image(image: Image.Image) -> Image.Image:
    """Thick white strokes along the main contours: a stand-in for a hand-drawn scribble."""
    arr = np.asarray(image.convert("RGB"))
    side = min(arr.shape[:2])
    k = max(3, (side // 64) | 1)  # odd blur kernel, ~1/64 of the side: drop texture, keep outlines
    grey = cv2.GaussianBlur(cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY), (k, k), 0)
    edges = cv2.Canny(grey, 50, 150)
    width = max(1, side // 128)  # scribble strokes are wider than edges
    edges = cv2.dilate(edges, np.ones((2 * width + 1, 2 * width + 1), np.uint8))
    return Image.fromarray(np.repeat(edges[..., None], 3, axis=2))


# --- pose keypoints -----------------------------------------------------------------------


def parse_keypoints(data, what: str = "pose keypoints") -> tuple[list[np.ndarray], tuple[int, int] | None]:
    """OpenPose-18 keypoints -> (people, canvas (W, H) or None).

    Accepted: OpenPose's output ``{"people": [{"pose_keypoints_2d": [x, y, c] * 18}],
    "canvas_width": W, "canvas_height": H}``; one person as 18 ``[x, y]`` or ``[x, y, c]``;
    or a list of such people. Each person comes back as ``(18, 3)`` float (x, y, confidence);
    joints with confidence 0 or negative coordinates are missing.
    """

    def person(values, i) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64) if _numeric(values) else None
        if arr is not None and arr.ndim == 1 and arr.size in (36, 54):
            arr = arr.reshape(18, arr.size // 18)
        if arr is None or arr.ndim != 2 or arr.shape[0] != 18 or arr.shape[1] not in (2, 3):
            raise InvalidConditionError(
                f"{what}: person {i} must have 18 keypoints as [x, y] or [x, y, confidence] "
                "(OpenPose-18 order); got " + _describe(values)
            )
        if not np.isfinite(arr).all():
            raise InvalidConditionError(f"{what}: person {i} has NaN or infinite coordinates")
        if arr.shape[1] == 2:
            arr = np.concatenate([arr, np.ones((18, 1))], axis=1)
        return arr

    canvas = None
    if isinstance(data, dict):
        if "people" not in data or not isinstance(data["people"], list):
            raise InvalidConditionError(f"{what}: an OpenPose JSON object needs a 'people' list")
        if "canvas_width" in data and "canvas_height" in data:
            try:
                canvas = (int(data["canvas_width"]), int(data["canvas_height"]))
            except (TypeError, ValueError):
                raise InvalidConditionError(f"{what}: canvas_width/height must be integers") from None
            if min(canvas) <= 0:
                raise InvalidConditionError(f"{what}: canvas_width/height must be positive")
        people = []
        for i, p in enumerate(data["people"]):
            if not isinstance(p, dict) or "pose_keypoints_2d" not in p:
                raise InvalidConditionError(f"{what}: person {i} has no 'pose_keypoints_2d'")
            people.append(person(p["pose_keypoints_2d"], i))
    elif isinstance(data, list) and data and _numeric(data) and np.asarray(data).ndim <= 2:
        people = [person(data, 0)]
    elif isinstance(data, list) and data:
        people = [person(p, i) for i, p in enumerate(data)]
    else:
        raise InvalidConditionError(f"{what}: expected an OpenPose JSON object or a list of keypoints")
    if not people:
        raise InvalidConditionError(f"{what}: no person in the keypoint file")
    return people, canvas


def _numeric(values) -> bool:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return arr.dtype != object


def _describe(values) -> str:
    try:
        return f"shape {np.asarray(values, dtype=np.float64).shape}"
    except (TypeError, ValueError):
        return f"a {type(values).__name__}"


def render_pose(people: list[np.ndarray], size: tuple[int, int], canvas: tuple[int, int] | None = None):
    """Draw OpenPose-18 people as the standard skeleton: coloured limbs and joints on black.

    ``size`` is the output (W, H). Coordinates are pixels of ``canvas`` (scaled to ``size``),
    or fractions of the image when every visible coordinate lies in [0, 1].
    """
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    visible = [p[(p[:, 2] > 0) & (p[:, 0] >= 0) & (p[:, 1] >= 0)] for p in people]
    coords = np.concatenate([v[:, :2] for v in visible]) if visible else np.zeros((0, 2))
    if canvas is not None:
        sx, sy = w / canvas[0], h / canvas[1]
    elif coords.size and coords.max() <= 1.0:
        sx, sy = w, h
    else:
        sx, sy = 1.0, 1.0
    stick = max(1, round(4 * min(w, h) / 512))  # 4 px at 512², the reference renderer's width
    for p in people:
        ok = (p[:, 2] > 0) & (p[:, 0] >= 0) & (p[:, 1] >= 0)
        pts = np.stack([p[:, 0] * sx, p[:, 1] * sy], axis=1)
        limbs = np.zeros_like(img)
        for li, (a, b) in enumerate(POSE_LIMBS):
            if not (ok[a] and ok[b]):
                continue
            (xa, ya), (xb, yb) = pts[a], pts[b]
            length = math.hypot(xb - xa, yb - ya)
            angle = math.degrees(math.atan2(yb - ya, xb - xa))
            centre = (int(round((xa + xb) / 2)), int(round((ya + yb) / 2)))
            poly = cv2.ellipse2Poly(centre, (max(1, int(length / 2)), stick), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(limbs, poly, POSE_COLOURS[li])
        # Limbs at 60 % intensity under full-colour joints, as in the reference rendering.
        img = np.maximum(img, (limbs.astype(np.float32) * 0.6).astype(np.uint8))
        for j in range(18):
            if ok[j]:
                cv2.circle(img, (int(round(pts[j, 0])), int(round(pts[j, 1]))), stick, POSE_COLOURS[j], -1)
    return Image.fromarray(img)


def read_keypoints(source, what: str = "pose keypoints"):
    """A keypoint JSON path, text, dict or list -> (people, canvas)."""
    if isinstance(source, (str, Path)) and str(source).lower().endswith(".json"):
        path = Path(source)
        data = read_json(path, what, InvalidConditionError)
        return parse_keypoints(data, f"{what} {path.name}")
    return parse_keypoints(source, what)


# --- control images -----------------------------------------------------------------------


def _to_image(source, kind: str) -> Image.Image:
    what = f"{kind} control image"
    if isinstance(source, (str, Path)):
        return load_image(source, what=what)
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
        if source.ndim == 3 and source.shape[0] in (1, 3):
            source = source.transpose(1, 2, 0)
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
            raise InvalidConditionError(f"{what} must be (H, W) or (H, W, 3); got shape {arr.shape}")
        if arr.dtype == bool or (arr.dtype.kind == "f" and arr.size and arr.max() <= 1.0):
            if arr.size and (not np.isfinite(arr).all() or arr.min() < 0):
                raise InvalidConditionError(f"{what} must hold values in [0, 1] or [0, 255]")
            arr = arr.astype(np.float32) * 255
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        return img.convert("RGB")
    raise InvalidConditionError(f"{what}: expected a path, PIL image or array, got {type(source).__name__}")


def control_image(cond: Condition, input_image: Image.Image) -> Image.Image:
    """The RGB control image of a condition at the input image's size."""
    size = input_image.size
    if cond.kind == "pose" and not cond.preprocess and not isinstance(cond.source, (Image.Image, np.ndarray)):
        is_json = not isinstance(cond.source, (str, Path)) or str(cond.source).lower().endswith(".json")
        if is_json:
            people, canvas = read_keypoints(cond.source)
            return render_pose(people, size, canvas)
    if isinstance(cond.source, str) and cond.source == AUTO:
        photo = input_image
    else:
        photo = _to_image(cond.source, cond.kind)
        if photo.size != size:
            raise InvalidConditionError(
                f"{cond.kind} control image is {photo.width}x{photo.height} but the input image is "
                f"{size[0]}x{size[1]}; give a control image of the input's size"
            )
        if not cond.preprocess:
            return photo
    if cond.kind in ("edge", "scribble"):
        drawn = canny_edges(photo) if cond.kind == "edge" else scribble_from_image(photo)
        return warn_if_empty(drawn, cond.kind, "the input" if photo is input_image else "the given image")
    if cond.kind == "pose":
        raise DependencyError(
            "pose detection from a photo needs an OpenPose detector (controlnet_aux, extra 'pose'); "
            "give the target pose as an OpenPose-18 keypoint JSON or a rendered skeleton image instead"
        )
    raise InvalidConditionError(f"{cond.kind} maps cannot be derived from a photo; give the map itself")


def warn_if_empty(control: Image.Image, kind: str, source: str, least: float = 1e-3) -> Image.Image:
    """``control`` as it is, with a one-line warning when (nearly) none of it is drawn: such a map
    carries no layout, and the edit then follows the text alone."""
    drawn = float((np.asarray(control.convert("L")) > 16).mean())
    if drawn < least:
        log.warning("the %s map drawn from %s is empty (%.2f%% of its pixels); it carries no layout", kind,
                    source, 100 * drawn)  # fmt: skip
    return control


def image_to_control_tensor(image: Image.Image, device, dtype) -> torch.Tensor:
    """PIL RGB -> ``(1, 3, H, W)`` in [0, 1] (ControlNet inputs are not normalised to [-1, 1])."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].to(device=device, dtype=dtype)


def layout_box(image: Image.Image, factor: int, threshold: int = 16) -> torch.Tensor:
    """Step 3's layout mask: the bounding box of a control image's non-black pixels on the latent grid.

    Returns a bool ``(h, w)`` tensor (all False when the image is black).
    """
    arr = np.asarray(image.convert("RGB")).max(axis=2) > threshold
    h, w = arr.shape[0] // factor, arr.shape[1] // factor
    out = torch.zeros((h, w), dtype=torch.bool)
    ys, xs = np.nonzero(arr)
    if ys.size:
        out[
            ys.min() // factor : -(-(ys.max() + 1) // factor),
            xs.min() // factor : -(-(xs.max() + 1) // factor),
        ] = True
    return out
