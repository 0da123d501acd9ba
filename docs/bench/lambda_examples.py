"""Draw docs/bench/multimodal_regions_lambda_examples.png: the mini model's multi-modal settings on the
first three scenes of the 50-scene set (every object a region with its own prompt, the target
scene's edge map) at λ = 0, 0.6, 0.8 and 1 (about 1 min on 2 cores).

    .venv/bin/python docs/bench/lambda_examples.py [OUT.png]
"""

import os
import sys

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from regionedit import Region, load, make_options
from regionedit.shapes.items import shapes_bench
from regionedit.models.controlnet import load_controlnet
from regionedit.multimodal import Condition, canny_edges, edit

LAMBDAS = (0.0, 0.6, 0.8, 1.0)
CELL, HEAD = 192, 22


def row(model, net, item) -> list[Image.Image]:
    edges = canny_edges(Image.fromarray(item.target_image))
    shown = Image.fromarray(item.image)
    for mask in item.masks:
        ys, xs = np.nonzero(mask)
        ImageDraw.Draw(shown).rectangle([xs.min(), ys.min(), xs.max(), ys.max()], outline=(255, 0, 255))
    regions = [Region(m, p) for m, p in zip(item.masks, item.prompts, strict=True)]
    cells, guidance = [shown, Image.fromarray(item.target_image)], None
    for lam in LAMBDAS:  # the guidance pass does not depend on λ: computed once, reused
        opts = make_options("multimodal", {"preservation_weight": lam}, model.settings["multimodal"])
        res = edit(model, Image.fromarray(item.image), source_prompt=item.source_caption, regions=regions,
                   controlnets=[net], conditions=[Condition("edge", edges)], options=opts,
                   generator=torch.Generator().manual_seed(0), guidance=guidance)  # fmt: skip
        guidance = res.guidance
        cells.append(res.image)
    return cells


def main(out: str) -> None:
    model = load("mini")
    net = load_controlnet(model.settings["controlnets"]["edge"], model, "edge")
    items = shapes_bench(3, "multi", seed=0, min_masks=2, max_masks=7, size=128)
    heads = ["input + masks", "target"] + [f"λ = {lam:g}" for lam in LAMBDAS]
    sheet = Image.new("RGB", (CELL * len(heads), HEAD + CELL * len(items)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts/ttf/DejaVuSans.ttf"), 14)
    for j, head in enumerate(heads):
        draw.text((j * CELL + 6, 3), head, fill="black", font=font)
    for i, item in enumerate(items):
        for j, cell in enumerate(row(model, net, item)):
            sheet.paste(cell.convert("RGB").resize((CELL, CELL), Image.NEAREST), (j * CELL, HEAD + i * CELL))
    sheet.save(out, optimize=True)
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/bench/multimodal_regions_lambda_examples.png")
