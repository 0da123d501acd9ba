"""Speed and memory at any scale: LoMOE against the iterative baseline, and region scaling.

``speed_bench`` times one N-region LoMOE pass against N single-region passes (each with its
own inversion) on an SD-2-base-architecture model with random weights (speed does not depend
on what the weights are) and reports the measured ratio beside the UNet-work ratio
21N/(8N+13) (19N/(8N+11) when the reference maps are held). ``edit_scaling`` times single LoMOE edits for growing region counts, with the
chunked exact gradient (``ExecutionOptions.chunk_size``) bounding memory.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import torch

from ..errors import InvalidInputError
from ..lomoe.editor import background_branch
from ..models.interface import Model
from ..shapes.items import BenchItem
from .measure import measure
from .methods import ITERATIVE, ONE_PASS, MethodConfig, run_iterative, run_lomoe
from .runner import work_formula, work_ratio

log = logging.getLogger(__name__)

PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow circle", "a white square")


def grid_item(n: int, size: int, seed: int = 0, factor: int = 8) -> BenchItem:
    """A seeded noise image with ``n`` disjoint box masks on a ⌈√n⌉ grid (1-pixel gaps)."""
    g = math.ceil(math.sqrt(n))
    cell = size // g
    if cell - 2 < factor:
        raise InvalidInputError(f"{n} regions do not fit a {size}x{size} image; use a larger --size")
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    masks = []
    for k in range(n):
        m = np.zeros((size, size), bool)
        y, x = divmod(k, g)
        m[y * cell + 1 : (y + 1) * cell - 1, x * cell + 1 : (x + 1) * cell - 1] = True
        masks.append(m)
    prompts = [PROMPTS[k % len(PROMPTS)] for k in range(n)]
    return BenchItem(f"grid-{n}", image, masks, prompts, "a photo", "a photo")


def unet_flops_per_eval(model: Model, latent_hw: tuple[int, int]) -> float:
    """FLOPs of one UNet forward on one latent (torch's FlopCounterMode, counted once)."""
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.zeros((1, model.latent_channels, *latent_hw), device=model.device)
    cond = model.encode_prompt(["a photo"])
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.predict(z, torch.tensor(999, device=model.device), cond)
    return float(fc.get_total_flops())


def _row(name, n, m, flops):
    return {
        "method": name,
        "n_masks": n,
        "seconds": m.seconds,
        "unet_evals": m.unet_evals,
        "unet_backward_evals": m.unet_backward_evals,
        "unet_work": m.unet_work,
        "peak_memory_mb": m.peak_memory_mb,
        "memory_kind": m.memory_kind,
        "unet_tflops_per_s": flops * m.unet_work / m.seconds / 1e12 if flops else None,
    }


def speed_bench(
    model: Model,
    masks=(1, 2, 4, 7),
    size: int = 512,
    cfg: MethodConfig | None = None,
    repeats: int = 1,
) -> dict:
    """LoMOE (one pass) vs iterative (N passes) per mask count; rows plus ratios."""
    cfg = cfg or MethodConfig()
    steps = cfg.num_inference_steps
    recompute = cfg.execution.reference_maps == "recompute"
    background = background_branch(dataclasses.asdict(cfg.lomoe_options()))
    f = model.vae_scale_factor
    flops = unet_flops_per_eval(model, (size // f, size // f))
    # warm-up: first-call costs (allocator, kernels) are not the algorithm's
    warm = dataclasses.replace(cfg, num_inference_steps=1)
    run_lomoe(model, grid_item(1, size, factor=f), warm, torch.Generator().manual_seed(0))
    rows, ratios = [], []
    for n in masks:
        item = grid_item(n, size, seed=n, factor=f)
        res = {}
        for name, fn in ((ONE_PASS, run_lomoe), (ITERATIVE, run_iterative)):
            runs = []
            for _ in range(repeats):  # the fastest of several: least disturbed by other load
                with measure(model) as m:
                    out = fn(model, item, cfg, torch.Generator().manual_seed(n))
                m.unet_backward_evals = out.unet_backward_evals
                runs.append(m)
            m = min(runs, key=lambda r: r.seconds)
            res[name] = m
            rows.append(_row(name, n, m, flops))
            log.info("%s N=%d: %.2f s", name, n, m.seconds)
        measured = res[ITERATIVE].seconds / res[ONE_PASS].seconds
        expected = work_ratio(n, recompute, model.guidance_batches, background)
        ratios.append(
            {
                "n_masks": n,
                "time_ratio": measured,
                "unet_work_ratio": res[ITERATIVE].unet_work / res[ONE_PASS].unet_work,
                "expected_work_ratio": expected,
                "time_ratio_fraction": measured / expected,
            }
        )
    return {
        "size": size,
        "steps": steps,
        "repeats": repeats,
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "unet_flops_per_eval": flops,
        "rows": rows,
        "ratios": ratios,
        "work_formula": work_formula(recompute, model.guidance_batches, background),
    }


def edit_scaling(
    model: Model,
    regions=(1, 2, 4, 8, 16),
    size: int | None = None,
    cfg: MethodConfig | None = None,
) -> list[dict]:
    """Seconds, UNet evaluations and peak memory of one LoMOE edit per region count."""
    f = model.vae_scale_factor
    size = size or model.native_size
    cfg = cfg or MethodConfig()
    flops = unet_flops_per_eval(model, (size // f, size // f))
    run_lomoe(
        model,
        grid_item(1, size, factor=f),
        dataclasses.replace(cfg, num_inference_steps=1),
        torch.Generator().manual_seed(0),
    )
    rows = []
    for n in regions:
        item = grid_item(n, size, seed=n, factor=f)
        with measure(model) as m:
            out = run_lomoe(model, item, cfg, torch.Generator().manual_seed(n))
        m.unet_backward_evals = out.unet_backward_evals
        mode = cfg.execution.reference_maps
        rows.append({**_row(ONE_PASS, n, m, flops), "chunk_size": cfg.execution.chunk_size, "reference_maps": mode,
                     "reference_mb_on_device": _reference_mb(model, size, cfg.num_inference_steps, mode)})  # fmt: skip
    return rows


def _reference_mb(model, size: int, steps: int, mode: str) -> float:
    """MiB of reference maps on the model's device: all steps held, one step at a time, or none."""
    from ..lomoe.memory import reference_bytes_per_step

    per_step = reference_bytes_per_step(model, size, size)
    return {"device": steps * per_step, "recompute": per_step, "cpu": per_step}[mode] / 2**20


def format_rows(rows: list[dict]) -> str:
    lines = [
        "| method | regions | s / edit | UNet evals | backward evals | UNet work | peak MB | UNet TFLOP/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        tf = "–" if r["unet_tflops_per_s"] is None else f"{r['unet_tflops_per_s']:.3f}"
        lines.append(
            f"| {r['method']} | {r['n_masks']} | {r['seconds']:.2f} | {r['unet_evals']} | "
            f"{r['unet_backward_evals']} | {r['unet_work']} | {r['peak_memory_mb']:.0f} | {tf} |"
        )
    return "\n".join(lines)


def format_ratios(ratios: list[dict], formula: str = "21N/(8N+13)") -> str:
    lines = [
        f"| N | iterative / LoMOE time | UNet-work ratio measured | {formula} | time / expected |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in ratios:
        lines.append(
            f"| {r['n_masks']} | {r['time_ratio']:.2f} | {r['unet_work_ratio']:.2f} | "
            f"{r['expected_work_ratio']:.2f} | {r['time_ratio_fraction']:.0%} |"
        )
    return "\n".join(lines)
