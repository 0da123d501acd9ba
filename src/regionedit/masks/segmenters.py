"""Detectors and segmenters from transformers, by hub id or local folder.

- **Detectors** (words -> boxes): zero-shot object detection, Grounding DINO or OWLv2, through
  transformers' ``zero-shot-object-detection`` pipeline. OWLv2's image processor needs scipy
  (``pip install 'regionedit[masks]'``).
- **Segmenters** (clicks or a box -> a mask): SAM (``SamModel`` + ``SamProcessor``) or SAM-HQ
  (``SamHQModel`` + ``SamHQProcessor``), whose image processors run on PIL. SAM 2 and SAM 3 need
  torchvision in transformers' processors and are refused in one line.

Nothing here is imported until a detector or segmenter is named.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DependencyError, ModelLoadError
from ..quiet import quiet_libraries

SEGMENTERS = {"SamModel": "SamProcessor", "SamHQModel": "SamHQProcessor"}
DETECTORS = ("GroundingDinoForObjectDetection", "Owlv2ForObjectDetection", "OwlViTForObjectDetection")
NEEDS_TORCHVISION = ("Sam2Model", "Sam3Model", "Sam3TrackerModel", "Sam2VideoModel")


@dataclass
class Segmenter:
    model: torch.nn.Module
    processor: object
    name: str


@dataclass
class Detector:
    pipeline: object
    name: str


def _architecture(name: str) -> str | None:
    """The model class a folder's (or cached hub id's) config names, if it can be read here."""
    path = Path(name).expanduser()
    config = path / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import hf_hub_download

            config = Path(hf_hub_download(name, "config.json", local_files_only=True))
        except Exception:
            return None
    try:
        return (json.loads(config.read_text()).get("architectures") or [None])[0]
    except (OSError, ValueError):
        return None


def _unavailable(name: str, what: str, exc: Exception) -> ModelLoadError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(f"cannot load the {what} {name!r}: {first}")


def load_segmenter(name: str, device=None) -> Segmenter:
    """SAM or SAM-HQ from a hub id or folder."""
    arch = _architecture(name)
    if arch in NEEDS_TORCHVISION:
        raise DependencyError(
            f"{name} is a {arch}: transformers' processors for SAM 2 and SAM 3 need torchvision, which does not "
            "run beside this torch; use a SAM or SAM-HQ segmenter (SamModel, SamHQModel)"
        )
    if arch is not None and arch not in SEGMENTERS:
        raise ModelLoadError(f"{name} is a {arch}; a segmenter is a SamModel or SamHQModel")
    import transformers

    try:
        with quiet_libraries():
            model_class = getattr(transformers, arch or "SamModel")
            processor = getattr(transformers, SEGMENTERS[arch or "SamModel"]).from_pretrained(name)
            model = model_class.from_pretrained(name).eval().to(device or "cpu")
    except Exception as exc:  # transformers raises many kinds; one line for the user
        raise _unavailable(name, "segmenter", exc) from None
    return Segmenter(model, processor, name)


def load_detector(name: str, device=None) -> Detector:
    """A zero-shot detector (Grounding DINO, OWLv2, OWL-ViT) from a hub id or folder."""
    arch = _architecture(name)
    if arch is not None and arch not in DETECTORS:
        raise ModelLoadError(f"{name} is a {arch}; a detector is one of {', '.join(DETECTORS)}")
    if arch and arch.startswith("Owl"):
        try:
            import scipy  # noqa: F401 - OWL image processors resize with it
        except ImportError:
            raise DependencyError("OWL detectors need scipy: pip install 'regionedit[masks]'") from None
    from transformers import pipeline

    try:
        with quiet_libraries():
            detector = pipeline("zero-shot-object-detection", model=name, device=device or "cpu")
    except Exception as exc:
        raise _unavailable(name, "detector", exc) from None
    return Detector(detector, name)


@functools.lru_cache(maxsize=4)
def cached_segmenter(name: str) -> Segmenter:
    return load_segmenter(name)


@functools.lru_cache(maxsize=4)
def cached_detector(name: str) -> Detector:
    return load_detector(name)


@torch.no_grad()
def segment(segmenter: Segmenter, image: Image.Image, points=(), negative_points=(), box=None):
    """A bool ``(H, W)`` mask from clicks (``(x, y)`` pixels) or a box, and the segmenter's
    predicted IoU of it. Of SAM's three masks for clicks, the best by that IoU is kept."""
    kwargs = {}
    if points:
        clicks = [list(map(float, p)) for p in [*points, *negative_points]]
        kwargs.update(
            input_points=[[clicks]], input_labels=[[[1] * len(points) + [0] * len(negative_points)]]
        )
    if box is not None:
        kwargs["input_boxes"] = [[list(map(float, box))]]
    inputs = segmenter.processor(images=image.convert("RGB"), return_tensors="pt", **kwargs)
    inputs = {k: v.to(segmenter.model.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    out = segmenter.model(**inputs, multimask_output=box is None)
    masks = segmenter.processor.image_processor.post_process_masks(
        out.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
    )[0][0]  # (masks, H, W)
    scores = out.iou_scores[0, 0].float().cpu()
    best = int(scores.argmax())
    return masks[best].numpy().astype(bool), float(scores[best])


def detect(detector: Detector, image: Image.Image, words: str, threshold: float) -> list[tuple[tuple, float]]:
    """Boxes ``(x0, y0, x1, y1)`` (pixels, inside the image) the detector gives ``words``, with scores,
    best first. Boxes whose centre lies outside the image (OWL pads images to a square) are dropped."""
    found = detector.pipeline(image.convert("RGB"), candidate_labels=[words], threshold=threshold)
    out = []
    for r in found:
        b = r["box"]
        cx, cy = (b["xmin"] + b["xmax"]) / 2, (b["ymin"] + b["ymax"]) / 2
        if not (0 <= cx < image.width and 0 <= cy < image.height):
            continue
        x0, x1 = (int(min(max(v, 0), image.width)) for v in (b["xmin"], b["xmax"]))
        y0, y1 = (int(min(max(v, 0), image.height)) for v in (b["ymin"], b["ymax"]))
        if x1 > x0 and y1 > y0:
            out.append(((x0, y0, x1, y1), float(r["score"])))
    return sorted(out, key=lambda item: -item[1])


def detect_and_segment(detector: Detector, segmenter: Segmenter | None, image: Image.Image, words: str):
    """Every box the detector finds for ``words`` as a :class:`~regionedit.masks.FoundMask`, best
    first: cut out by the segmenter (score: detector's times segmenter's), or the box itself."""
    from . import FoundMask

    out = []
    for box, score in detect(detector, image, words, 0.0):
        if segmenter is not None:
            mask, quality = segment(segmenter, image, box=box)
            out.append(FoundMask(mask, score * quality, "detector+segmenter"))
        else:
            mask = np.zeros((image.height, image.width), bool)
            mask[box[1] : box[3], box[0] : box[2]] = True
            out.append(FoundMask(mask, score, "detector"))
    return sorted(out, key=lambda f: -f.score)
