"""The editor rows of ``regionedit bench gpu``: whole LoMOE edits through regionedit's own model
classes (the random models of ``bench speed`` on a GPU, the mini models with ``--tiny``), seconds per
edit step from the editor's callback, the whole edit's peak and the plan's peak for the same edit."""

from __future__ import annotations

import statistics
import time

import torch

from .gpu import Meter, Row

EDITOR_MODELS = ("sd2-base-random", "sdxl-base-random", "flux-dev-random", "sd3-medium-random")
TINY_EDITOR_MODELS = ("mini", "mini-flow")


def measure_editor(name: str, model, mode: str, regions: list[int], size: int, steps: int = 3,
                   budget: int | None = None) -> list[Row]:  # fmt: skip
    """Whole LoMOE edits through regionedit's editor: seconds per edit step (its callback), the peak of
    the whole edit, and the plan's peak for the same edit."""
    from dataclasses import asdict

    import regionedit
    from regionedit import ExecutionOptions, LoMOEOptions, Region

    from ..lomoe.editor import background_branch
    from ..plan.budget import plan_of_model
    from .memory import resident_bytes
    from .speed import grid_item

    device, options = model.device, LoMOEOptions(num_inference_steps=steps)
    meter = Meter(device, resident_bytes(model) if device.type == "cpu" else 0)
    background, rows = background_branch(asdict(options)), []
    for n in regions:
        item = grid_item(n, size, seed=n, factor=model.size_factor)
        marks: list[float] = []

        def mark(step, info, marks=marks):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks.append(time.perf_counter())

        plan = plan_of_model(model, size, size, n, options, background, max_memory=budget)
        execution = ExecutionOptions(chunk_size=plan.chunk_size)
        regions_ = [Region(m, p) for m, p in zip(item.masks, item.prompts, strict=True)]
        try:
            _, peak = meter.run(lambda item=item, regions_=regions_, execution=execution, mark=mark: regionedit.edit(
                model, _image(item.image), regions_, item.source_caption, options, progress=False, callback=mark,
                execution=execution))  # fmt: skip
            seconds = (
                statistics.median(b - a for a, b in zip(marks, marks[1:], strict=False))
                if len(marks) > 1
                else None
            )
            rows.append(Row(name, mode, n, "editor", seconds, peak, plan.peak, plan.chunk_size))
        except torch.cuda.OutOfMemoryError:
            rows.append(Row(name, mode, n, "editor", None, None, plan.peak, plan.chunk_size, "out of memory"))
    return rows


def _image(array):
    from PIL import Image

    return Image.fromarray(array)


def editor_rows(modes, regions, size, tiny, device, dtype, steps, budget) -> list[Row]:
    from ..models.loading import from_components, load
    from ..models.memory import MemoryOptions
    from .random_models import RANDOM_MODELS

    rows = []
    for name in TINY_EDITOR_MODELS if tiny else EDITOR_MODELS:
        for mode in modes:
            memory = MemoryOptions(offload="group" if mode == "group" else "none",
                                   storage_dtype="float8_e4m3fn" if mode == "fp8" else None)  # fmt: skip
            if tiny:
                model = load(name, memory=memory)
            else:
                home = torch.device("cpu") if mode == "group" else device
                components = RANDOM_MODELS[name](home, torch.float32)
                model = from_components(components, name=name, device=device, dtype=dtype, memory=memory)
            rows += measure_editor(name, model, mode, regions, size, steps, budget)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows
