"""Optimisation-based multi-modal editing (arXiv 2311.16882; docs/multimodal.md).

Steps (docs/multimodal.md): DDIM inversion → a guidance image per region (random-noise encoding,
drawn inside the region's mask while the rest follows the inverted trajectory) → mask (the regions'
or estimated) → main pass optimising z_t inside the masks against λ·L_pres + (1−λ)·L_guid for the
first t_u steps, then tied to the input's trajectory with weight λ; outside the masks the pass
follows the inversion and the output there is the VAE round trip. Text reaches the denoiser and
every ControlNet; layout conditions enter only through the ControlNet residuals.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidInputError
from ..execution import ExecutionOptions, gradient_checkpointing
from ..inversion import InversionOptions, ddim_invert
from ..models.interface import Model, to_pil
from ..options import build
from ..progress import Report
from ..progress import bar as progress_bar
from ..regions import Region
from .conditions import Condition, image_to_control_tensor, layout_box
from .guidance import (
    ControlStack,
    Counter,
    Denoiser,
    Fused,
    Targets,
    guidance_start_latent,
    join,
    optimised_pass,
    region_weights,
    start_index,
)
from .mask import diffedit_mask, difference_mask, estimate_mask, mask_to_image, to_token_grid
from .options import MultimodalOptions
from .prepare import PreparedMultimodal, prepare_multimodal

log = logging.getLogger(__name__)


@dataclass
class GuidancePass:
    """The guidance pass of an edit (step 2). It does not depend on λ, so edits that differ only
    in the main pass's options can share it (a λ sweep computes it once).

    Attributes:
        latents: ``(1, C, h, w)`` z^g, the guidance image's latent (each region's inside its mask).
        trajectory: step -> latent of the guidance trajectory (the L_guid targets).
        losses: the pass's per-step losses.
        seconds: its wall time when computed.
        unet_evals / unet_backward_evals: its UNet latent evaluations (all; back-propagated).
        key: digest of everything it depends on; an edit refuses a pass with another key.
        generator_state: the generator after the pass; an edit reusing the pass resumes from
            it, so its later draws are those of an edit that computed the pass itself.
    """

    latents: torch.Tensor
    trajectory: dict
    losses: list
    seconds: float
    unet_evals: int
    unet_backward_evals: int
    key: str
    generator_state: torch.Tensor


# Options the guidance pass never reads (main pass only): one guidance pass serves every value.
MAIN_PASS_ONLY = dict(preservation_weight=0.0, main_pass_control_scale=1.0, main_pass_prompt="target")


def _main_pass_controls(controls: ControlStack | None, options: MultimodalOptions) -> ControlStack | None:
    """The conditions of the main pass: all, none, or all at ``main_pass_control_scale``."""
    factor = options.main_pass_control_scale
    if controls is None or factor == 1.0:
        return controls
    if factor == 0.0:
        return None
    return ControlStack(
        controls.nets, controls.inputs, [s * factor for s in controls.scales], controls.windows
    )


def _guidance_key(z0, edit, options, controls, gen):
    h = hashlib.sha256()
    neutral = replace(options, **MAIN_PASS_ONLY)
    regions = [(r.prompt, r.negative_prompt) for r in edit.regions]
    h.update(repr((regions, edit.background_prompt, asdict(neutral))).encode())
    h.update(repr([(c.kind, c.scale, c.start, c.end, c.region) for c in edit.conditions]).encode())
    h.update(repr([[id(net) for net in s.nets] if s else [] for s in controls]).encode())  # same objects
    tensors = [z0, gen.get_state()] + ([] if edit.latent_masks is None else [edit.latent_masks])
    tensors += [x for s in controls if s for x in s.inputs]
    for t in tensors:
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass
class MultimodalResult:
    """What :func:`edit` returns.

    Attributes:
        image: the edited image.
        guidance_image: x^g, the guidance pass's output (step 2).
        reconstruction: the VAE round trip of the input (the best a null edit can give).
        mask: bool ``(h, w)`` latent-grid mask used (the regions' union), True = may change;
            outside it the image is the VAE round trip.
        mask_image: the same at image resolution ("L", white = may change).
        mask_estimated: True when no mask was given and ``mask`` is the step-3 estimate.
        mask_parts: the estimate's parts ("text", "diff", "layout"), bool ``(h, w)`` each.
        control_images: the RGB control images given to the ControlNets, in order.
        latents / guidance_latents: ``(1, C, h, w)`` float32 final latents.
        losses / guidance_losses: per step ``{"stage", "step", "timestep"}`` plus, on
            optimised steps, ``loss_before`` (first inner step), ``loss_after``, ``pres``, ``guid``.
        timings: seconds per stage and UNet latent evaluations.
        options: the options used, as a dict.
        inversion: ``(N + 1, C, h, w)`` trajectory z_0..z_T; pass it back to edit again.
        guidance: the :class:`GuidancePass`; pass it back to edit again with another λ.
    """

    image: Image.Image
    guidance_image: Image.Image
    reconstruction: Image.Image
    mask: torch.Tensor
    mask_image: Image.Image
    mask_estimated: bool
    mask_parts: dict = field(default_factory=dict)
    control_images: list = field(default_factory=list)
    latents: torch.Tensor | None = None
    guidance_latents: torch.Tensor | None = None
    losses: list = field(default_factory=list)
    guidance_losses: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    inversion: torch.Tensor | None = None
    guidance: GuidancePass | None = None


def invert_image(
    model: Model,
    image: Image.Image,
    source_prompt: str = "",
    num_inference_steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool | Report = False,
) -> torch.Tensor:
    """Step 1: DDIM inversion with the source prompt, CFG 1, no ControlNet, no regulariser.

    Returns the trajectory ``(N + 1, C, h, w)``; one serves every edit of the same image and
    source prompt (pass it as ``inversion=``). The steps default to the model's multimodal setting.
    """
    if num_inference_steps is None:
        num_inference_steps = build(
            MultimodalOptions, {}, model.settings.get("multimodal")
        ).num_inference_steps
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    z0 = model.encode(model.image_to_tensor(image))
    opts = InversionOptions(num_inference_steps=num_inference_steps, regularize=False)
    return ddim_invert(model, z0, source_prompt, opts, generator, progress)


def _as_nets(controlnets, conditions: list[Condition]) -> list:
    """Match ControlNets to conditions: a list in the same order, a dict by kind, or a Multi."""
    if not conditions:
        return []
    if controlnets is None:
        raise InvalidInputError(
            "layout conditions need ControlNets: pass controlnets=[...] (one per condition)"
        )
    if isinstance(controlnets, dict):
        missing = [c.kind for c in conditions if c.kind not in controlnets]
        if missing:
            raise InvalidInputError(
                f"no ControlNet for condition kind(s) {missing}; have {sorted(controlnets)}"
            )
        return [controlnets[c.kind] for c in conditions]
    nets = list(getattr(controlnets, "nets", None) or (
        controlnets if isinstance(controlnets, (list, tuple)) else [controlnets]
    ))  # fmt: skip
    if len(nets) != len(conditions):
        raise InvalidInputError(
            f"got {len(nets)} ControlNet(s) for {len(conditions)} condition(s); give one net per condition"
        )
    return nets


def _guidance_pass(denoisers, sched, z0, inversion, inv_traj, masks, options, layout, generator, bar, callback,
                   key) -> GuidancePass:  # fmt: skip
    """Step 2: from a seeded random-noise start, each region's instruction.

    With masks, region k's guidance is drawn inside its mask while the rest follows the inversion
    at every step (blended diffusion), so it lands in the region and fits what is around it; the
    regions' guidance latents are joined by their masks. Without a mask (one region), the paper's
    pass: L_pres only (λ = 1) over the whole image.
    """
    t0, counter = time.perf_counter(), denoisers[0].counter
    before_f, before_b = counter.forward, counter.backward
    n = options.num_inference_steps
    latents, trajectories, losses = [], [], []
    for k, denoiser in enumerate(denoisers):
        i0, z_start, before = guidance_start_latent(sched, z0, options.strength_for(layout[k]), generator)
        if i0 >= n:  # nothing to denoise: the guidance image is the input itself
            latents.append(z0), trajectories.append(before)
            continue
        if masks is None:
            z, traj, part = optimised_pass(
                denoiser, sched, z_start, i0, options, 1.0, Targets(pres=z0, pres_traj=inv_traj),
                progress_bar=bar, callback=callback, stage="guidance",
            )  # fmt: skip
        else:
            m = masks[k].float()[None, None]
            z_start = m * z_start + (1 - m) * inversion[n - i0 : n - i0 + 1]
            z, traj, part = optimised_pass(
                denoiser, sched, z_start, i0, replace(options, optimize_steps=0), 1.0, Targets(pres=z0),
                outside=(m, inversion), progress_bar=bar, callback=callback, stage=f"guidance {k + 1}",
            )  # fmt: skip
        latents.append(z), trajectories.append({**before, **traj}), losses.extend(part)
    if len(latents) == 1:
        z_g, traj = latents[0], trajectories[0]
    else:
        w = region_weights(masks)
        z_g = join(w, latents)
        traj = {i: join(w, [t[i] for t in trajectories]) for i in range(n)}
    back = counter.backward - before_b
    evals = counter.forward - before_f + back
    return GuidancePass(z_g, traj, losses, time.perf_counter() - t0, evals, back, key, generator.get_state())


def edit(
    model: Model,
    image,
    prompt: str | None = None,
    source_prompt: str = "",
    mask=None,
    controlnets=None,
    conditions: list[Condition] | None = None,
    options: MultimodalOptions | None = None,
    generator: torch.Generator | None = None,
    negative_prompt: str = "",
    inversion: torch.Tensor | None = None,
    guidance: GuidancePass | None = None,
    progress: bool | Report = False,
    callback=None,
    execution: ExecutionOptions | None = None,
    regions: list[Region] | None = None,
) -> MultimodalResult:
    """Edit an image by inference-time optimisation with text and layout instructions.

    Args:
        model: from :func:`regionedit.load`.
        image: PIL image or path; sides must be multiples of ``model.vae_scale_factor``.
        prompt: the instruction of a single region (equal to ``source_prompt`` for layout-only
            edits); give ``regions`` instead for several.
        source_prompt: caption of the input, used by the inversion and the mask estimate.
        mask: the single region's image-size mask (path, PIL or array; white = may change); None
            estimates one (step 3), returned in the result for inspection.
        controlnets: ``ControlNetModel`` list in the order of ``conditions``, a dict by
            condition kind, or a ``MultiControlNetModel``. The nets are frozen and moved to the
            model's device and dtype.
        conditions: :class:`Condition` list (edge, scribble, pose, seg), each with its scale and
            the region it instructs (``region=k``; None: every region).
        options: :class:`MultimodalOptions`; None takes the model's recommended settings over
            the method's defaults (``MultimodalOptions()`` is the method's alone).
        generator: seeds the guidance noise and the DiffEdit draws (default seed 0).
        negative_prompt: the unconditional half of CFG of a single region (default "").
        inversion: a trajectory from :func:`invert_image` or an earlier result, to reuse.
        guidance: an earlier result's :class:`GuidancePass`, to reuse: the same image, prompts,
            masks, conditions, seed and options but for the main-pass ones (``MAIN_PASS_ONLY``:
            λ, ``main_pass_control_scale``, ``main_pass_prompt``; checked).
        callback: ``callback(step, info)`` after every denoising step of both passes.
        execution: :class:`ExecutionOptions` (gradient checkpointing); same result.
        regions: :class:`Region` list (mask, prompt, negative prompt each), in place of
            ``prompt``, ``mask`` and ``negative_prompt``: several objects in one call.
    """
    options = (
        options if options is not None else build(MultimodalOptions, {}, model.settings.get("multimodal"))
    )
    if regions is None:
        if prompt is None:
            raise InvalidInputError("give a prompt (one region) or regions=[Region(mask, prompt), ...]")
        regions = [Region(mask, prompt, negative_prompt)]
    elif prompt is not None or mask is not None or negative_prompt:
        raise InvalidInputError("give either regions or prompt/mask/negative_prompt, not both")
    prepared = prepare_multimodal(image, regions, source_prompt, conditions, options, model.vae_scale_factor,
                                  patch_size=model.patch_size)  # fmt: skip
    prepared = replace(prepared, execution=execution or ExecutionOptions())
    return run(model, prepared, controlnets, generator=generator, inversion=inversion, guidance=guidance,
               progress=progress, callback=callback)  # fmt: skip


def _control_stacks(model: Model, edit: PreparedMultimodal, controlnets) -> list[ControlStack | None]:
    """Per region, the nets of its conditions (checked, frozen, on the model's device and dtype)
    with their maps: the conditions for that region and those for every region."""
    conditions = list(edit.conditions)
    nets = _as_nets(controlnets, conditions)
    for i, net in enumerate(nets):
        model.check_controlnet(net, i)
        net.requires_grad_(False).eval()
        p = next(net.parameters())
        if p.device != model.device or p.dtype != model.dtype:
            net.to(model.device, model.dtype)
    inputs = [model.control_input(net, image_to_control_tensor(p, model.device, model.dtype))
              for net, p in zip(nets, edit.control_images, strict=True)]  # fmt: skip
    stacks = []
    for k in range(len(edit.regions)):
        mine = [i for i, c in enumerate(conditions) if c.region in (None, k)]
        stacks.append(None if not mine else ControlStack(
            [nets[i] for i in mine],
            [inputs[i] for i in mine],
            [edit.options.control_scale if conditions[i].scale is None else float(conditions[i].scale) for i in mine],
            [(conditions[i].start, conditions[i].end) for i in mine],
        ))  # fmt: skip
    return stacks


def _estimate_mask(model, edit, z0, z0_g, generator) -> tuple[torch.Tensor, dict]:
    """Step 3: the union of the text-difference, guidance-difference and layout masks, dilated."""
    options, (region,) = edit.options, edit.regions
    parts = {}
    if edit.background_prompt != region.prompt:
        n = options.num_inference_steps
        parts["text"] = diffedit_mask(model, z0, region.prompt, edit.background_prompt, n, options.mask_estimate,
                                      generator)  # fmt: skip
    parts["diff"] = difference_mask(z0_g, z0, options.mask_estimate)
    f = model.vae_scale_factor
    boxes = [layout_box(p, f) for c, p in zip(edit.conditions, edit.control_images, strict=True)
             if c.kind in ("pose", "scribble")]  # fmt: skip
    if boxes:
        parts["layout"] = torch.stack(boxes).any(0).to(model.device)
    return to_token_grid(estimate_mask(parts, options.mask_estimate.dilate), model.patch_size), parts


def _check_inversion(inversion, n: int, latent_hw) -> None:
    if inversion.ndim != 4 or tuple(inversion.shape[2:]) != latent_hw:
        raise InvalidInputError(
            f"inversion has shape {tuple(inversion.shape)}; expected ({n + 1}, C, {latent_hw[0]}, {latent_hw[1]})"
        )
    if inversion.shape[0] != n + 1:
        raise InvalidInputError(
            f"the inversion has {inversion.shape[0] - 1} steps but the edit asks for {n}; invert again"
        )


def _paste(edited: Image.Image, recon: Image.Image, mask_image: Image.Image) -> Image.Image:
    """The edit inside the mask (its image-size picture), the VAE round trip outside it."""
    inside = np.asarray(mask_image) > 0
    out = np.where(inside[..., None], np.asarray(edited), np.asarray(recon))
    return Image.fromarray(out.astype(np.uint8), "RGB")


def run(
    model: Model,
    edit: PreparedMultimodal,
    controlnets=None,
    generator: torch.Generator | None = None,
    inversion: torch.Tensor | None = None,
    guidance: GuidancePass | None = None,
    progress: bool | Report = False,
    callback=None,
) -> MultimodalResult:
    """Run a prepared multi-modal edit (see :func:`regionedit.multimodal.prepare.prepare_multimodal`).

    The other arguments are :func:`edit`'s.
    """
    options, execution, regions = edit.options, edit.execution, edit.regions
    source_prompt = edit.background_prompt
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    stacks = _control_stacks(model, edit, controlnets)
    f, n = model.vae_scale_factor, options.num_inference_steps
    image_hw = edit.image_size
    latent_hw = (image_hw[0] // f, image_hw[1] // f)
    masks = None if edit.latent_masks is None else edit.latent_masks.to(model.device)
    timings, start_time = {}, time.perf_counter()

    if inversion is None:
        z0 = model.encode(model.image_to_tensor(edit.image))
    else:
        _check_inversion(inversion, n, latent_hw)
        inversion = inversion.to(model.device, torch.float32)
        z0 = inversion[:1]
    # Checked before any network runs: a guidance pass of another edit costs nothing to refuse.
    key = _guidance_key(z0, edit, options, stacks, generator)
    if guidance is not None and guidance.key != key:
        raise InvalidInputError(
            "the given guidance pass was made for another image, prompt, mask, condition, seed "
            f"or option (only {', '.join(MAIN_PASS_ONLY)} may differ); run the edit without guidance="
        )
    if inversion is None:  # step 1: the source prompt, CFG 1, no ControlNet, no regulariser
        opts = InversionOptions(num_inference_steps=n, regularize=False)
        inversion = ddim_invert(model, z0, source_prompt, opts, generator, progress)
    timings["invert_seconds"] = time.perf_counter() - start_time

    if model.guidance != "cfg" and any(r.negative_prompt for r in regions):
        log.warning("%s has distilled guidance: the negative prompt has no effect", model.name)
    counter = Counter()
    denoisers = [
        Denoiser(
            model,
            model.encode_prompt([r.negative_prompt or "", r.prompt]),
            options.guidance_scale,
            stack,
            n,
            counter,
        )  # fmt: skip
        for r, stack in zip(regions, stacks, strict=True)
    ]
    sched = model.scheduler(n, z0.shape[-2:])
    nets_all = [model.denoiser, *{id(net): net for s in stacks if s for net in s.nets}.values()]
    layout = [s is not None for s in stacks]
    inv_traj = {i: inversion[n - i : n - i + 1] for i in range(n)}  # z^inv at τ_i (step i)

    with gradient_checkpointing(nets_all, execution.gradient_checkpointing):
        # step 2, the guidance image: seeded random-noise start per region, drawn inside its mask.
        t0 = time.perf_counter()
        guided_steps = sum(n - start_index(n, options.strength_for(has)) for has in layout)
        bar = progress_bar(progress, n + (guided_steps if guidance is None else 0), "multimodal")
        if guidance is None:
            guidance = _guidance_pass(denoisers, sched, z0, inversion, inv_traj, masks, options, layout, generator,
                                      bar, callback, key)  # fmt: skip
        else:
            generator.set_state(guidance.generator_state)
            timings["guidance_reused"] = True
        z0_g, guid_traj, g_losses = guidance.latents, guidance.trajectory, guidance.losses
        timings["guidance_seconds"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if masks is not None:
            m, parts = masks.any(0), {}
        else:
            m, parts = _estimate_mask(model, edit, z0, z0_g, generator)
            masks = m[None]
        timings["mask_seconds"] = time.perf_counter() - t0

        # step 4, the main pass from the full inversion: optimised inside the masks, the inversion outside.
        t0 = time.perf_counter()
        edit_w = m.float()[None, None].to(model.device)
        targets = Targets(pres=z0, guid=z0_g, pres_traj=inv_traj, guid_traj=guid_traj, weight=edit_w)
        main = _main_denoiser(
            model, denoisers, masks, source_prompt, regions[0].negative_prompt or "", options
        )
        z_out, _, losses = optimised_pass(
            main, sched, inversion[-1:], 0, options, options.preservation_weight, targets,
            outside=(edit_w, inversion), anchor=inversion, progress_bar=bar, callback=callback,
        )  # fmt: skip
        bar.close()
        timings["main_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    edited, guided, recon = to_pil(model.decode(torch.cat([z_out, z0_g, z0])))
    mask_image = mask_to_image(m, image_hw)
    edited = _paste(edited, recon, mask_image)
    timings["decode_seconds"] = time.perf_counter() - t0
    timings["seconds"] = time.perf_counter() - start_time
    timings["unet_forward_latent_evals"] = counter.forward
    timings["unet_backward_latent_evals"] = counter.backward
    return MultimodalResult(
        image=edited,
        guidance_image=guided,
        reconstruction=recon,
        mask=m.cpu(),
        mask_image=mask_image,
        mask_estimated=edit.latent_masks is None,
        mask_parts={k: v.cpu() for k, v in parts.items()},
        control_images=list(edit.control_images),
        latents=z_out,
        guidance_latents=z0_g,
        losses=losses,
        guidance_losses=g_losses,
        timings=timings,
        options=asdict(options),
        inversion=inversion,
        guidance=guidance,
    )


def _main_denoiser(model, denoisers, masks, source_prompt, negative_prompt, options) -> Fused:
    """The main pass's prediction: each region's prompt inside its mask (or the source caption
    everywhere), with its conditions at ``main_pass_control_scale``."""
    if options.main_pass_prompt == "source":
        cond = model.encode_prompt([negative_prompt, source_prompt])
        parts = [replace(denoisers[0], cond=cond)]
    else:
        parts = list(denoisers)
    parts = [replace(d, controls=_main_pass_controls(d.controls, options)) for d in parts]
    return Fused(parts, region_weights(masks[: len(parts)]))
