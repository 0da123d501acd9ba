"""Draw docs/bench/multimodal128_lambda_examples_noisy.png: the mini model's multi-modal settings on the
first four ShapesBench shape edits at λ = 0, 0.6 and 1 (about 1 min on 2 cores).

    .venv/bin/python docs/bench/lambda_examples.py [OUT.png]
"""

import os
import sys

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from regionedit import load, make_options
from regionedit.shapes.items import shapes_bench
from regionedit.models.controlnet import load_controlnet
from regionedit.multimodal import Condition, canny_edges, edit

LAMBDAS = (0.0, 0.6, 1.0)
CELL, HEAD = 192, 22


def row(model, net, item) -> list[Image.Image]:
    edges = canny_edges(Image.fromarray(item.target_image))
    shown = Image.fromarray(item.image)
    ys, xs = np.nonzero(item.masks[0])
    ImageDraw.Draw(shown).rectangle([xs.min(), ys.min(), xs.max(), ys.max()], outline=(255, 0, 255))
    cells, guidance = [shown, edges], None
    for lam in LAMBDAS:  # the guidance pass does not depend on λ: computed once, reused
        opts = make_options("multimodal", {"preservation_weight": lam}, model.settings["multimodal"])
        res = edit(model, Image.fromarray(item.image), item.target_caption, item.source_caption,
                   mask=item.masks[0], controlnets=[net], conditions=[Condition("edge", edges)],
                   options=opts, generator=torch.Generator().manual_seed(0), guidance=guidance)  # fmt: skip
        guidance = res.guidance
        cells.append(res.image)
    return cells


def main(out: str) -> None:
    model = load("mini")
    net = load_controlnet(model.settings["controlnets"]["edge"], model, "edge")
    items = shapes_bench(4, "shape", seed=0, size=128)
    heads = ["input + mask", "edge map"] + [f"λ = {lam:g}" for lam in LAMBDAS]
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
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/bench/multimodal128_lambda_examples_noisy.png")
