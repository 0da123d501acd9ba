"""The memory plan against measured peaks of whole LoMOE edits on CPU, float32 (docs/experiments.md).

Each edit is one step of N regions on a seeded noise image (the speed benchmark's items), measured as
the peak of live CPU tensors (torch's profiler, regionedit.bench.memory) plus the weights, and planned
by regionedit.plan from the loaded model (:func:`shape_of_model`).

    OMP_NUM_THREADS=1 .venv/bin/python docs/bench/plan_check.py [case ...] 2>/dev/null

Cases: mini, mini-flow (128 px), sdxl-reduced, flux-reduced (256 px, real widths, reduced depth), sdxl-full
(the whole SDXL-base UNet, 2.6 B parameters, 256 px: about 14 GB and 10 minutes).
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

import regionedit
from regionedit import ExecutionOptions, LoMOEOptions
from regionedit.bench.memory import edit_peak
from regionedit.bench.random_models import flux_dev_components, sdxl_base_components, timing_model
from regionedit.plan import plan_memory, shape_of_model


def _flux(**depth):
    model = timing_model(flux_dev_components(**depth), name="flux-reduced")
    model.max_sequence_length = 64
    return model


CASES = {  # name -> (model builder, size, [(regions, bootstrap steps, chunk size)])
    "mini": (lambda: regionedit.load("mini"), 128, [(2, 20, None), (4, 0, None), (4, 0, 2), (8, 0, None)]),
    "mini-flow": (lambda: regionedit.load("mini-flow"), 128, [(2, 20, None), (4, 0, None), (4, 0, 2)]),
    "sdxl-reduced": (
        lambda: timing_model(sdxl_base_components(layers_per_block=1, transformer_layers_per_block=(1, 1, 1)),
                             name="sdxl-reduced"), 256, [(1, 0, None), (1, 20, None), (3, 0, None)]),
    "flux-reduced": (lambda: _flux(num_layers=1, num_single_layers=2), 256, [(1, 0, None), (1, 20, None), (3, 0, None)]),
    "sdxl-full": (lambda: timing_model(sdxl_base_components(), name="sdxl-base-random"), 256, [(1, 0, None)]),
}  # fmt: skip


def check(name: str) -> None:
    build, size, runs = CASES[name]
    model = build()
    shape = shape_of_model(model)
    for regions, bootstrap, chunk in runs:
        options = dataclasses.replace(LoMOEOptions(), bootstrap_steps=bootstrap)
        start = time.perf_counter()
        measured = edit_peak(model, size, regions, steps=1, options=options,
                             execution=ExecutionOptions(chunk_size=chunk))  # fmt: skip
        plan = plan_memory(shape, size, size, regions, dtype="fp32", chunk_size=chunk, steps=1,
                           bootstrap=bootstrap > 0)  # fmt: skip
        print(f"| {name} | {size} | {regions} | {'on' if bootstrap else 'off'} | {chunk or 'all'} | "
              f"{measured / 2**20:.0f} | {plan.peak / 2**20:.0f} | {plan.peak / measured - 1:+.1%} | {plan.phase} | "
              f"{time.perf_counter() - start:.0f} s |", flush=True)  # fmt: skip


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(
        "| model | px | N | bootstrap | chunk | measured MiB | planned MiB | planned / measured - 1 | phase | time |"
    )
    print("|---|---:|---:|---|---|---:|---:|---:|---|---:|")
    for case in sys.argv[1:] or [c for c in CASES if c != "sdxl-full"]:
        check(case)
