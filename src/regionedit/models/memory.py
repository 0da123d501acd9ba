"""Weights that fit: offloading, a storage dtype and quantized denoisers, through diffusers.

- ``offload="model"``: the text encoders and the VAE wait on the CPU and move to the accelerator
  while they run (accelerate's hooks, which diffusers' ``enable_model_cpu_offload`` uses too); the
  denoiser stays on the accelerator. On a CPU there is nowhere to offload from: it does nothing.
- ``offload="group"``: diffusers' group offloading: the denoiser's blocks, and the other
  networks' layers, wait on the CPU and move to the device one group at a time.
- ``storage_dtype``: the denoiser's weights are stored in float8 or bfloat16 and cast to the
  model's dtype layer by layer as it runs (diffusers' layerwise casting).
- ``quantize``: the denoiser is loaded quantized: int8 weight-only (torchao) or NF4 (bitsandbytes,
  CUDA only). A ``.gguf`` file is quantized already.

LoMOE back-propagates through the denoiser. Offloading and layerwise casting swap a weight's data
once its layer has run, while autograd keeps some weights by reference (a convolution's, a norm's
scale), so the backward pass would read the offloaded or re-cast data. :func:`keep_saved_tensors`
makes autograd keep the data the forward pass used.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch

from ..errors import DependencyError, InvalidOptionError
from ..options import build, documented, option

log = logging.getLogger(__name__)

OFFLOAD = ("none", "model", "group")
STORAGE_DTYPES = ("float8_e4m3fn", "bfloat16")
QUANTIZE = ("int8", "nf4")
EXTRA = "pip install 'regionedit[quant]'"


@documented
@dataclass(frozen=True)
class MemoryOptions:
    """How a model's weights fit in memory (docs/models.md, "Weights that fit")."""

    offload: str = option(
        "none", choices=OFFLOAD,
        help="model: text encoders and VAE wait on the CPU and move to the device while they run; group: "
        "every network's layers wait on the CPU and move to the device a group at a time",
    )  # fmt: skip
    storage_dtype: str | None = option(
        None, choices=STORAGE_DTYPES,
        help="store the denoiser's weights in this dtype, cast to the model's dtype layer by layer as it runs",
    )  # fmt: skip
    quantize: str | None = option(
        None, choices=QUANTIZE,
        help="load the denoiser quantized: int8 weight-only (torchao) or nf4 (bitsandbytes, CUDA only)",
    )  # fmt: skip

    def __post_init__(self):
        allowed = {
            "offload": OFFLOAD,
            "storage_dtype": (None, *STORAGE_DTYPES),
            "quantize": (None, *QUANTIZE),
        }
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise InvalidOptionError(
                    f"{name} must be one of {', '.join(map(str, values))}, got {getattr(self, name)!r}"
                )
        if self.storage_dtype is not None and self.quantize is not None:
            raise InvalidOptionError(
                "storage_dtype and quantize both shrink the denoiser's weights; choose one"
            )


def make_memory(values=None) -> MemoryOptions:
    """:class:`MemoryOptions` from a mapping of its fields (or as given; None: nothing changes)."""
    return build(MemoryOptions, values, what="memory")


def check(memory: MemoryOptions, device: torch.device, gguf: bool) -> None:
    """Refuse what cannot run here, in one line, before anything is loaded."""
    if gguf and memory.quantize is not None:
        raise InvalidOptionError(f"a .gguf file is quantized already; leave out quantize={memory.quantize!r}")
    if gguf and memory.storage_dtype is not None:
        raise InvalidOptionError(
            "storage_dtype applies to unquantized weights, and a .gguf file is quantized"
        )
    if memory.quantize == "nf4" and device.type != "cuda":
        raise InvalidOptionError(
            f"quantize='nf4' (bitsandbytes) needs a CUDA device, not {device}; use quantize='int8' or a .gguf file"
        )


def need_package(package: str, what: str, install: str = EXTRA) -> None:
    """One line naming the install command unless ``package`` is importable."""
    if importlib.util.find_spec(package) is None:
        raise DependencyError(f"{what} needs the {package} package: {install}")


def denoiser_quantization(memory: MemoryOptions, dtype: torch.dtype, gguf: bool):
    """The diffusers quantization config the denoiser loads with, or None."""
    if gguf:
        need_package("gguf", "a .gguf model")
        from diffusers import GGUFQuantizationConfig

        return GGUFQuantizationConfig(compute_dtype=dtype)
    if memory.quantize == "int8":
        need_package("torchao", "quantize='int8'")
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    if memory.quantize == "nf4":
        need_package("bitsandbytes", "quantize='nf4'", "pip install bitsandbytes")
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return None


def home(memory: MemoryOptions, name: str, denoiser_name: str, device: torch.device) -> torch.device:
    """Where component ``name`` waits between uses: the CPU for what is offloaded, else ``device``."""
    if memory.offload == "group" or (memory.offload == "model" and name != denoiser_name):
        return torch.device("cpu")
    return device


def apply(model, memory: MemoryOptions, **group_kwargs) -> None:
    """Storage dtype and offloading on a model whose components wait where :func:`home` says.

    ``group_kwargs`` go to the denoiser's group offloading (``offload_to_disk_path``, ...).
    """
    denoiser = model.denoiser
    if memory.storage_dtype is not None:
        storage = getattr(torch, memory.storage_dtype)
        denoiser.enable_layerwise_casting(storage_dtype=storage, compute_dtype=model.dtype)
    if memory.offload == "group":
        group_offload(model, **group_kwargs)
    elif memory.offload == "model":
        if model.device.type == "cpu":
            log.info("offload='model' does nothing on the CPU: the networks are in host memory already")
        else:
            offload_idle(model)
    if memory.offload == "group" or memory.storage_dtype is not None:
        keep_saved_tensors(denoiser, torch.device("cpu") if memory.offload == "group" else None)


def _others(model) -> list[torch.nn.Module]:
    """The model's networks other than the denoiser (text encoders, VAE)."""
    return [
        getattr(model, n) for n in model.modules
        if n != model.denoiser_name and getattr(model, n, None) is not None
    ]  # fmt: skip


def group_offload(model, **kwargs) -> None:
    """diffusers' group offloading onto the model's device: the denoiser one block at a time (with
    ``kwargs``); the text encoders and the VAE one layer at a time (a VAE's ``encode`` and ``decode``
    bypass its ``forward``, where a block-level group of its loose weights would be onloaded)."""
    from diffusers.hooks import apply_group_offloading

    model.denoiser.enable_group_offload(
        onload_device=model.device, offload_type="block_level", num_blocks_per_group=1, **kwargs
    )
    for module in _others(model):
        apply_group_offloading(module, onload_device=model.device, offload_type="leaf_level")


class OnDemand:
    """Moves one of ``modules`` at a time to ``device``, the one before back to the CPU.

    ``on`` is the module on the device now (None during the denoising loop).
    """

    def __init__(self, modules: list[torch.nn.Module], device: torch.device):
        self.modules, self.device, self.on = modules, device, None

    def move(self, module: torch.nn.Module | None) -> None:
        if module is self.on:
            return
        if self.on is not None:
            self.on.to("cpu")
        if module is not None:
            module.to(self.device)
        self.on = module


def offload_idle(model) -> OnDemand:
    """The text encoders and the VAE wait on the CPU; each moves to the device when it runs (its
    ``forward``, or the VAE's ``encode``/``decode``, which call accelerate's hook too) and the one
    before goes back; the denoiser's forward sends the last one back, so the denoising loop has the
    device to itself. Returns the mover."""
    from accelerate.hooks import ModelHook, add_hook_to_module
    from accelerate.utils import send_to_device

    mover = OnDemand(_others(model), model.device)

    class Onload(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            mover.move(module)
            return send_to_device(args, mover.device), send_to_device(kwargs, mover.device)

    for module in mover.modules:
        add_hook_to_module(module, Onload())
    model.denoiser.register_forward_pre_hook(lambda module, args: mover.move(None))
    return mover


def keep_saved_tensors(denoiser: torch.nn.Module, wait_on: torch.device | None = None) -> None:
    """Forward hooks on ``denoiser``: in passes that record a graph, autograd saves the data each
    tensor holds then, not the tensor itself (whose data offloading or casting swaps afterwards).
    With ``wait_on``, saved tensors that need no gradient (the weights) wait there until the
    backward pass, so the weights of a whole forward pass are not held on the device."""
    entered = []

    def pack(x: torch.Tensor):
        if wait_on is not None and not x.requires_grad and x.device != wait_on:
            return x.device, x.detach().to(wait_on)
        return None, x.detach()

    def unpack(packed) -> torch.Tensor:
        device, x = packed
        return x if device is None else x.to(device)

    def before(module, args):
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, unpack) if torch.is_grad_enabled() else None
        if hooks is not None:
            hooks.__enter__()
        entered.append(hooks)

    def after(module, args, output):
        hooks = entered.pop() if entered else None
        if hooks is not None:
            hooks.__exit__(None, None, None)

    denoiser.register_forward_pre_hook(before)
    denoiser.register_forward_hook(after, always_call=True)
