"""Load a Stable-Diffusion-style model: diffusers folder, single .safetensors, hub id or "mini"."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ImageSizeError, ModelLoadError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")


@dataclass(eq=False)
class Model:
    """Frozen components of a latent diffusion model plus small helpers shared by editors.

    Latents are kept in float32; networks run in ``dtype`` (float32 on CPU by default).
    """

    vae: torch.nn.Module
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    name: str = "model"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    _prompt_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for m in (self.vae, self.unet, self.text_encoder):
            m.requires_grad_(False).eval()

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for Stable Diffusion, 4 for mini)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        """The image side the model was trained at (UNet sample size times the VAE factor)."""
        size = getattr(self.unet.config, "sample_size", 64) or 64
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * self.vae_scale_factor

    def check_image_size(self, height: int, width: int) -> None:
        f = self.vae_scale_factor
        if height % f or width % f or height < f or width < f:
            nh, nw = max(f, round(height / f) * f), max(f, round(width / f) * f)
            raise ImageSizeError(
                f"image is {width}x{height}; sizes must be multiples of {f} for this model — "
                f"use {nw}x{nh} (CLI: --resize pad|crop; EditRequest(resize=...))"
            )

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP hidden states ``(len(prompts), tokens, width)`` in ``dtype``; cached per prompt."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            tok = self.tokenizer
            ids = tok(
                missing,
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            emb = self.text_encoder(ids)[0].to(self.dtype)
            for p, e in zip(missing, emb, strict=True):
                self._prompt_cache[p] = e
        return torch.stack([self._prompt_cache[p] for p in prompts])

    def image_to_tensor(self, image: Image.Image) -> torch.Tensor:
        """PIL RGB -> float32 ``(1, 3, H, W)`` in [-1, 1] on ``device``."""
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(arr).permute(2, 0, 1)[None].to(self.device)

    @torch.no_grad()
    def encode(
        self, image: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False
    ) -> torch.Tensor:
        """Image ``(B, 3, H, W)`` in [-1, 1] -> scaled float32 latents (posterior mean by default)."""
        dist = self.vae.encode(image.to(self.dtype)).latent_dist
        if sample:
            noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32)
            z = dist.mean.float() + dist.std.float() * noise.to(dist.mean.device)
        else:
            z = dist.mean.float()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, check_finite: bool = True) -> torch.Tensor:
        """Scaled latents -> float32 images ``(B, 3, H, W)`` in [0, 1].

        A half-precision VAE that overflows (NaN/inf) is retried in float32 once.
        """
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        z = latents / self.vae.config.scaling_factor + shift
        x = self.vae.decode(z.to(self.dtype)).sample.float()
        if check_finite and not torch.isfinite(x).all():
            if self.dtype == torch.float32:
                raise FloatingPointError("the VAE decoded NaN or inf values in float32")
            log.warning("VAE produced NaN/inf in %s; retrying in float32", self.dtype)
            self.vae.float()
            try:
                x = self.vae.decode(z.float()).sample.float()
            finally:
                self.vae.to(self.dtype)
            if not torch.isfinite(x).all():
                raise FloatingPointError("the VAE decoded NaN or inf values even in float32")
        return ((x + 1) / 2).clamp(0, 1)

    def unet_eps(self, latents: torch.Tensor, t, embeddings: torch.Tensor, **kwargs) -> torch.Tensor:
        """One UNet call; float32 output of the model's own prediction type."""
        out = self.unet(latents.to(self.dtype), t, encoder_hidden_states=embeddings, **kwargs)
        return out.sample.float()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """float images ``(B, 3, H, W)`` in [0, 1] -> PIL images."""
    arr = (images.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def _resolve_device(device, dtype):
    device = torch.device(device) if device is not None else torch.device("cpu")
    if dtype is None:
        dtype = torch.float32
    elif isinstance(dtype, str):
        names = {
            "float32": torch.float32,
            "fp32": torch.float32,
            "float16": torch.float16,
            "fp16": torch.float16,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
        }
        if dtype not in names:
            raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
        dtype = names[dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was asked for but torch sees no CUDA device; use --device cpu")
    return device, dtype


def load(model: str | os.PathLike = "mini", device=None, dtype=None, allow_pickle: bool = False) -> Model:
    """Load a model for editing.

    Args:
        model: ``"mini"`` (the bundled shapes-world model), a diffusers folder (with
            ``model_index.json``), a single-file ``.safetensors`` checkpoint, or a hub id
            (used only when cached, or online; ``HF_HUB_OFFLINE=1`` is respected).
        device: torch device; CPU by default.
        dtype: network dtype (``torch.float16``/``"fp16"``, ...); float32 by default.
        allow_pickle: pickled ``.ckpt``/``.bin`` weights execute code when loaded; they are
            refused unless this is true.
    """
    device, dtype = _resolve_device(device, dtype)
    spec = str(model)
    if spec == "mini":
        from .mini import MINI_DIR

        if not (MINI_DIR / "model_index.json").exists():
            raise ModelLoadError(f"the bundled mini model is missing from {MINI_DIR}; reinstall regionedit")
        path: Path | None = MINI_DIR
    else:
        path = Path(spec).expanduser()
    try:
        from diffusers import StableDiffusionPipeline
    except ImportError as exc:  # pragma: no cover - diffusers is a core dependency
        raise ModelLoadError(f"diffusers is not installed: {exc}") from None

    kwargs = dict(torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
    try:
        if path.exists() and path.is_dir():
            if not (path / "model_index.json").exists():
                raise ModelLoadError(f"{path} is not a diffusers model folder (no model_index.json)")
            pickled = any(p.suffix == ".bin" for p in path.rglob("*.bin"))
            safe = any(path.rglob("*.safetensors"))
            if pickled and not safe and not allow_pickle:
                raise ModelLoadError(
                    f"{path} holds only pickled .bin weights; pass allow_pickle=True "
                    "(CLI: --allow-pickle) if you trust them"
                )
            pipe = StableDiffusionPipeline.from_pretrained(str(path), use_safetensors=safe, **kwargs)
        elif path.exists():
            if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
                raise ModelLoadError(
                    f"{path} is a pickled checkpoint, which can run code when loaded; "
                    "convert it to .safetensors or pass allow_pickle=True (CLI: --allow-pickle)"
                )
            if path.suffix not in (".safetensors",) + PICKLE_SUFFIXES:
                raise ModelLoadError(f"{path}: unknown model file type; expected .safetensors or a folder")
            pipe = StableDiffusionPipeline.from_single_file(str(path), **kwargs)
        elif spec.startswith((".", "/", "~")) or spec.endswith((".safetensors",) + PICKLE_SUFFIXES):
            raise ModelLoadError(f"model path not found: {spec}")
        else:
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
            pipe = StableDiffusionPipeline.from_pretrained(spec, local_files_only=offline, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # diffusers raises many types; the user needs one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load model {spec!r}: {first}") from None

    m = Model(
        vae=pipe.vae.to(device),
        unet=pipe.unet.to(device),
        text_encoder=pipe.text_encoder.to(device),
        tokenizer=pipe.tokenizer,
        scheduler_config=dict(pipe.scheduler.config),
        name=spec,
        device=device,
        dtype=dtype,
    )
    return m


def from_components(components: dict, name: str = "components", device=None, dtype=None, cls=Model) -> Model:
    """Wrap in-memory components (as built in tests) into a :class:`Model` (or subclass ``cls``).

    The modules are moved to ``device``/``dtype`` in place (``nn.Module.to``), as diffusers does.
    """
    device, dtype = _resolve_device(device, dtype)
    return cls(
        vae=components["vae"].to(device, dtype),
        unet=components["unet"].to(device, dtype),
        text_encoder=components["text_encoder"].to(device, dtype),
        tokenizer=components["tokenizer"],
        scheduler_config=dict(components["scheduler"].config),
        name=name,
        device=device,
        dtype=dtype,
    )
