"""`regionedit demo`: edit three objects of a shapes-world scene in one LoMOE pass, offline."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .io import save_image, write_text_atomic
from .lomoe import LoMOEOptions
from .lomoe import edit as lomoe_edit
from .methods import make_options
from .metrics import attribute_accuracy, image_metrics
from .regions import Region
from .shapes.items import shapes_item

OUTLINE = [(255, 80, 80), (80, 255, 80), (80, 160, 255)]


def comparison_image(panels: list[tuple[str, Image.Image]], scale: int = 4) -> Image.Image:
    """Panels side by side, upscaled (nearest) with a title above each."""
    w, h = panels[0][1].size
    W, H, pad, top = w * scale, h * scale, 8, 22
    out = Image.new("RGB", (len(panels) * (W + pad) + pad, H + top + pad), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, (title, im) in enumerate(panels):
        x = pad + i * (W + pad)
        out.paste(im.convert("RGB").resize((W, H), Image.NEAREST), (x, top))
        draw.text((x, 5), title, fill=(0, 0, 0))
    return out


def _outlined(image: Image.Image, masks: list[np.ndarray], scale: int = 4) -> Image.Image:
    big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        box = (xs.min() * scale, ys.min() * scale, (xs.max() + 1) * scale - 1, (ys.max() + 1) * scale - 1)
        draw.rectangle(box, outline=OUTLINE[i % len(OUTLINE)], width=2)
        draw.text((box[0] + 3, box[1] + 2), str(i + 1), fill=OUTLINE[i % len(OUTLINE)])
    return big.resize(image.size, Image.NEAREST) if scale == 1 else big


def run_demo(
    out: str | Path,
    seed: int = 0,
    steps: int | None = None,
    model=None,
    judge=None,
    options: LoMOEOptions | None = None,
) -> dict:
    """Make a 3-object scene, give each object a new colour and/or shape, edit, and report.

    Writes ``input.png``, ``mask_<i>.png``, ``edited.png``, ``comparison.png`` and
    ``report.json`` under ``out``; returns the report.
    """
    from .models.loading import load
    from .shapes.judge import load_judge

    start = time.perf_counter()
    model = model or load("mini")
    judge = judge or load_judge()
    if options is None:  # the model's recommended settings, as every front end starts from
        options = make_options(
            "lomoe", {} if steps is None else {"steps": steps}, model.settings.get("lomoe")
        )
    elif steps is not None:
        options = dataclasses.replace(options, num_inference_steps=steps)
    item = shapes_item(seed, 0, "multi", min_masks=3, max_masks=3, size=model.native_size)
    image = Image.fromarray(item.image)
    regions = [Region(m, p) for m, p in zip(item.masks, item.prompts, strict=True)]
    result = lomoe_edit(
        model,
        image,
        regions,
        background_prompt=item.source_caption,
        options=options,
        generator=torch.Generator().manual_seed(seed),
        progress=True,
    )
    edited = np.asarray(result.image)
    score = attribute_accuracy(judge, edited, item.masks, item.targets)
    metrics = image_metrics(item.image, edited, item.masks)

    out = Path(out)
    save_image(image, out / "input.png", overwrite=True)
    for i, m in enumerate(item.masks, start=1):
        save_image(Image.fromarray(m.astype(np.uint8) * 255), out / f"mask_{i}.png", overwrite=True)
    save_image(result.image, out / "edited.png", overwrite=True)
    panels = [
        ("input", image),
        ("masks", _outlined(image, item.masks)),
        ("edited", result.image),
        ("VAE round trip", result.reconstruction),
    ]
    save_image(comparison_image(panels), out / "comparison.png", overwrite=True)

    objects = [
        {
            "mask": f"mask_{i}.png",
            "from": src,
            "to": tgt,
            "prompt": p,
            "judged": {"colour": v.colour, "shape": v.shape},
            "correct": v.colour == tgt["colour"] and v.shape == tgt["shape"],
        }
        for i, (src, tgt, p, v) in enumerate(
            zip(item.sources, item.targets, item.prompts, score.verdicts, strict=True), start=1
        )
    ]
    report = {
        "caption": item.source_caption,
        "objects": objects,
        "attribute_accuracy": score.both,
        "colour_accuracy": score.colour,
        "shape_accuracy": score.shape,
        "background_psnr_db": metrics["bg_psnr"],
        "background_ssim": metrics["bg_ssim"],
        "seconds": time.perf_counter() - start,
        "edit_timings": result.timings,
        "options": result.options,
        "seed": seed,
        "summary": f"{sum(o['correct'] for o in objects)}/{len(objects)} objects judged as asked, "
        f"background PSNR {metrics['bg_psnr']:.1f} dB",
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    return report
