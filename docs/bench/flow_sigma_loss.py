"""The mini flow model's velocity loss by noise level, on its own training scenes.

Loads the latest checkpoint of a training run (``OUT/ckpt``) and its cached scene latents, and
reports the mean loss ‖v̂ − (noise − x0)‖² at fixed σ values, each on the same scenes, noise and
full captions. Shows where in σ a recipe change (e.g. ``--flow-train-shift``) moves the fit.

    .venv/bin/python docs/bench/flow_sigma_loss.py --run training/mini-flow --scenes 256
"""

import argparse
import json
from functools import partial
from pathlib import Path

import torch

from regionedit.models.sd import token_ids
from regionedit.shapes.train_flow import _latents, flow_prediction, trained_components, velocity_error
from regionedit.shapes.world import caption_for

SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a flow training folder (config.json, ckpt/)")
    ap.add_argument("--scenes", type=int, default=256)
    ap.add_argument("--out", default=None, help="also write the numbers here (JSON)")
    args = ap.parse_args()
    cfg, comps, step = trained_components(args.run)
    latents, records, _ = _latents(comps, cfg, Path(args.run), comps["vae"].config.sample_size)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(latents), generator=g)[: args.scenes]
    x0 = latents[idx]
    noise = torch.randn(x0.shape, generator=g)
    ids = token_ids(comps["tokenizer"], [caption_for(*records[int(i)]) for i in idx])
    result = {"step": step, "scenes": len(idx), "loss": {}}
    with torch.no_grad():
        embeds, pooled = comps["text_encoder_2"](ids)[0], comps["text_encoder"](ids).pooler_output
        for s in SIGMAS:
            sigma = torch.full((len(idx),), s)
            losses = []
            for i in range(0, len(idx), 64):
                sl = slice(i, i + 64)
                predict = partial(flow_prediction, comps["transformer"], embeds=embeds[sl], pooled=pooled[sl])
                err = velocity_error(predict, x0[sl], noise[sl], sigma[sl])
                losses.append(err.mean(dim=(1, 2, 3)))
            result["loss"][str(s)] = round(torch.cat(losses).mean().item(), 5)
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
