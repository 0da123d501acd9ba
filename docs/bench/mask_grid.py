"""How well LoMOE's latent masks cover ShapesBench's object boxes on a coarse grid.

LoMOE resizes each mask to the denoiser's grid, 4-pixel latent cells for the UNet mini model and
8-pixel tokens (2x2 latent patches) for the flow one, by either rule of its ``mask_resize``
option: ``nearest`` (each cell's top-left pixel) or ``majority`` (at least half the cell). Prints,
for the items of the 2-4 mask check, the share of background pixels (outside every box) that
fall inside the edited area, and the share of box pixels left outside it.

    .venv/bin/python docs/bench/mask_grid.py --n 30 --seed 0
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from regionedit.shapes.items import shapes_bench
from regionedit.regions import latent_masks


def coverage(items, cell: int, size: int, resize: str) -> tuple[float, float]:
    bg_in, box_out = [], []
    for item in items:
        masks = [m.astype(np.float32) for m in item.masks]
        w = latent_masks(masks, (size // cell,) * 2, 0.0, "average", resize=resize)
        edited = 1 - w[0].reshape(1, 1, size // cell, size // cell)
        edited = F.interpolate(edited, size=(size, size), mode="nearest")[0, 0].numpy() > 0.5
        boxes = np.any(np.stack(item.eval_masks), 0)
        bg_in.append((edited & ~boxes).sum() / (~boxes).sum())
        box_out.append((~edited & boxes).sum() / boxes.sum())
    return float(np.mean(bg_in)), float(np.mean(box_out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    items = shapes_bench(args.n, "multi", args.seed, 2, 4, size=args.size)
    print("| grid cell | rule | background pixels edited | box pixels not edited |\n|---:|---|---:|---:|")
    with torch.no_grad():
        for cell in (4, 8):
            for resize in ("nearest", "majority"):
                bg_in, box_out = coverage(items, cell, args.size, resize)
                print(f"| {cell} px | {resize} | {bg_in:.1%} | {box_out:.1%} |")


if __name__ == "__main__":
    main()
