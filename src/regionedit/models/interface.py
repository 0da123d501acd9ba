"""The model-family interface: everything an editor needs from a latent diffusion model.

Editors, the inversion, the bench's baselines and the mini-model tools never call a network
directly. They ask the model to

- encode prompts into a :class:`Conditioning` (embeddings plus the family's extra inputs),
- predict on a batch of latents at a timestep (``predict``), in the model's prediction type,
- give a stateless schedule for a number of steps (``scheduler``: its timesteps, ``step``,
  ``add_noise``, and the prediction's conversions ``to_epsilon`` and ``to_x0``) and its inverse,
- encode images to scaled latents and decode them back (the family's scaling and shift),
- capture its cross-attention layers (``cross_attention``),
- check, feed and apply ControlNets of its family (``check_controlnet``, ``control_input``,
  ``control_residuals``).

:class:`Model` holds what every family shares (images, VAE, sizes, settings); a family
subclasses it and fills in the rest (:class:`~regionedit.models.sd.StableDiffusion`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from ..errors import ImageSizeError, InvalidInputError

log = logging.getLogger(__name__)


@dataclass
class Conditioning:
    """Prompt conditioning of a batch: what the denoiser reads besides latents and timestep.

    Attributes:
        embeds: ``(B, tokens, width)`` text hidden states in the network's dtype.
        extra: per-item inputs a family adds (batch first), e.g. SDXL's pooled embedding.
        mask: ``(B, tokens)`` bool, true on real tokens, where prompts of one batch have different
            lengths (Qwen-Image, Z-Image); None where every token counts.
    """

    embeds: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def __getitem__(self, index) -> Conditioning:
        """Items ``index`` (an int list, a slice or a tensor) of the batch."""
        mask = None if self.mask is None else self.mask[index]
        return Conditioning(self.embeds[index], {k: v[index] for k, v in self.extra.items()}, mask)

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """The batches of ``items`` one after another; shorter token sequences are padded with zeros
        and masked."""
        longest = max(c.embeds.shape[1] for c in items)
        if all(c.mask is None and c.embeds.shape[1] == longest for c in items):
            mask = None
        else:
            mask = torch.cat([_padded(c.token_mask(), longest) for c in items])
        return Conditioning(
            torch.cat([_padded(c.embeds, longest) for c in items]),
            {k: torch.cat([c.extra[k] for c in items]) for k in items[0].extra},
            mask,
        )

    def token_mask(self) -> torch.Tensor:
        """``(B, tokens)`` bool: the mask, or all true."""
        if self.mask is not None:
            return self.mask
        return torch.ones(self.embeds.shape[:2], dtype=torch.bool, device=self.embeds.device)

    def repeat_interleave(self, n: int) -> Conditioning:
        """Each item ``n`` times in a row."""
        return Conditioning(
            self.embeds.repeat_interleave(n, dim=0),
            {k: v.repeat_interleave(n, dim=0) for k, v in self.extra.items()},
            None if self.mask is None else self.mask.repeat_interleave(n, dim=0),
        )


def _padded(x: torch.Tensor, length: int) -> torch.Tensor:
    """``x`` (batch, tokens, ...) with zeros (false) appended to ``length`` tokens."""
    extra = length - x.shape[1]
    if extra == 0:
        return x
    return torch.cat([x, x.new_zeros((x.shape[0], extra, *x.shape[2:]))], dim=1)


@dataclass(eq=False, kw_only=True)
class Model:
    """Frozen components of a latent diffusion model behind the family interface.

    Latents are kept in float32; networks run in ``dtype`` (float32 on CPU by default).
    ``settings`` holds the edit settings the model recommends per method (``"lomoe"``,
    ``"multimodal"``, ``"controlnets"``), read from ``regionedit_settings.json`` in its folder.
    """

    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    name: str = "model"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    settings: dict = field(default_factory=dict)
    _prompt_cache: dict = field(default_factory=dict, repr=False)

    # --- what a family declares (see :mod:`regionedit.models.families`) -------------------------
    family = "base"  # the registry's key, also ``ModelInfo.family``
    display_name = ""  # in messages: "SDXL (base)"
    pipeline = ""  # the diffusers pipeline class that loads this family
    pipeline_classes: ClassVar[
        tuple[str, ...]
    ] = ()  # if given, a folder's model_index ``_class_name`` is one of these
    denoiser_name = ""  # the denoiser's component name ("unet", "transformer") ...
    denoiser_class = ""  # ... and its diffusers class, by which a folder is recognised
    modules: ClassVar[tuple[str, ...]] = ()  # components moved to the model's device and dtype
    objects: ClassVar[tuple[str, ...]] = ()  # components taken as they are (tokenizers)
    optional_components: ClassVar[tuple[str, ...]] = ()  # components a folder may leave out (SD3's T5)
    pipeline_kwargs: ClassVar[dict] = {}  # extra keywords of the pipeline's from_pretrained
    config_fields: ClassVar[tuple[str, ...]] = ()  # pipeline config entries the family reads
    single_file_prefixes: ClassVar[tuple[str, ...]] = ()  # tensor-name prefixes of its original single files
    single_file_holds = "pipeline"  # "denoiser": its single files hold the denoiser alone (FLUX)

    @classmethod
    def recognises(cls, classes: dict) -> bool:
        """Do components of these classes (name -> class name, None where absent; ``_class_name``: a
        folder's pipeline class) make this family?"""
        if cls.pipeline_classes and classes.get("_class_name") not in cls.pipeline_classes:
            return False
        needed = set(cls.modules) - set(cls.optional_components)
        return classes.get(cls.denoiser_name) == cls.denoiser_class and all(classes.get(k) for k in needed)

    @classmethod
    def load_kwargs(cls, folder) -> dict:
        """Keywords that load ``folder`` (a path, or None for a hub id) with the pipeline: None for
        each optional component the folder leaves out, as diffusers requires."""
        if folder is None:
            return {}
        return {k: None for k in cls.optional_components if not (folder / k).is_dir()}

    def __post_init__(self):
        for m in (self.vae, self.denoiser, self.text_encoder):
            m.requires_grad_(False).eval()

    @property
    def denoiser(self) -> torch.nn.Module:
        """The noise-prediction network (a UNet or a transformer)."""
        raise NotImplementedError

    # --- sizes and images -----------------------------------------------------------------

    @property
    def vae_dtype(self) -> torch.dtype:
        """The VAE's dtype (a family may keep it in float32 when the rest runs in half precision)."""
        return self.dtype

    @classmethod
    def vae_factor(cls, vae_config: dict) -> int:
        """Pixels per latent cell along each side, from the VAE's config alone."""
        return 2 ** (len(vae_config.get("block_out_channels", [0] * 4)) - 1)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for Stable Diffusion, 4 for mini)."""
        return self.vae_factor(dict(self.vae.config))

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def native_size(self) -> int:
        """The image side the model was trained at (the VAE's sample size)."""
        return int(self.vae.config.sample_size)

    patch_size = 1  # latent cells per token side (2 where a transformer packs 2x2 patches)

    @property
    def size_factor(self) -> int:
        """Pixels per token side: image sides must be multiples of it, masks live on its grid."""
        return self.vae_scale_factor * self.patch_size

    def check_image_size(self, height: int, width: int) -> None:
        check_image_size(height, width, self.size_factor)

    def image_to_tensor(self, image: Image.Image) -> torch.Tensor:
        """PIL RGB -> float32 ``(1, 3, H, W)`` in [-1, 1] on ``device``."""
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(arr).permute(2, 0, 1)[None].to(self.device)

    # --- VAE ------------------------------------------------------------------------------

    def _vae_shift(self) -> float:
        return getattr(self.vae.config, "shift_factor", None) or 0.0

    @torch.no_grad()
    def encode(
        self, image: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False
    ) -> torch.Tensor:
        """Image ``(B, 3, H, W)`` in [-1, 1] -> scaled float32 latents (posterior mean by default)."""
        dist = self.vae.encode(image.to(self.vae_dtype)).latent_dist
        if sample:
            noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32)
            z = dist.mean.float() + dist.std.float() * noise.to(dist.mean.device)
        else:
            z = dist.mean.float()
        return self.to_latents(z)

    def to_latents(self, z: torch.Tensor) -> torch.Tensor:
        """The VAE's raw latents -> the denoiser's (shifted and scaled; a family may patchify or
        normalise per channel)."""
        return (z - self._vae_shift()) * self.vae.config.scaling_factor

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_latents`."""
        return latents / self.vae.config.scaling_factor + self._vae_shift()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, check_finite: bool = True) -> torch.Tensor:
        """Scaled latents -> float32 images ``(B, 3, H, W)`` in [0, 1].

        A half-precision VAE that overflows (NaN/inf) is retried in float32 once.
        """
        z = self.from_latents(latents)
        x = self.vae.decode(z.to(self.vae_dtype)).sample.float()
        if check_finite and not torch.isfinite(x).all():
            if self.vae_dtype == torch.float32:
                raise FloatingPointError("the VAE decoded NaN or inf values in float32")
            log.warning("VAE produced NaN/inf in %s; retrying in float32", self.vae_dtype)
            self.vae.float()
            try:
                x = self.vae.decode(z.float()).sample.float()
            finally:
                self.vae.to(self.vae_dtype)
            if not torch.isfinite(x).all():
                raise FloatingPointError("the VAE decoded NaN or inf values even in float32")
        return ((x + 1) / 2).clamp(0, 1)

    # --- what each family provides ----------------------------------------------------------

    def encode_prompt(self, prompts: list[str]) -> Conditioning:
        """Conditioning of ``prompts`` (cached per prompt)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            cond = self._encode_text(missing)
            for i, p in enumerate(missing):
                self._prompt_cache[p] = cond[i : i + 1]
        return Conditioning.cat([self._prompt_cache[p] for p in prompts])

    def _encode_text(self, prompts: list[str]) -> Conditioning:
        raise NotImplementedError

    def denoiser_inputs(self, latents: torch.Tensor, cond: Conditioning) -> dict:
        """Keyword inputs of the denoiser (and of its ControlNets) for ``cond`` on ``latents``."""
        raise NotImplementedError

    def predict(self, latents: torch.Tensor, t, cond: Conditioning, **residuals) -> torch.Tensor:
        """One denoiser call; float32 output in the model's prediction type.

        ``residuals`` are ControlNet outputs (``down_block_additional_residuals``, ...).
        """
        sample = latents.to(self.dtype)
        out = self.denoiser(sample, t, **self.denoiser_inputs(sample, cond), **residuals)
        return out.sample.float()

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    def scheduler(self, steps: int, size=None):
        """A stateless schedule of ``steps`` steps (see :mod:`regionedit.models.schedule`) for
        latents of ``size`` ``(h, w)`` (flow models shift their sigmas by image size)."""
        raise NotImplementedError

    def inverse_scheduler(self, steps: int, size=None):
        """The inversion's schedule: ``timesteps`` upwards and ``step(output, t, z, regularize)``."""
        raise NotImplementedError

    # --- guidance -------------------------------------------------------------------------

    guidance = "cfg"  # "cfg": two branches per prompt; "distilled": one, the scale as an input

    @property
    def guidance_batches(self) -> int:
        """Denoiser batches per prompt in a guided call: 2 (``[uncond, cond]``) or 1 (distilled)."""
        return 2 if self.guidance == "cfg" else 1

    def guided(self, latents, t, negative: Conditioning, positive: Conditioning, scale: float,
               rescale: float = 0.0, rescaled=None, residuals=None) -> torch.Tensor:  # fmt: skip
        """The guided prediction of each latent: classifier-free guidance on one call over
        ``[latents, latents]`` with ``[negative, positive]``, or the positive prompt alone with the
        scale as the model's guidance input where it is distilled (negatives then have no effect).

        ``rescale`` (φ) applies to the items where ``rescaled`` (a bool per item; default all) is true.
        ``residuals(sample, cond)`` gives ControlNet keywords for the batch the call runs on.
        """
        from ..cfg import classifier_free_guidance

        def call(sample, cond):
            return self.predict(sample, t, cond, **(residuals(sample, cond) if residuals else {}))

        if self.guidance != "cfg":
            return call(latents, self.with_guidance(positive, scale))
        uncond, cond = call(torch.cat([latents, latents]), Conditioning.cat([negative, positive])).chunk(2)
        out = self.combine(uncond, cond, scale)
        if rescale > 0:
            mix = classifier_free_guidance(uncond, cond, scale, rescale)
            out = (
                mix if rescaled is None else torch.where(rescaled.view(-1, 1, 1, 1).to(out.device), mix, out)
            )
        return out

    def combine(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """The guided prediction from the two branches (a family may renormalise it, as Qwen-Image)."""
        from ..cfg import classifier_free_guidance

        return classifier_free_guidance(uncond, cond, scale)

    def with_guidance(self, cond: Conditioning, scale: float) -> Conditioning:
        """``cond`` with the guidance input ``scale`` (distilled families)."""
        return cond

    # --- ControlNets ------------------------------------------------------------------------

    controlnet_class: ClassVar[str | None] = None  # the diffusers class of the family's ControlNets, if any

    def _check_controlnet_class(self, net, index: int) -> None:
        import diffusers

        if self.controlnet_class is None:
            raise InvalidInputError(
                f"regionedit has no ControlNet support for {self.display_name} models yet"
            )
        if not isinstance(net, getattr(diffusers, self.controlnet_class)):
            raise InvalidInputError(
                f"ControlNet {index} is a {type(net).__name__}; {self.family} models take a {self.controlnet_class}"
            )

    def check_controlnet(self, net, index: int) -> None:
        """One-line error unless ``net`` was made for this model."""
        self._check_controlnet_class(net, index)

    def control_input(self, net, image: torch.Tensor) -> torch.Tensor:
        """What ``net`` reads for a control image ``(1, 3, H, W)`` in [0, 1]."""
        raise NotImplementedError

    def control_residuals(self, nets, inputs, scales, latents, t, cond: Conditioning) -> dict:
        """``predict``'s keyword residuals from ``nets`` reading ``inputs`` (batched like ``latents``)
        at ``scales``; several nets' residuals add up."""
        raise NotImplementedError

    def cross_attention_geometry(self, latent_hw: tuple[int, int]) -> list[tuple[str, int, int, int]]:
        """``(layer, heads, image positions, text tokens)`` of each captured attention layer for a
        latent of ``latent_hw`` (the reference maps' memory, :mod:`regionedit.lomoe.memory`)."""
        raise NotImplementedError

    def cross_attention_layers(self) -> list[str]:
        raise NotImplementedError

    def text_segments(self) -> list[tuple[object, int, int]]:
        """``(tokenizer, first position, length)`` of each part of the text axis the captured
        cross-attention maps run over (a UNet: its CLIP tokens; SD3: CLIP's, then T5's)."""
        raise NotImplementedError

    def word_positions(self, prompt: str, words: str) -> list[int]:
        """The text positions of ``words`` (every place ``prompt`` has them) in the captured attention
        maps; short function words ("a", "the", "and", ...) are left out unless nothing else is left.
        Empty when ``prompt`` does not contain the words."""
        found = []
        for tokenizer, start, length in self.text_segments():
            ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True).input_ids
            wanted = tokenizer(words, add_special_tokens=False).input_ids
            for s in range(len(ids) - len(wanted) + 1) if wanted else ():
                if ids[s : s + len(wanted)] == wanted:
                    kept = [
                        k
                        for k, w in enumerate(wanted)
                        if tokenizer.decode([w]).strip().lower() not in STOP_WORDS
                    ]
                    found += [start + s + k for k in (kept or range(len(wanted)))]
        return sorted(found)

    def cross_attention(self, temperature: float = 1.0):
        """Context manager: cross-attention with ``temperature``, capturable; yields the store."""
        from ..attention import temperature_attention

        return temperature_attention(self.denoiser, self.cross_attention_layers(), temperature)


STOP_WORDS = frozenset({"a", "an", "the", "and", "of", "on", "in", "with", ",", "."})


def templated_word_positions(tokenizer, text: str, start: int, prompt: str, words: str) -> list[int]:
    """Token positions in ``text`` (a template with ``prompt`` at character ``start``) of the tokens
    that overlap ``words`` where ``prompt`` has them as whole words (case ignored), short function words
    left out unless nothing else is left. Found by character offsets, so a byte-level tokenizer that
    spells a word with its leading space ("Ġgreen") finds it too."""
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidInputError("finding words in this model's prompts needs a fast tokenizer (offsets)")
    offsets = tokenizer(text, return_offsets_mapping=True).offset_mapping
    wanted = words.lower().strip()
    spans = [m.span() for m in re.finditer(r"\S+", wanted)]
    spans = [s for s in spans if wanted[s[0] : s[1]] not in STOP_WORDS] or spans
    found = set()
    for match in re.finditer(rf"(?<!\w){re.escape(wanted)}(?!\w)", prompt.lower()) if wanted else ():
        for a, b in spans:
            lo, hi = start + match.start() + a, start + match.start() + b
            found |= {k for k, (x, y) in enumerate(offsets) if x < hi and y > lo}
    return sorted(found)


def check_image_size(height: int, width: int, factor: int) -> None:
    """Refuse sides that are not positive multiples of the VAE factor, naming the nearest fit."""
    if height % factor or width % factor or height < factor or width < factor:
        nh, nw = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
        raise ImageSizeError(
            f"image is {width}x{height}; sizes must be multiples of {factor} for this model — "
            f"use {nw}x{nh} (CLI: --resize pad|crop; EditRequest(resize=...))"
        )


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """float images ``(B, 3, H, W)`` in [0, 1] -> PIL images."""
    arr = (images.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    return [Image.fromarray(a) for a in arr]
