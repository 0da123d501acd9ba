"""Print the bytes of LoMOE's held reference attention maps (``reference_maps="device"``) for the
SD-2-base, SDXL-base, FLUX.1-dev and SD3-medium architectures, from their layer geometry (no weights are allocated):

    .venv/bin/python docs/bench/reference_memory.py
"""

import torch

from regionedit.bench.random_models import RANDOM_MODELS, timing_model
from regionedit.lomoe.memory import reference_bytes, reference_bytes_per_step

for name, build in RANDOM_MODELS.items():
    model = timing_model(build("meta"), device="meta", name=name)  # shapes only
    layers = len(model.cross_attention_layers())
    for side in (512, 768, 1024):
        step = reference_bytes_per_step(model, side, side, torch.float16)
        total = reference_bytes(model, side, side, 50, torch.float16)
        print(f"| {name} | {layers} | {side}x{side} | {step / 2**20:.0f} MiB | {total / 2**30:.1f} GiB |")
