"""Time LoMOE with and without the background branch where the background blend makes it idle.

With ``background_blend`` on and hard masks, the background branch's result only lands where the
blend then puts the inversion back, so the editor leaves that branch out. This times both ways
side by side in one process (alternating per scene, same inversions, seeds and settings) on a
shipped mini model, and checks that the edited latents agree.

    .venv/bin/python docs/bench/background_skip.py --model mini-flow --n 6
"""

import argparse
import time

import torch
from PIL import Image

import regionedit
from regionedit.shapes.items import shapes_bench
from regionedit.lomoe import editor


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mini-flow")
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = regionedit.load(args.model)
    options = regionedit.LoMOEOptions(**model.settings.get("lomoe", {}))
    items = shapes_bench(args.n, "multi", args.seed, 2, 4, size=model.native_size)
    needed = editor._background_needed
    seconds = {"skipped": [], "computed": []}
    worst = 0.0
    for item in items:
        image = Image.fromarray(item.image)
        inv = regionedit.invert(model, image, item.source_caption,
                                regionedit.InversionOptions(num_inference_steps=options.num_inference_steps),
                                progress=False)  # fmt: skip
        regions = [regionedit.Region(m, p) for m, p in zip(item.masks, item.prompts, strict=True)]
        out = {}
        for name, rule in (("skipped", needed), ("computed", lambda o, w: True)):
            editor._background_needed = rule
            start = time.perf_counter()
            out[name] = regionedit.edit(model, inv, regions, options=options, progress=False,
                                        generator=torch.Generator().manual_seed(0))  # fmt: skip
            seconds[name].append(time.perf_counter() - start)
        editor._background_needed = needed
        worst = max(worst, (out["skipped"].latents - out["computed"].latents).abs().max().item())
        print(
            f"{item.id} N={len(regions)}: {seconds['skipped'][-1]:.1f} s against {seconds['computed'][-1]:.1f} s"
        )
    s, c = sum(seconds["skipped"]), sum(seconds["computed"])
    print(f"{args.model}: {s / len(items):.1f} s against {c / len(items):.1f} s per edit "
          f"(ratio {s / c:.2f}); largest latent difference {worst:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
