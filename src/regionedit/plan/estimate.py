"""The expected peak accelerator memory of a LoMOE edit, before the run.

An edit passes through phases, each holding the weights it needs and its own activations:

- the VAE encodes the input (and, with bootstrapping, ten constant-colour images at full size);
- the inversion and the reference pass run the denoiser without gradients on ``k`` latents
  (``k`` = 2 for CFG, 1 where guidance is distilled);
- every step takes the gradient of LoMOE's losses through the denoiser, ``chunk · k`` latents at a
  time, holding the step's reference maps, then re-runs the branches without gradients;
- the VAE decodes the result and the reconstruction.

Weights on the device per phase follow :mod:`regionedit.models.memory`: ``none`` keeps every network
there; ``model`` keeps the denoiser and brings the text encoders and the VAE while they run;
``group`` brings one block of the denoiser (one layer of the others) at a time, and the weights a
backward pass needs wait on the CPU. Under float8 storage alone (layerwise casting), the backward pass
keeps the compute-dtype copies of the weights its forward used: the gradient step holds the denoiser
twice (measured on CPU: tests/test_plan.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import coefficients as coef
from .geometry import geometry
from .shape import ModelShape

OFFLOADS = ("none", "model", "group")
DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp8": 1,
               "float8_e4m3fn": 1}  # fmt: skip
REFERENCE_MAPS = ("recompute", "device", "cpu")
POOL_BATCH = 10  # the editor encodes its bootstrap colour images ten at a time (lomoe/editor.py)


@dataclass(frozen=True)
class MemoryPlan:
    """Expected peak accelerator memory of a LoMOE edit, in bytes.

    Attributes:
        weights: component -> bytes stored (denoiser, text encoders, VAE), whatever is on the device.
        weights_on_device: the weights held when the peak is reached.
        forward: activations of one denoiser forward without gradients over all branches at once.
        backward: the gradient step's activations and its backward pass at ``chunk_size`` branches,
            captured attention maps included; ``maps``: those maps' share of it.
        reference_maps: the reference maps on the device (one step's, or every step's when held).
        vae_encode / vae_decode: the VAE's activations encoding (ten bootstrap colours at once, else
            the input) and decoding (the result and the reconstruction).
        peak: the largest total over the phases; ``phase`` names it.
        chunk_size: branches per gradient chunk (``ExecutionOptions.chunk_size``); ``branches``: N + 1
            (N where the background branch is left out).
        budget / fits: the budget asked for and whether the peak stays under it; ``advice`` says
            what would fit when nothing does.
    """

    model: str
    size: tuple[int, int]
    regions: int
    branches: int
    chunk_size: int
    dtype: str
    storage: str
    offload: str
    weights: dict[str, int]
    weights_on_device: int
    forward: int
    backward: int
    maps: int
    reference_maps: int
    vae_encode: int
    vae_decode: int
    peak: int
    phase: str
    budget: int | None = None
    fits: bool | None = None
    advice: str = ""
    phases: dict[str, int] = field(default_factory=dict)


def plan_memory(shape: ModelShape, height: int, width: int, regions: int, dtype: str = "bf16", storage=None,
                offload: str = "none", chunk_size: int | None = None, max_memory: int | None = None,
                steps: int = 50, reference_maps: str = "recompute", bootstrap: bool = True,
                background: bool = True) -> MemoryPlan:  # fmt: skip
    """The memory plan of a LoMOE edit of ``regions`` regions at ``height`` × ``width``.

    Args:
        shape: the model's sizes (:mod:`regionedit.plan.shape`).
        dtype: the compute dtype; ``storage``: the denoiser weights' storage dtype (``"fp8"``: layerwise
            casting), the compute dtype when None.
        offload: ``"none"``, ``"model"`` or ``"group"`` (see the module docstring).
        chunk_size: regions per gradient chunk; None: all branches at once, or with ``max_memory`` the
            largest chunk that fits.
        max_memory: a budget in bytes.
        steps / reference_maps: as ``LoMOEOptions.num_inference_steps`` / ``ExecutionOptions.reference_maps``.
        bootstrap: the first steps see constant-colour backgrounds (the VAE encodes ten of them).
        background: the background branch is computed (not when the blend makes it redundant).
    """
    check(shape, dtype, storage, offload, reference_maps)
    branches = regions + 1 if background or regions == 0 else regions

    def at(chunk: int) -> MemoryPlan:
        return _plan(shape, height, width, regions, branches, chunk, dtype, storage, offload, steps,
                     reference_maps, bootstrap and regions > 0)  # fmt: skip

    if chunk_size is None and max_memory is not None:
        for chunk in range(branches, 0, -1):
            trial = at(chunk)
            if trial.peak <= max_memory or chunk == 1:
                break
    else:
        trial = at(min(chunk_size or branches, branches))
    if max_memory is None:
        return trial
    fits = trial.peak <= max_memory
    advice = "" if fits else _advice(shape, height, width, regions, dtype, storage, offload, max_memory, steps,
                                     reference_maps, bootstrap, background)  # fmt: skip
    return replace(trial, budget=max_memory, fits=fits, advice=advice)


def check(shape, dtype, storage, offload, reference_maps) -> None:
    from ..errors import InvalidOptionError

    for what, value, allowed in (("dtype", dtype, DTYPE_BYTES), ("storage dtype", storage or dtype, DTYPE_BYTES),
                                 ("offload", offload, OFFLOADS), ("reference_maps", reference_maps, REFERENCE_MAPS)):  # fmt: skip
        if value not in allowed:
            raise InvalidOptionError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")
    if shape.family not in coef.BACKWARD or shape.vae_levels not in coef.VAE_ENCODE:
        raise InvalidOptionError(
            f"no memory coefficients for the {shape.family!r} family with a {shape.vae_levels[1]}-level "
            f"{shape.vae_class}; docs/bench/plan_calibration.py fits them"
        )


def _plan(shape: ModelShape, height, width, regions, branches, chunk, dtype, storage, offload, steps,
          reference_maps, bootstrap) -> MemoryPlan:  # fmt: skip
    e = DTYPE_BYTES[dtype]
    s = DTYPE_BYTES[storage or dtype]
    ev = 4 if shape.vae_upcast and dtype in ("fp16", "float16") else e
    weights = {"denoiser": shape.parameters["denoiser"] * s, "vae": shape.parameters["vae"] * ev}
    weights.update({k: shape.parameters[k] * e for k in shape.text_encoders})

    f = shape.size_factor  # a UNet's tokens are its latent cells
    geo = geometry(shape.family, shape.denoiser_config, (height // f, width // f), shape.text_tokens)
    k = shape.guidance_batches
    maps_image = coef.MAP_COPIES[shape.family] * geo.map_values() * 4  # float32 copies of the captured maps
    per_image = sum(coef.BACKWARD[shape.family][kind] * tw for kind, tw in geo.token_widths().items()) * e
    per_image = int(per_image + maps_image)
    forward_image = int(coef.FORWARD[shape.family] * geo.largest() * e)
    ref_step = k * geo.map_values() * e
    ref = steps * ref_step if reference_maps == "device" else ref_step
    pixels = height * width * shape.vae_channels * ev
    encode = int(coef.VAE_ENCODE[shape.vae_levels] * pixels * (POOL_BATCH if bootstrap else 1))
    decode = int(coef.VAE_DECODE[shape.vae_levels] * pixels * 2)

    den, block = shape.parameters["denoiser"], shape.largest_blocks["denoiser"]
    upcast = block * e if s != e else 0  # one layer's compute-dtype copy under layerwise casting
    if offload == "group":  # one block on the device; the weights saved for backward wait on the CPU
        den_forward = den_grad = block * s + upcast
    else:  # layerwise casting: the backward pass keeps the compute-dtype copies beside the stored weights
        den_forward, den_grad = den * s + upcast, den * s + (den * e if s != e else 0)
    texts = sum(weights[k] for k in shape.text_encoders)
    if offload == "group":
        vae_held = shape.largest_blocks["vae"] * ev
        text_held = max((shape.largest_blocks[k] * e for k in shape.text_encoders), default=0)
    else:
        vae_held, text_held = weights["vae"], texts

    def held(active: str, amount: int) -> int:
        """Weights on the device while ``active`` runs: all of them without offloading; the denoiser
        besides under model offloading (it stays on the device)."""
        if offload == "none":
            return amount + sum(weights.values()) - {"denoiser": weights["denoiser"], "text": texts,
                                                      "vae": weights["vae"]}[active]  # fmt: skip
        return amount + (den_forward if offload == "model" and active != "denoiser" else 0)

    held_ref = ref if reference_maps == "device" else 0  # held maps outlive the steps
    phases = {  # phase -> (weights, activations)
        "text encoding": (held("text", text_held), 0),
        "VAE encoding": (held("vae", vae_held), encode),
        "inversion": (held("denoiser", den_forward), ref + k * forward_image),
        "gradient step": (held("denoiser", den_grad), ref + chunk * k * per_image),
        "branch step": (held("denoiser", den_forward), ref + chunk * k * forward_image),
        "VAE decoding": (held("vae", vae_held), held_ref + decode),
    }
    totals = {p: int(w + a) for p, (w, a) in phases.items()}
    phase = max(totals, key=totals.get)
    return MemoryPlan(
        model=shape.name, size=(height, width), regions=regions, branches=branches, chunk_size=chunk, dtype=dtype,
        storage=storage or dtype, offload=offload, weights=weights, weights_on_device=int(phases[phase][0]),
        forward=branches * k * forward_image, backward=chunk * k * per_image, maps=int(chunk * k * maps_image),
        reference_maps=int(ref),
        vae_encode=encode, vae_decode=decode, peak=totals[phase], phase=phase, phases=totals,
    )  # fmt: skip


def _advice(shape, height, width, regions, dtype, storage, offload, budget, steps, reference_maps, bootstrap,
            background) -> str:  # fmt: skip
    """What fits at chunk 1 instead, in words (the first of the alternatives that fits)."""
    tries = [dict(offload="model"), dict(offload="group"), dict(offload="group", storage="float8_e4m3fn")]
    base = dict(dtype=dtype, storage=storage, offload=offload, steps=steps, reference_maps=reference_maps,
                bootstrap=bootstrap, background=background)  # fmt: skip
    for change in tries:
        settings = {**base, **change}
        if settings == base:
            continue
        trial = plan_memory(shape, height, width, regions, chunk_size=1, **settings)
        if trial.peak <= budget:
            words = ", ".join(f"{k}={v}" for k, v in change.items())
            return f"does not fit even at chunk 1; fits with {words} at chunk 1 ({gib(trial.peak)})"
    smallest = plan_memory(shape, height, width, regions, chunk_size=1, **{**base, "offload": "group"})
    return f"does not fit even at chunk 1; needs {gib(smallest.peak)} with group offloading"


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
