"""``regionedit bench gpu``: seconds per step and peak memory of LoMOE's denoiser work against each
family's own pipeline step, for every released architecture with random weights at its real size.

Per family (:mod:`regionedit.bench.architectures`) the denoiser is built from its config with random
weights in bf16 on the GPU (nothing is downloaded) and run through its diffusers class
(:mod:`regionedit.bench.denoiser_step`):

- *pipeline*: one guided call, as the family's diffusers pipeline makes it per step (``k`` latents:
  2 with CFG, 1 where guidance is distilled), without gradients;
- *LoMOE*: one edit step's denoiser work: the reference call (``k`` latents), forward and backward over
  the ``(N + 1) · k`` branch latents in the chunks the memory plan says fit, and the branches again
  without gradients (what the editor runs, without its attention capture and losses);

under three memory settings of :mod:`regionedit.models.memory`: none, group offloading (block level,
the weights saved for backward waiting on the CPU) and float8 storage (layerwise casting). Where
regionedit's own model class builds (the random models of ``bench speed``), a whole edit also runs
through the editor (``editor`` rows, :mod:`regionedit.bench.gpu_editor`: seconds per edit step from its
callback). Peaks are
``torch.cuda.max_memory_allocated``; the plan's prediction for the same work stands beside them.

``--tiny`` runs the same on the CPU with reduced depth and width (peaks of live CPU tensors from the
profiler), and the editor rows on the mini models: a check that the script runs end to end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from ..plan.shape import build_network as build
from .architectures import ARCHITECTURES, Spec
from .denoiser_step import step_call

log = logging.getLogger(__name__)

MODES = ("none", "group", "fp8")
# --tiny: each family's denoiser at a reduced depth and width (real block structure), float32 on the CPU.
TINY = {
    "sd": dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=2, cross_attention_dim=32,
               norm_num_groups=16, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    "sdxl": dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=2, cross_attention_dim=32,
                 norm_num_groups=16, transformer_layers_per_block=(1, 2), addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=80, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
    "flux": dict(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=16,
                 joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
    "sd3": dict(num_layers=1, num_attention_heads=2, attention_head_dim=16, joint_attention_dim=32,
                caption_projection_dim=32, pooled_projection_dim=32, sample_size=32, pos_embed_max_size=32),
    "flux2": dict(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=16,
                  joint_attention_dim=48, axes_dims_rope=(4, 4, 4, 4), timestep_guidance_channels=32),
    "qwenimage": dict(num_layers=1, num_attention_heads=2, attention_head_dim=16, joint_attention_dim=32,
                      axes_dims_rope=(4, 6, 6)),
    "zimage": dict(dim=64, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32,
                   axes_dims=(8, 12, 12), axes_lens=(64, 32, 32)),
}  # fmt: skip


@dataclass
class Row:
    model: str
    mode: str
    regions: int
    kind: str  # "pipeline", "lomoe" or "editor"
    seconds: float | None  # per step
    peak: int | None  # bytes
    planned: int | None = None
    chunk: int | None = None
    note: str = ""


def random_denoiser(spec: Spec, device, dtype, tiny: bool = False) -> torch.nn.Module:
    """The architecture's denoiser with random weights: built on the ``meta`` device in ``dtype`` and
    given storage on ``device`` (a 20 B network never exists in float32), weights drawn there."""
    from ..quiet import quiet_libraries

    cls, config = spec.denoiser
    if tiny:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build(cls, {**config, **TINY[spec.family]}, device).requires_grad_(False)
    with quiet_libraries():  # diffusers warns of casting a built model
        net = build(cls, config, "meta").to(dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim >= 2:
                p.normal_(0, p.shape[1] ** -0.5, generator=generator)
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
        for b in net.buffers():
            b.zero_()
    return net.requires_grad_(False)


def apply_mode(net: torch.nn.Module, mode: str, device: torch.device, dtype) -> None:
    """The memory setting as regionedit.models.memory applies it to a model's denoiser."""
    from ..models.memory import keep_saved_tensors

    if mode == "group":
        net.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                 offload_type="block_level", num_blocks_per_group=1)  # fmt: skip
        keep_saved_tensors(net, torch.device("cpu"))
    elif mode == "fp8":
        net.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
        keep_saved_tensors(net, None)


class Meter:
    """Seconds and peak bytes of a block: CUDA's allocator statistics, or the CPU profiler's live
    tensors plus ``base`` bytes (the weights)."""

    def __init__(self, device: torch.device, base: int = 0):
        self.device, self.base = device, base

    def run(self, fn) -> tuple[float, int]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize(self.device)
            return time.perf_counter() - start, torch.cuda.max_memory_allocated(self.device)
        from .memory import tensor_peak

        start = time.perf_counter()
        _, peak = tensor_peak(fn)
        return time.perf_counter() - start, self.base + peak


def pipeline_step(calls: dict, k: int) -> None:
    """One guided call of the family's pipeline: ``k`` latents, no gradients."""
    z, call = calls[k]
    with torch.no_grad():
        call(z)


def chunk_batches(branches: int, chunk: int, k: int) -> list[int]:
    """The denoiser batch of each gradient chunk: ``chunk`` branches (fewer in the last) of ``k`` latents."""
    return [min(chunk, branches - s) * k for s in range(0, branches, chunk)]


def lomoe_step(calls: dict, k: int, branches: int, chunk: int) -> None:
    """One LoMOE step's denoiser work: the reference call, the gradient over the branches a chunk at a
    time, the branches again without gradients. ``calls[b]``: ``(latents, call)`` for batch ``b``."""
    z, call = calls[k]
    with torch.no_grad():
        call(z)
    sizes = chunk_batches(branches, chunk, k)
    for b in sizes:
        z, call = calls[b]
        leaf = z.clone().requires_grad_(True)
        torch.autograd.grad(call(leaf).float().square().sum(), leaf)
    with torch.no_grad():
        for b in sizes:
            z, call = calls[b]
            call(z)


def measure_denoiser(name: str, spec: Spec, mode: str, regions: list[int], size: int, device, dtype, tiny: bool,
                     repeats: int = 2, budget: int | None = None) -> list[Row]:  # fmt: skip
    """Pipeline and LoMOE rows of one architecture under one memory setting."""
    from ..plan.estimate import plan_memory
    from .plan_cli import shape_for

    home = torch.device("cpu") if mode == "group" else device
    net = random_denoiser(spec, home, dtype, tiny)
    apply_mode(net, mode, device, dtype)
    text = 8 if tiny else spec.text_tokens
    k = 1 if spec.guidance == "distilled" else 2
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    meter = Meter(device, 0 if mode == "group" else weights)
    shape = _tiny_shape(name, spec) if tiny else shape_for(name)
    dname = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    storage = "float8_e4m3fn" if mode == "fp8" else None
    offload = "group" if mode == "group" else "none"

    def calls_for(batches: list[int]) -> dict:
        return {b: step_call(spec.family, net, b, size, size, text, device=device) for b in set(batches)}

    def timed(fn) -> tuple[float, int]:
        fn()  # warm-up: kernels, allocator, cached tables
        runs = [meter.run(fn) for _ in range(repeats)]
        return min(r[0] for r in runs), max(r[1] for r in runs)

    rows = []
    try:
        calls = calls_for([k])
        seconds, peak = timed(lambda: pipeline_step(calls, k))
        rows.append(Row(name, mode, 0, "pipeline", seconds, peak))
    except torch.cuda.OutOfMemoryError:
        rows.append(Row(name, mode, 0, "pipeline", None, None, note="out of memory"))
    for n in regions:
        branches = n + 1
        for chunk in range(branches, 0, -1):  # the largest chunk whose planned peak fits the budget
            plan = plan_memory(shape, size, size, n, dtype=dname, storage=storage, offload=offload,
                               chunk_size=chunk, bootstrap=False)  # fmt: skip
            planned = denoiser_planned(plan)
            if budget is None or planned <= budget:
                break
        try:
            calls = calls_for([k, *chunk_batches(branches, chunk, k)])
            seconds, peak = timed(
                lambda calls=calls, branches=branches, chunk=chunk: lomoe_step(calls, k, branches, chunk)
            )
            rows.append(Row(name, mode, n, "lomoe", seconds, peak, planned, chunk))
        except torch.cuda.OutOfMemoryError:
            rows.append(Row(name, mode, n, "lomoe", None, None, planned, chunk, "out of memory"))
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _tiny_shape(name: str, spec: Spec):
    """The plan's view of the --tiny denoiser (its text tokens as the tiny run's)."""
    from dataclasses import replace

    from ..plan.shape import shape_of_configs

    key = "unet" if "unet" in spec.components else "transformer"
    cls, config = spec.components[key]
    components = {**spec.components, key: (cls, {**config, **TINY[spec.family]})}
    return replace(shape_of_configs(name, spec.family, components, 8, spec.guidance), text_tokens=8)


def denoiser_planned(plan) -> int:
    """The plan's gradient-step peak for the denoiser alone: without the other networks' weights and the
    attention maps LoMOE captures (the denoiser work measured here captures none)."""
    others = sum(v for key, v in plan.weights.items() if key != "denoiser") if plan.offload == "none" else 0
    return plan.phases["gradient step"] - others - plan.reference_maps - plan.maps


def format_rows(rows: list[Row], unit: str = "GiB") -> str:
    """Rows as a markdown table (memory in ``unit``, GiB or MiB); LoMOE's seconds also as a multiple of
    the pipeline step's."""
    scale = {"GiB": 2**30, "MiB": 2**20}[unit]
    base = {(r.model, r.mode): r.seconds for r in rows if r.kind == "pipeline"}
    lines = [f"| model | memory | regions | what | s / step | x pipeline step | peak {unit} | planned {unit} | chunk | note |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip

    def num(v, scale=1.0, digits=3):
        return "–" if v is None else f"{v / scale:.{digits}f}"

    for r in rows:
        ref = base.get((r.model, r.mode))
        ratio = r.seconds / ref if r.seconds and ref and r.kind != "pipeline" else None
        lines.append(f"| {r.model} | {r.mode} | {r.regions if r.kind != 'pipeline' else '–'} | {r.kind} | "
                     f"{num(r.seconds)} | {num(ratio, digits=2)} | {num(r.peak, scale, 2)} | "
                     f"{num(r.planned, scale, 2)} | {r.chunk or '–'} | {r.note} |")  # fmt: skip
    return "\n".join(lines)


def device_setting(tiny: bool) -> tuple[torch.device, torch.dtype, int | None]:
    """Device, dtype and memory budget: the CUDA device in bf16 with 90% of its memory (the rest is the
    allocator's slack), or the CPU in float32 without a budget for ``--tiny``."""
    if tiny:
        return torch.device("cpu"), torch.float32, None
    if not torch.cuda.is_available():
        from ..errors import InvalidInputError

        raise InvalidInputError("bench gpu needs a CUDA device; --tiny runs a reduced version on the CPU")
    device = torch.device("cuda")
    return device, torch.bfloat16, int(torch.cuda.get_device_properties(device).total_memory * 0.9)


def denoiser_rows(models: list[str], modes: list[str], regions: list[int], size: int, tiny: bool,
                  repeats: int = 2) -> list[Row]:  # fmt: skip
    """Every architecture's pipeline and LoMOE rows under every memory setting."""
    device, dtype, budget = device_setting(tiny)
    rows = []
    for name in models:
        for mode in modes:
            log.info("%s, %s", name, mode)
            rows += measure_denoiser(name, ARCHITECTURES[name], mode, regions, size, device, dtype, tiny, repeats,
                                     budget)  # fmt: skip
    return rows
