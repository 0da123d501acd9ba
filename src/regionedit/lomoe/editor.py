"""The LoMOE edit loop (docs/lomoe.md, step 3): one multi-diffusion pass over all regions at once."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidInputError
from ..execution import ExecutionOptions, gradient_checkpointing
from ..inversion import InversionOptions
from ..models.interface import Model, to_pil
from ..options import build
from ..prepared import read_image
from ..progress import Report
from ..progress import steps as progress_steps
from ..regions import Region, active_weights
from .losses import background_loss, cross_attention_loss, fuse
from .options import LoMOEOptions
from .prepare import PreparedLoMOE, prepare_lomoe
from .reference import Inversion, captured_maps, invert_checked, reference_pass

log = logging.getLogger(__name__)

BOOTSTRAP_POOL = 20  # random constant-colour backgrounds, as in the official code


@dataclass
class EditResult:
    """What an edit returns.

    Attributes:
        image: the edited image.
        reconstruction: the VAE round trip of the input (what a null edit gives).
        latents: ``(1, C, h, w)`` final latent.
        masks: ``(N + 1, h, w)`` region weights actually fused (background first).
        mask_images: the same at image resolution, one PIL "L" image per region.
        losses: per step ``{"step", "timestep", "cross_attention", "background", "total"}``.
        timings: seconds and UNet call counts.
        options: the options used, as a dict.
        inversion: reusable for further edits of the same image.
    """

    image: Image.Image
    reconstruction: Image.Image
    latents: torch.Tensor
    masks: torch.Tensor
    mask_images: list[Image.Image]
    losses: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    inversion: Inversion | None = None


class _UNetCounter:
    def __init__(self):
        self.calls = 0
        self.latent_evals = 0
        self.backward_evals = 0
        self.batches = 2  # denoiser batches per branch: 2 for CFG, 1 where guidance is distilled


def _constant_colour_pool(model: Model, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Latents of ``BOOTSTRAP_POOL`` images of one random colour each (seeded)."""
    colours = torch.rand((BOOTSTRAP_POOL, 3, 1, 1), generator=generator) * 2 - 1
    images = colours.expand(-1, -1, *size).to(model.device)
    return torch.cat([model.encode(images[i : i + 10]) for i in range(0, BOOTSTRAP_POOL, 10)])


def _inversion_for(model: Model, edit: PreparedLoMOE, inversion: Inversion | None, progress) -> Inversion:
    """The edit's inversion: a new one of ``edit.image``, or the given one on the model's device,
    its reference pass redone when the guidance scale or temperature changed or when the edit
    holds the reference maps (``ExecutionOptions.reference_maps``) and the inversion has none."""
    options = edit.options
    hold = edit.execution.reference_maps != "recompute" and options.cross_attention_weight > 0
    where = torch.device("cpu") if edit.execution.reference_maps == "cpu" else model.device
    if inversion is None:
        inv_opts = InversionOptions(
            num_inference_steps=options.num_inference_steps, regularize=options.regularize_inversion
        )
        # The inversion draws from its own fixed-seed generator (invert's default), not the edit's:
        # it is then a function of image, caption and options alone, so an edit from a cached
        # Inversion equals an edit from the image with the same seed.
        return invert_checked(model, edit.image, edit.background_prompt, inv_opts, None, options.guidance_scale,
                              options.temperature, None, progress, hold, where)  # fmt: skip
    if inversion.num_steps != options.num_inference_steps:
        raise InvalidInputError(
            f"the inversion has {inversion.num_steps} steps but the edit asks for "
            f"{options.num_inference_steps}; invert again with the same num_inference_steps"
        )
    if tuple(inversion.image_size) != tuple(edit.image_size) or inversion.prompt != edit.background_prompt:
        raise InvalidInputError("the inversion was made for another image or caption; invert this one")
    inversion = inversion.to(model.device, attention=where if hold else None)
    same = inversion.guidance_scale == options.guidance_scale and inversion.temperature == options.temperature
    if same and (inversion.attention or not hold):
        return inversion
    log.info("recomputing the reference pass for guidance %s, temperature %s", options.guidance_scale,
             options.temperature)  # fmt: skip
    ts, offsets, attn = reference_pass(model, inversion.latents, inversion.prompt, inversion.negative_prompt,
                                       options.guidance_scale, options.temperature, hold, progress, where)  # fmt: skip
    return replace(inversion, timesteps=ts, offsets=offsets, attention=attn, guidance_scale=options.guidance_scale,
                   temperature=options.temperature)  # fmt: skip


def edit(
    model: Model,
    image,
    regions: list[Region],
    background_prompt: str | None = None,
    options: LoMOEOptions | None = None,
    generator: torch.Generator | None = None,
    progress: bool | Report = True,
    callback=None,
    original: Image.Image | None = None,
    execution: ExecutionOptions | None = None,
) -> EditResult:
    """Edit every region of an image in one multi-diffusion pass.

    Args:
        model: from :func:`regionedit.load`.
        image: a PIL image or path (inverted here), or an :class:`Inversion` to reuse.
        regions: any number of :class:`Region` (mask + prompt); none gives the reconstruction.
        background_prompt: the source caption; required unless ``image`` is an Inversion.
        options: :class:`LoMOEOptions`; None takes the model's recommended settings over the
            paper's defaults (``LoMOEOptions()`` is the paper's alone).
        generator: seeds every random draw (default seed 0): same inputs, same output.
        progress: progress bars (True), none (False), or ``report(stage, done, total)``
            (:mod:`regionedit.progress`) for the inversion, reference pass and edit.
        callback: called as ``callback(step, info)`` after every edit step.
        original: the input image for ``paste_back`` when ``image`` is an Inversion.
        execution: :class:`ExecutionOptions` (chunked gradients, checkpointing); same result.
    """
    options = options if options is not None else build(LoMOEOptions, {}, model.settings.get("lomoe"))
    inversion = image if isinstance(image, Inversion) else None
    prepared = prepare_lomoe(image, regions, background_prompt, options, model.vae_scale_factor,
                             patch_size=model.patch_size)  # fmt: skip
    prepared = replace(prepared, execution=execution or ExecutionOptions())
    if original is not None:
        if inversion is None:
            raise InvalidInputError("original= is for an Inversion input; an image input is its own original")
        pixels = read_image(original)
        if (pixels.height, pixels.width) != prepared.image_size:
            raise InvalidInputError(
                f"original is {pixels.width}x{pixels.height} but the inversion's image is "
                f"{prepared.image_size[1]}x{prepared.image_size[0]}"
            )
        prepared = replace(prepared, image=pixels)
    if options.paste_back and prepared.image is None:
        raise InvalidInputError("paste_back needs the original image: pass original=... with an Inversion")
    return run(
        model, prepared, inversion=inversion, generator=generator, progress=progress, callback=callback
    )


def run(
    model: Model,
    edit: PreparedLoMOE,
    inversion: Inversion | None = None,
    generator: torch.Generator | None = None,
    progress: bool | Report = True,
    callback=None,
) -> EditResult:
    """Run a prepared LoMOE edit (see :func:`regionedit.lomoe.prepare.prepare_lomoe`).

    ``inversion`` reuses an earlier inversion of the same image and caption; without it,
    ``edit.image`` is inverted here.
    """
    options, execution = edit.options, edit.execution
    if execution.max_memory is not None:  # the memory plan: a warning over budget, a chunk size that fits
        from ..plan.budget import fit_budget

        execution = fit_budget(model, edit, background_branch(asdict(options)))
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    start_time = time.perf_counter()
    inv = _inversion_for(model, edit, inversion, progress)
    invert_seconds = time.perf_counter() - start_time

    height, width = edit.image_size
    weights = edit.latent_masks.to(model.device)
    regions = list(edit.regions)
    counter = _UNetCounter()
    with gradient_checkpointing([model.denoiser], execution.gradient_checkpointing):
        latents, losses = _denoise(
            model, inv, regions, weights, options, execution, generator, counter, progress, callback
        )
    decoded = model.decode(torch.cat([latents, inv.latents[:1]]))
    edited, recon = to_pil(decoded)
    if options.paste_back:
        if edit.image is None:
            raise InvalidInputError("paste_back needs the original image (pass original=...)")
        masks = [r.mask for r in regions]
        union = np.any(np.stack(masks), axis=0)[..., None] if masks else np.zeros((height, width, 1), bool)
        edited = Image.fromarray(np.where(union, np.asarray(edited), np.asarray(edit.image)))
    up = F.interpolate(weights, size=(height, width), mode="nearest")[:, 0]
    mask_images = [Image.fromarray((m.cpu().numpy() * 255 + 0.5).astype(np.uint8), "L") for m in up[1:]]
    total = time.perf_counter() - start_time
    return EditResult(
        image=edited,
        reconstruction=recon,
        latents=latents,
        masks=weights[:, 0].cpu(),
        mask_images=mask_images,
        losses=losses,
        timings={
            "seconds": total,
            "invert_seconds": invert_seconds,
            "edit_seconds": total - invert_seconds,
            "unet_calls": counter.calls,
            "unet_latent_evals": counter.latent_evals,
            "unet_backward_latent_evals": counter.backward_evals,
        },
        options=asdict(options),
        inversion=inv,
    )


def _denoise(model, inv, regions, weights, options, execution, generator, counter, progress, callback):
    """Step 3 of docs/lomoe.md: views, bootstrapping, gradient step, re-evaluation, for every timestep."""
    steps = inv.num_steps
    sched = model.scheduler(steps, inv.latents.shape[-2:])
    n_branch = len(regions) + 1
    neg = [inv.negative_prompt] + [
        r.negative_prompt if r.negative_prompt is not None else options.region_negative_prompt
        for r in regions
    ]
    cond = [inv.prompt] + [r.prompt for r in regions]
    if model.guidance != "cfg" and any(r.negative_prompt for r in regions):
        log.warning("%s has distilled guidance: the regions' negative prompts have no effect", model.name)
    cond_neg, cond_pos = model.encode_prompt(neg), model.encode_prompt(cond)
    z_T = inv.latents[-1:]
    pool = None
    if options.bootstrap_steps > 0 and regions:
        h, w = inv.image_size
        pool = _constant_colour_pool(model, (h, w), generator)
    optimise = options.learning_rate > 0 and (
        options.cross_attention_weight > 0 or options.background_weight > 0
    )
    chunk = execution.chunk_size or n_branch
    chunks = [list(range(s, min(s + chunk, n_branch))) for s in range(0, n_branch, chunk)]
    k = counter.batches = model.guidance_batches

    def reference_maps(i, t, store) -> dict:
        """The reference pass's attention maps at step ``i``: held ones, or recomputed from the
        trajectory latent it denoised there (the same call, so the same numbers)."""
        if inv.attention:
            return {k: v[i].to(model.device) for k, v in inv.attention.items()}
        z_ref = inv.latents[steps - i : steps - i + 1]
        store.capture = True
        with torch.no_grad():
            model.guided(z_ref, t, cond_neg[[0]], cond_pos[[0]], options.guidance_scale)
        store.capture = False
        counter.calls += 1
        counter.latent_evals += k
        return captured_maps(store, model.dtype, halves=k)

    def step_branches(views, t, idx, offset):
        """The guided prediction of the branches ``idx``, the scheduler's step plus δ."""
        counter.calls += 1
        counter.latent_evals += k * len(idx)
        # rescale region branches only: the background branch must match the inversion's offsets
        region = torch.tensor([b > 0 for b in idx])
        out = model.guided(views, t, cond_neg[idx], cond_pos[idx], options.guidance_scale,
                           options.guidance_rescale, region)  # fmt: skip
        return sched.step(out, t, views) + offset

    z = z_T
    losses = []
    with model.cross_attention(options.temperature) as store:
        for i, t in enumerate(progress_steps(sched.timesteps, progress, "edit")):
            w_i = active_weights(weights, regions, i, steps)
            offset = inv.offsets[i : i + 1]
            ref_latent = inv.latents[steps - 1 - i : steps - i]
            views = z.expand(n_branch, -1, -1, -1).clone()
            if pool is not None and i < options.bootstrap_steps:
                pick = torch.randint(0, BOOTSTRAP_POOL, (n_branch - 1,), generator=generator)
                tt = t.reshape(1).expand(n_branch - 1)
                bg = sched.add_noise(pool[pick.to(pool.device)], z_T.expand(n_branch - 1, -1, -1, -1), tt)
                views[1:] = views[1:] * w_i[1:] + bg * (1 - w_i[1:])
            info = {"step": i, "timestep": int(t), "cross_attention": 0.0, "background": 0.0, "total": 0.0}
            background = _background_needed(options, w_i)
            if optimise:
                grad, parts = _gradient(
                    views,
                    t,
                    w_i,
                    offset,
                    ref_latent,
                    reference_maps(i, t, store) if options.cross_attention_weight > 0 else {},
                    step_branches,
                    chunks,
                    store,
                    options,
                    counter,
                    background,
                )
                views = views - options.learning_rate * grad
                info.update(parts)
            with torch.no_grad():
                if background:
                    z_next = torch.cat([step_branches(views[c], t, c, offset) for c in chunks])
                else:  # the blend below replaces the background branch's share by ref_latent
                    z_next = torch.cat(
                        [ref_latent, *(step_branches(views[c], t, c, offset) for c in _regions(chunks))]
                    )
                z = fuse(z_next, w_i)
                if options.background_blend:
                    z = w_i[:1] * ref_latent + (1 - w_i[:1]) * z
            losses.append(info)
            if callback is not None:
                callback(i, info)
    return z, losses


def _background_needed(options, weights: torch.Tensor) -> bool:
    """Whether the background branch can change this step's result: not when the background blend
    resets every cell it has a share in (hard masks), so its DDIM result, and L_b, which moves only
    that share, are left out."""
    m = weights[0]
    return not options.background_blend or bool(((m > 0) & (m < 1)).any())


def background_branch(options: dict) -> bool:
    """:func:`_background_needed` before the masks are known, from ``asdict`` of LoMOEOptions
    (or a saved copy): masks are hard exactly when they are not feathered."""
    return not (options.get("background_blend", False) and options.get("feather", 0.0) == 0)


def _regions(chunks: list[list[int]]) -> list[list[int]]:
    """The chunks without the background branch (index 0)."""
    return [c for c in ([b for b in chunk if b > 0] for chunk in chunks) if c]


def _gradient(
    views, t, weights, offset, ref_latent, ref_maps, step_branches, chunks, store, options, counter,
    background=True,
):  # fmt: skip
    """∂L/∂views for L = λ_xa·L_xa + λ_b·L_b, exactly, in chunks of branches.

    With several chunks, every branch's DDIM result is first computed without a graph;
    each chunk then recomputes its own with one, the others entering the fusion as constants.
    Every ``z'_b`` depends only on its own view, so the gradient is the same as in one batch.
    ``background=False`` (see :func:`_background_needed`) leaves the background branch out: its
    gradient is zero, L_b is not computed and L_xa sums over the region branches.
    """
    n = views.shape[0]
    use_xa = options.cross_attention_weight > 0
    if not background:
        chunks = _regions(chunks) if use_xa else []
    if background and len(chunks) > 1:
        with torch.no_grad():
            z_all = torch.cat([step_branches(views[c], t, c, offset) for c in chunks])
    grad, l_xa_total, l_b_val = torch.zeros_like(views), 0.0, 0.0
    for c in chunks:
        leaf = views[c].detach().requires_grad_(True)
        with torch.enable_grad():
            # capture stays on through the backward pass: a checkpointed UNet recomputes the
            # same attention path there
            store.capture = use_xa
            z_c = step_branches(leaf, t, c, offset)
            counter.backward_evals += counter.batches * len(c)
            loss = 0.0
            if background:
                z_full = z_c if len(chunks) == 1 else torch.cat([z_all[: c[0]], z_c, z_all[c[-1] + 1 :]])
                l_b = background_loss(fuse(z_full, weights), ref_latent, weights[:1])
                loss = options.background_weight * l_b
                l_b_val = float(l_b.detach())
            if use_xa:
                l_xa = cross_attention_loss(store.maps, ref_maps, num_total=n)
                loss = loss + options.cross_attention_weight * l_xa
                l_xa_total += float(l_xa.detach())
            (grad[c],) = torch.autograd.grad(loss, leaf)
            store.capture = False
            store.clear()
    parts = {
        "cross_attention": l_xa_total,
        "background": l_b_val,
        "total": options.cross_attention_weight * l_xa_total + options.background_weight * l_b_val,
    }
    return grad, parts
