"""Editing methods compared by the benchmarks, all on the same loaded :class:`Model`.

Every method has the signature ``method(model, item, config, generator) -> MethodOutput``.
The baselines are short DDIM loops over the model's own components, so the comparison
measures the algorithms, not different models or schedulers.

- ``lomoe``: one multi-diffusion pass over all masks (the paper).
- ``iterative``: LoMOE on one mask at a time, each intermediate result inverted again (the
  paper's iterative baselines; N single-region passes, each with its own inversion).
- ``blended``: Blended Latent Diffusion (Avrahami et al. 2023): denoise from noise with the
  region prompt and, after every step, replace the outside of the mask by the source latent
  noised to the same level; one pass per mask, chained.
- ``diffedit``: DiffEdit-style (Couairon et al. 2022) with the given masks instead of
  inferred ones: DDIM-invert with the source caption, denoise with the target caption, and
  outside the union of masks keep the inverted latent of each step.
- ``sdedit``: SDEdit (Meng et al. 2022): noise the whole image to ``strength`` and denoise
  with the target caption; no mask (a global reference point).
- ``multimodal``: the optimisation editor (arXiv 2311.16882), one region per mask with its own
  prompt; on ShapesBench also the edge map of the target scene (for every region) through the
  mini model's edge ControlNet. ``multimodal@0.2`` runs it with λ = 0.2 (a λ sweep is a list of them).

A method name may carry option changes: ``multimodal[solver=closed_form]@0.6`` or
``lomoe[guidance_rescale=0;feather=1]``, so variants run in one benchmark on the same seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from .. import methods
from ..errors import InvalidInputError, InvalidOptionError
from ..execution import ExecutionOptions
from ..inversion import InversionOptions, ddim_invert
from ..lomoe.options import LoMOEOptions
from ..models.interface import Model, to_pil
from ..multimodal.options import MultimodalOptions
from ..regions import Region, latent_masks
from ..shapes.items import BenchItem

MULTIMODAL_CONTROLS = ("edge", "scribble", "none")  # the target scene's map drawn for the editor


@dataclass(frozen=True)
class MethodConfig:
    num_inference_steps: int = 50  # the baselines' steps (LoMOE's and the editor's are in their options)
    guidance_scale: float = 7.5  # the baselines' CFG
    strength_sdedit: float = 0.6  # fraction of the schedule re-noised; SDEdit's usual 0.5–0.75
    strength_diffedit: float = 0.8  # DiffEdit's default encode ratio
    strength_blended: float = 1.0  # Blended Latent Diffusion starts from pure noise
    negative_prompt: str = ""  # for the baselines; LoMOE keeps its own region negative prompt
    lomoe: LoMOEOptions = field(default_factory=LoMOEOptions)
    multimodal: MultimodalOptions = field(default_factory=MultimodalOptions)
    multimodal_control: str = "edge"  # the target scene's "edge" map or "scribble" where known; "none"
    controlnet: str | None = None  # ControlNet folder of that kind (needed unless "none")
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)

    def lomoe_options(self) -> LoMOEOptions:
        return replace(
            self.lomoe, num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale
        )

    def __post_init__(self):
        if self.multimodal_control not in MULTIMODAL_CONTROLS:
            raise ValueError(
                f"multimodal_control must be one of {MULTIMODAL_CONTROLS}, got {self.multimodal_control!r}"
            )

    def multimodal_options(self, lam: float | None = None) -> MultimodalOptions:
        """The editor's options, with λ = ``lam`` when given (a sweep's variant)."""
        return self.multimodal if lam is None else replace(self.multimodal, preservation_weight=lam)


@dataclass
class MethodOutput:
    image: np.ndarray  # uint8 (H, W, 3)
    unet_backward_evals: int = 0  # the UNet hook cannot see which forwards were back-propagated
    # work done once and reused (a λ sweep's guidance pass): seconds, UNet evals, backward evals;
    # the runner adds it back so every edit reports what it would cost alone
    reused: tuple[float, int, int] | None = None


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(image, dtype=np.uint8))


def run_lomoe(model: Model, item: BenchItem, cfg: MethodConfig, generator) -> MethodOutput:
    from ..lomoe.editor import edit

    regions = [Region(m, p) for m, p in zip(item.masks, item.prompts, strict=True)]
    res = edit(
        model,
        _pil(item.image),
        regions,
        background_prompt=item.source_caption,
        options=cfg.lomoe_options(),
        generator=generator,
        progress=False,
        execution=cfg.execution,
    )
    return MethodOutput(np.asarray(res.image), res.timings["unet_backward_latent_evals"])


def run_lomoe_words(model: Model, item: BenchItem, cfg: MethodConfig, generator) -> MethodOutput:
    """LoMOE with masks found from words: each object named by its phrase in the source caption,
    found with the model's attention (its best guess, whatever the score) and grown to its box plus a
    pixel, as the items' own masks are drawn. Objects that share a phrase are named left to right,
    the order :func:`~regionedit.masks.query.find_all` gives them; when the model finds fewer
    instances than names, each is found alone. The edit draws from ``generator`` exactly as
    ``lomoe`` does, so pairs differ by the masks."""
    from ..masks import MaskNotFoundError
    from ..masks.query import MaskQuery, find_all, mask_centre

    image = _pil(item.image)
    order = sorted(range(item.num_masks), key=lambda k: mask_centre(item.masks[k]))  # as a user reads them
    queries = [MaskQuery(words=f"a {item.sources[k]['colour']} {item.sources[k]['shape']}", grow="box+1")
               for k in order]  # fmt: skip
    try:
        found = find_all(queries, image, model, item.source_caption, min_score=0)
    except MaskNotFoundError:
        found = [find_all([q], image, model, item.source_caption, min_score=0)[0] for q in queries]
    masks = [None] * item.num_masks
    for k, f in zip(order, found, strict=True):
        masks[k] = f.mask
    return run_lomoe(model, dataclasses.replace(item, masks=masks), cfg, generator)


def run_iterative(model: Model, item: BenchItem, cfg: MethodConfig, generator) -> MethodOutput:
    from ..lomoe.editor import edit

    image, backward = _pil(item.image), 0
    for k, (mask, prompt) in enumerate(zip(item.masks, item.prompts, strict=True)):
        res = edit(
            model,
            image,
            [Region(mask, prompt)],
            background_prompt=item.captions[k],  # the caption of the intermediate image
            options=cfg.lomoe_options(),
            generator=generator,
            progress=False,
            execution=cfg.execution,
        )
        image, backward = res.image, backward + res.timings["unet_backward_latent_evals"]
    return MethodOutput(np.asarray(image), backward)


def _guided(model: Model, z, t, cond, scale: float):
    return model.guided(z, t, cond[:1], cond[1:], scale)


def _start_index(steps: int, strength: float) -> int:
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return steps - max(1, round(steps * strength))


def _encode(model: Model, image) -> torch.Tensor:
    return model.encode(model.image_to_tensor(_pil(image)))


def _decode(model: Model, z) -> np.ndarray:
    return np.asarray(to_pil(model.decode(z))[0])


def _noise_like(z: torch.Tensor, generator) -> torch.Tensor:
    # drawn on the CPU generator and moved: same numbers on CPU and GPU
    return torch.randn(z.shape, generator=generator, dtype=torch.float32).to(z.device)


@torch.no_grad()
def _blend_one(model, image, mask, prompt, cfg: MethodConfig, generator) -> np.ndarray:
    steps = cfg.num_inference_steps
    z_src = _encode(model, image)
    sched = model.scheduler(steps, z_src.shape[-2:])
    h, w = z_src.shape[-2:]
    m = latent_masks([np.asarray(mask, bool)], (h, w), device=model.device)[1:2]
    noise = _noise_like(z_src, generator)
    cond = model.encode_prompt([cfg.negative_prompt, prompt])
    ts = sched.timesteps
    i0 = _start_index(steps, cfg.strength_blended)
    z = sched.add_noise(z_src, noise, ts[i0 : i0 + 1])
    for i in range(i0, steps):
        eps = _guided(model, z, ts[i], cond, cfg.guidance_scale)
        z = sched.step(eps, ts[i], z)
        bg = sched.add_noise(z_src, noise, ts[i + 1 : i + 2]) if i + 1 < steps else z_src
        z = m * z + (1 - m) * bg
    return _decode(model, z)


def run_blended(model: Model, item: BenchItem, cfg: MethodConfig, generator) -> MethodOutput:
    image = item.image
    for mask, prompt in zip(item.masks, item.prompts, strict=True):
        image = _blend_one(model, image, mask, prompt, cfg, generator)
    return MethodOutput(image)


@torch.no_grad()
def run_diffedit(model: Model, item: BenchItem, cfg: MethodConfig, generator) -> MethodOutput:
    steps = cfg.num_inference_steps
    z_src = _encode(model, item.image)
    traj = ddim_invert(
        model,
        z_src,
        item.source_caption,
        InversionOptions(num_inference_steps=steps, regularize=False),
        generator,
        progress=False,
    )
    sched = model.scheduler(steps, z_src.shape[-2:])
    h, w = z_src.shape[-2:]
    union = np.logical_or.reduce([np.asarray(m, bool) for m in item.masks])
    m = latent_masks([union], (h, w), device=model.device)[1:2]
    cond = model.encode_prompt([cfg.negative_prompt, item.target_caption])
    i0 = _start_index(steps, cfg.strength_diffedit)
    z = traj[steps - i0 : steps - i0 + 1]  # the edit's step i starts from trajectory latent T - i
    for i in range(i0, steps):
        t = sched.timesteps[i]
        z = sched.step(_guided(model, z, t, cond, cfg.guidance_scale), t, z)
        z = m * z + (1 - m) * traj[steps - 1 - i : steps - i]
    return MethodOutput(_decode(model, z))


@torch.no_grad()
def run_sdedit(model: Model, item: BenchItem, cfg: MethodConfig, generator) -> MethodOutput:
    steps = cfg.num_inference_steps
    z_src = _encode(model, item.image)
    sched = model.scheduler(steps, z_src.shape[-2:])
    cond = model.encode_prompt([cfg.negative_prompt, item.target_caption])
    i0 = _start_index(steps, cfg.strength_sdedit)
    ts = sched.timesteps
    z = sched.add_noise(z_src, _noise_like(z_src, generator), ts[i0 : i0 + 1])
    for i in range(i0, steps):
        z = sched.step(_guided(model, z, ts[i], cond, cfg.guidance_scale), ts[i], z)
    return MethodOutput(_decode(model, z))


def _controlnet(model: Model, cfg: MethodConfig, kind: str):
    """The ControlNet of ``kind``, loaded once per model and folder."""
    from ..models.controlnet import cached_controlnet

    if cfg.controlnet is None:
        raise InvalidInputError(f"the {kind} condition needs a ControlNet: pass --controlnet DIR")
    return cached_controlnet(cfg.controlnet, model, kind)


_GUIDANCE: dict = {}


def run_multimodal(
    model: Model, item: BenchItem, cfg: MethodConfig, generator, lam: float | None = None
) -> MethodOutput:
    from ..multimodal.conditions import Condition, canny_edges, scribble_from_image
    from ..multimodal.editor import edit

    regions = [Region(np.asarray(m, bool), p) for m, p in zip(item.masks, item.prompts, strict=True)]
    conditions, nets = [], []
    kind = cfg.multimodal_control
    if kind != "none" and item.target_image is not None:
        draw = canny_edges if kind == "edge" else scribble_from_image
        conditions = [Condition(kind, draw(_pil(item.target_image)))]  # the whole target scene, every region
        nets = [_controlnet(model, cfg, kind)]
    cached = _GUIDANCE.get((item.id, id(model)))
    kwargs = dict(regions=regions, controlnets=nets, conditions=conditions, options=cfg.multimodal_options(lam),
                  execution=cfg.execution)  # fmt: skip
    state = generator.get_state()
    try:  # the editor checks that the pass fits (same item, seed, options but for λ)
        res = edit(model, _pil(item.image), source_prompt=item.source_caption, generator=generator,
                   guidance=cached, **kwargs)  # fmt: skip
    except InvalidInputError:
        if cached is None:
            raise
        generator.set_state(state)
        res = edit(model, _pil(item.image), source_prompt=item.source_caption, generator=generator, **kwargs)
    _GUIDANCE.clear()  # one item at a time: the variants of a sweep run back to back
    _GUIDANCE[(item.id, id(model))] = res.guidance
    g = res.guidance
    reused = (g.seconds, g.unet_evals, g.unet_backward_evals) if res.timings.get("guidance_reused") else None
    return MethodOutput(np.asarray(res.image), res.timings["unet_backward_latent_evals"], reused)


METHODS = {
    "lomoe": run_lomoe,
    "lomoe-words": run_lomoe_words,
    "iterative": run_iterative,
    "blended": run_blended,
    "diffedit": run_diffedit,
    "sdedit": run_sdedit,
    "multimodal": run_multimodal,
}
ONE_PASS, ITERATIVE = "lomoe", "iterative"  # the pair behind "one pass against one object at a time"
SWEEPABLE = {"multimodal": "lam"}  # "multimodal@0.4": the method with that λ
# "lomoe[guidance_rescale=0]", "multimodal[solver=closed_form]": the method with those options
# changed (values as JSON, else strings), so variants are compared in one run on the same seeds
VARIANT_FIELDS = {
    "lomoe": "lomoe",
    "lomoe-words": "lomoe",
    "iterative": "lomoe",
    "multimodal": "multimodal",
}  # -> MethodConfig field
EDITORS = {"lomoe": "lomoe", "multimodal": "multimodal"}  # MethodConfig field -> the editing method it holds
NAME = re.compile(r"(?P<base>[\w-]+)(?:\[(?P<changes>[^\]]*)\])?(?:@(?P<value>.*))?")


def register_method(name: str, fn) -> None:
    """Add a method with the common signature."""
    METHODS[name] = fn


def base_name(name: str) -> str:
    """``multimodal[solver=closed_form]@0.4`` -> ``multimodal``: variants of a method share its seeds."""
    return re.split(r"[\[@]", name, maxsplit=1)[0]


def _changes(name: str, text: str) -> dict:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{name}: write option changes as [name=value;name=value]")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


def _with_options(fn, field: str, changes: dict):
    """``fn`` run with ``cfg.<field>`` changed by ``changes`` (checked now, on the defaults)."""
    method = methods.get(EDITORS[field])
    try:  # names and types now; values against the model's settings when it runs
        methods.check_option_names(method.name, changes)
    except InvalidOptionError as exc:
        raise ValueError(str(exc)) from None

    def run(model, item, cfg, generator, **kw):
        opts = method.options(changes, dataclasses.asdict(getattr(cfg, field)))
        changed = {field: opts}
        if isinstance(
            opts, LoMOEOptions
        ):  # lomoe_options() takes steps and CFG from the config's shared fields
            changed.update(num_inference_steps=opts.num_inference_steps, guidance_scale=opts.guidance_scale)
        return fn(model, item, replace(cfg, **changed), generator, **kw)

    return run


def _resolve(name: str):
    m = NAME.fullmatch(name)
    if m is None or m["base"] not in METHODS:
        return None
    base, fn = m["base"], METHODS[m["base"]]
    if m["changes"] is not None:
        if base not in VARIANT_FIELDS:
            raise ValueError(f"{base} takes no [options]; only {sorted(VARIANT_FIELDS)} do")
        fn = _with_options(fn, VARIANT_FIELDS[base], _changes(name, m["changes"]))
    if m["value"] is None:
        return fn
    if base not in SWEEPABLE:
        raise ValueError(f"{base} takes no @value; only {sorted(SWEEPABLE)} do")
    try:
        v = float(m["value"])
    except ValueError:
        raise ValueError(f"{name}: the value after @ must be a number") from None
    if not 0 <= v <= 1:
        raise ValueError(f"{name}: λ must be in [0, 1]")
    return functools.partial(fn, **{SWEEPABLE[base]: v})


def get_methods(names) -> dict:
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    found = {n: _resolve(n) for n in names}
    unknown = [n for n, fn in found.items() if fn is None]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    return found
