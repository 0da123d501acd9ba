"""BENCHMARKS.md's "Memory plan at 1024²": regionedit.plan's peak for every released architecture.

    .venv/bin/python docs/bench/plan_table.py

bf16, 50 steps, reference maps recomputed, bootstrapping on (the paper's LoMOE options); each cell is
the peak with every branch in one gradient chunk, the phase holding it in brackets (g: gradient step,
v: the VAE encoding ten bootstrap colours); the last column the largest chunk of N = 4's five
branches that fits 80 GiB without offloading (else with group offloading), and its peak.
"""

from __future__ import annotations

from regionedit.bench.architectures import ARCHITECTURES
from regionedit.bench.plan_cli import shape_for
from regionedit.plan import plan_memory

SETTINGS = {"none": {}, "group offload": {"offload": "group"}, "float8 storage": {"storage": "float8_e4m3fn"}}
PHASES = {
    "gradient step": "g",
    "VAE encoding": "v",
    "VAE decoding": "d",
    "text encoding": "t",
    "inversion": "i",
}


def gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def main() -> None:
    print("| model | parameters (B): denoiser / text / VAE | N = 1 | N = 4 | N = 8 | N = 4, group offload "
          "| N = 4, float8 storage | N = 4 in 80 GiB: chunk (peak) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in ARCHITECTURES:
        shape = shape_for(name)
        p = shape.parameters
        text = sum(p[k] for k in shape.text_encoders)
        params = f"{p['denoiser'] / 1e9:.2f} / {text / 1e9:.2f} / {p['vae'] / 1e9:.2f}"
        cells = []
        for n, settings in (
            (1, {}),
            (4, {}),
            (8, {}),
            (4, SETTINGS["group offload"]),
            (4, SETTINGS["float8 storage"]),
        ):
            plan = plan_memory(shape, 1024, 1024, n, **settings)
            cells.append(f"{gib(plan.peak)} ({PHASES.get(plan.phase, plan.phase)})")
        last = "does not fit"
        for label, settings in (("", {}), ("group offload: ", {"offload": "group"})):
            fit = plan_memory(shape, 1024, 1024, 4, max_memory=80 * 2**30, **settings)
            if fit.fits:
                last = f"{label}{fit.chunk_size} of {fit.branches} ({gib(fit.peak)})"
                break
        else:
            last += f" ({gib(fit.peak)} at chunk 1 with group offload)"
        print(f"| {name} | {params} | " + " | ".join(cells) + f" | {last} |")


if __name__ == "__main__":
    main()
