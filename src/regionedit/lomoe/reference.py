"""LoMOE's reusable inversion and its reference pass (docs/lomoe.md, steps 1 and 2).

``invert`` runs once per image + caption + step count; the returned :class:`Inversion`
holds the latent trajectory, the per-step offsets that make the reconstruction exact and,
when asked, the reference cross-attention maps, and serves any number of edits (SAM's "set
the image once, query many times"). It saves to and loads from a single safetensors file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import InvalidInputError
from ..inversion import InversionOptions, ddim_invert
from ..models.interface import Model
from ..options import build
from ..progress import Report
from ..progress import steps as progress_steps
from .options import LoMOEOptions

log = logging.getLogger(__name__)


@dataclass
class Inversion:
    """What an edit needs from the input image.

    Attributes:
        latents: ``(T + 1, C, h, w)`` float32 trajectory ``z_0 … z_T`` (``z_0`` = encoded image).
        timesteps: ``(T,)`` edit timesteps, decreasing.
        offsets: ``(T, C, h, w)`` δ_i added after every DDIM step of the edit.
        attention: layer name -> ``(T, 2, heads, pixels, tokens)`` reference maps of the
            reconstruction pass (unconditional, conditional), shared by every branch; empty
            unless stored (edits recompute them step by step by default).
        prompt / negative_prompt: background caption and its negative.
        guidance_scale, temperature: settings the reference pass used.
        image_size: ``(H, W)`` of the input.
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    offsets: torch.Tensor
    attention: dict[str, torch.Tensor]
    prompt: str
    negative_prompt: str
    guidance_scale: float
    temperature: float
    image_size: tuple[int, int]
    model_name: str = ""
    options: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def to(self, device, attention=None) -> Inversion:
        """A copy with the trajectory on ``device`` and the reference maps on ``attention``
        (a device), or without them when ``attention`` is None."""
        maps = {} if attention is None else {k: v.to(attention) for k, v in self.attention.items()}
        return replace(self, latents=self.latents.to(device), timesteps=self.timesteps.to(device),
                       offsets=self.offsets.to(device), attention=maps)  # fmt: skip

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tensors = {"latents": self.latents, "timesteps": self.timesteps, "offsets": self.offsets}
        tensors.update({f"attention.{k}": v for k, v in self.attention.items()})
        meta = {
            k: json.dumps(v)
            for k, v in dict(
                prompt=self.prompt,
                negative_prompt=self.negative_prompt,
                guidance_scale=self.guidance_scale,
                temperature=self.temperature,
                image_size=list(self.image_size),
                model_name=self.model_name,
                options=self.options,
            ).items()
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, device=None) -> Inversion:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"inversion file not found: {path}")
        try:
            with safe_open(str(path), "pt") as fh:
                meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
            tensors = load_file(path, device=str(device or "cpu"))
            return cls(
                latents=tensors["latents"],
                timesteps=tensors["timesteps"],
                offsets=tensors["offsets"],
                attention={
                    k[len("attention.") :]: v for k, v in tensors.items() if k.startswith("attention.")
                },
                prompt=meta["prompt"],
                negative_prompt=meta["negative_prompt"],
                guidance_scale=meta["guidance_scale"],
                temperature=meta["temperature"],
                image_size=tuple(meta["image_size"]),
                model_name=meta.get("model_name", ""),
                options=meta.get("options", {}),
            )
        except (KeyError, OSError, ValueError, SafetensorError) as exc:
            raise InvalidInputError(f"{path} is not a regionedit inversion file: {exc}") from None


def captured_maps(store, dtype, device=None, halves: int = 2) -> dict:
    """The store's maps of one guided call on one latent as layer -> ``(halves, heads, pixels,
    tokens)`` (2 halves for a CFG pair, 1 where guidance is distilled); clears the store."""
    out = {}
    for name, probs in store.maps.items():
        heads = probs.shape[0] // halves
        out[name] = probs.reshape(halves, heads, *probs.shape[1:]).to(dtype).to(device or probs.device)
    store.clear()
    return out


@torch.no_grad()
def reference_pass(
    model: Model,
    latents: torch.Tensor,
    prompt: str,
    negative_prompt: str,
    guidance_scale: float,
    temperature: float,
    store_attention: bool = True,
    progress: bool | Report = True,
    attention_device=None,
):
    """Step 2: the background branch's reconstruction; returns (timesteps, offsets, attention maps).

    The maps (layer -> ``(T, 2, heads, pixels, tokens)`` in the model's dtype) are kept only with
    ``store_attention``, on ``attention_device`` (default: the model's)."""
    steps = latents.shape[0] - 1
    sched = model.scheduler(steps, latents.shape[-2:])
    negative, positive = model.encode_prompt([negative_prompt]), model.encode_prompt([prompt])
    z = latents[-1:]
    offsets, maps = [], {}
    with model.cross_attention(temperature) as store:
        # always the explicit-softmax path: the offsets then match an edit's recomputed maps bit for bit
        store.capture = True
        for i, t in enumerate(progress_steps(sched.timesteps, progress, "reference")):
            out = model.guided(z, t, negative, positive, guidance_scale)
            z_next = sched.step(out, t, z)
            target = latents[steps - 1 - i : steps - i]
            offsets.append(target - z_next)
            z = target  # z' + δ_i lands exactly on the trajectory
            step_maps = captured_maps(store, model.dtype, attention_device, model.guidance_batches)
            for name, probs in step_maps.items() if store_attention else ():
                maps.setdefault(name, []).append(probs)
    attention = {k: torch.stack(v) for k, v in maps.items()}
    return sched.timesteps.clone(), torch.cat(offsets), attention


def invert(
    model: Model,
    image,
    prompt: str,
    options: InversionOptions | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    temperature: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool | Report = True,
    store_attention: bool = False,
) -> Inversion:
    """Invert an image for editing.

    Args:
        model: from :func:`regionedit.load`.
        image: PIL image (or path) whose sides are multiples of ``model.vae_scale_factor``.
        prompt: the source caption (the background prompt of the edit).
        negative_prompt: background negative prompt; None uses the caption, as the official
            LoMOE usage does.
        options: steps and regulariser; None, and ``guidance_scale`` / ``temperature`` None, take
            the model's LoMOE settings (then the paper's), so that ``edit(model, invert(...))``
            with the model's settings needs no recomputation.
        guidance_scale, temperature: must match the edit's (the reference maps depend on them).
        generator: seeds the regulariser's rolls and a posterior sample; default seed 0.
        store_attention: keep the reference pass's cross-attention maps in the inversion (for
            edits with ``ExecutionOptions(reference_maps="device" | "cpu")``; by default edits
            recompute them, and the inversion stays small).
    """
    from ..io import load_image

    if isinstance(image, (str, Path)):
        image = load_image(image)
    model.check_image_size(image.height, image.width)
    if not isinstance(prompt, str):
        raise InvalidInputError("prompt must be a string (the source caption)")
    settings = build(LoMOEOptions, {}, model.settings.get("lomoe"))
    if options is None:
        options = InversionOptions(settings.num_inference_steps, regularize=settings.regularize_inversion)
    guidance_scale = settings.guidance_scale if guidance_scale is None else guidance_scale
    temperature = settings.temperature if temperature is None else temperature
    return invert_checked(model, image, prompt, options, negative_prompt, guidance_scale, temperature, generator,
                          progress, store_attention)  # fmt: skip


def invert_checked(model, image, prompt, options, negative_prompt, guidance_scale, temperature, generator,
                   progress, store_attention=False, attention_device=None) -> Inversion:  # fmt: skip
    """:func:`invert` of a checked PIL image (its size fits the model); arguments as there."""
    options = options or InversionOptions()
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    negative_prompt = prompt if negative_prompt is None else negative_prompt
    z0 = model.encode(model.image_to_tensor(image), generator=generator, sample=options.sample_posterior)
    latents = ddim_invert(model, z0, prompt, options, generator, progress)
    timesteps, offsets, attention = reference_pass(
        model,
        latents,
        prompt,
        negative_prompt,
        guidance_scale,
        temperature,
        store_attention,
        progress,
        attention_device,
    )
    return Inversion(
        latents=latents,
        timesteps=timesteps,
        offsets=offsets,
        attention=attention,
        prompt=prompt,
        negative_prompt=negative_prompt,
        guidance_scale=guidance_scale,
        temperature=temperature,
        image_size=(image.height, image.width),
        model_name=model.name,
        options=asdict(options),
    )
