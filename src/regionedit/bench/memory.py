"""Peak tensor memory on a CPU, measured: what :mod:`regionedit.plan` is checked and calibrated against.

torch keeps no peak counter for CPU memory. The profiler does: with ``profile_memory=True`` every
allocation and free of the CPU allocator is recorded with the allocator's running total of the bytes
allocated since profiling began, so the largest total is the peak of live tensors. It counts tensors
only (not Python, libraries or allocator slack) and is the same on every run, where the process's
resident-memory high-water mark (``ru_maxrss``) moves by tens of MB with the libraries loaded and
the allocator's reuse, more than the small models' activations being measured.
Tensors that exist before (the weights) are added by :func:`resident_bytes`.
"""

from __future__ import annotations

import torch


def tensor_peak(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)``; return ``(its result, peak bytes of CPU tensors allocated during it)``.

    The peak is over tensors created inside the call (freed or not); those alive before are not counted.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn(*args, **kwargs)
    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            peak = max(peak, int(node.extra_fields.total_allocated))
        stack.extend(node.children)
    return result, peak


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def resident_bytes(model) -> int:
    """Bytes of every network a loaded model holds (denoiser, text encoders, VAE)."""
    modules = {id(m): m for m in vars(model).values() if isinstance(m, torch.nn.Module)}
    return sum(module_bytes(m) for m in modules.values())


def edit_peak(
    model, size: int, regions: int, steps: int = 2, options=None, execution=None, seed: int = 0
) -> int:
    """Measured peak bytes of CPU tensors during a whole LoMOE edit (inversion, reference pass, edit
    steps, decoding) of a ``size`` × ``size`` seeded noise image with ``regions`` box masks on a grid
    (the speed benchmark's items), weights included.

    ``options`` are :class:`~regionedit.lomoe.options.LoMOEOptions` (``steps`` replaces their step count).
    """
    from dataclasses import replace

    from PIL import Image

    from ..lomoe.editor import edit
    from ..lomoe.options import LoMOEOptions
    from ..regions import Region
    from .speed import grid_item

    options = replace(options or LoMOEOptions(), num_inference_steps=steps)
    item = grid_item(regions, size, seed, factor=model.size_factor)
    chosen = [Region(m, p) for m, p in zip(item.masks, item.prompts, strict=True)]
    _, peak = tensor_peak(
        edit, model, Image.fromarray(item.image), chosen, item.source_caption, options,
        torch.Generator().manual_seed(seed), progress=False, execution=execution,
    )  # fmt: skip
    return resident_bytes(model) + peak
