"""What a memory plan needs to know of a model, from its configs alone or from a loaded model.

Parameter counts come from building each network on the ``meta`` device from its config (no memory,
no weights); the largest block is what group offloading keeps on the device at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..models import families

# Text tokens per prompt where the family reads the prompt's own tokens, unpadded (Qwen-Image, Z-Image):
# a short prompt with its chat template is about 64.
PROMPT_TOKENS = 64


@dataclass(frozen=True)
class ModelShape:
    """A model's sizes, as far as memory goes.

    Attributes:
        name: as given.
        family: the family's registry name.
        denoiser_config: the denoiser's config (its geometry, :mod:`regionedit.plan.geometry`).
        parameters: component -> parameter count (``denoiser``, each text encoder, ``vae``).
        largest_blocks: component -> parameters of its largest block (group offloading's unit).
        vae_class / vae_config: the VAE's diffusers class and config.
        text_tokens: text tokens per prompt the denoiser attends to.
        guidance_batches: denoiser batches per prompt (2 for CFG, 1 where guidance is distilled).
        vae_scale_factor: pixels per latent cell; size_factor: pixels per token side.
        vae_upcast: the family keeps the VAE in float32 under float16 (SDXL's ``force_upcast``).
    """

    name: str
    family: str
    denoiser_config: dict
    parameters: dict[str, int]
    largest_blocks: dict[str, int]
    vae_class: str
    vae_config: dict
    text_tokens: int
    guidance_batches: int
    vae_scale_factor: int
    size_factor: int
    vae_upcast: bool = False

    @property
    def vae_channels(self) -> int:
        """Channels of the VAE's full-resolution level (what its activations scale with)."""
        return int(self.vae_config.get("base_dim") or self.vae_config["block_out_channels"][0])

    @property
    def vae_levels(self) -> tuple[str, int]:
        """The VAE's class and its number of resolution levels (the key of its coefficients)."""
        levels = self.vae_config.get("dim_mult") or self.vae_config["block_out_channels"]
        return self.vae_class, len(levels)

    @property
    def text_encoders(self) -> list[str]:
        return [k for k in self.parameters if k.startswith("text_encoder")]


def largest_block(module: torch.nn.Module) -> int:
    """Parameters of the largest unit group offloading moves: an element of any ``ModuleList``, or all
    parameters outside the lists together (embeddings, norms, projections)."""
    in_lists, largest = set(), 0
    for sub in module.modules():
        if isinstance(sub, torch.nn.ModuleList):
            for child in sub:
                params = list(child.parameters())
                in_lists.update(id(p) for p in params)
                largest = max(largest, sum(p.numel() for p in params))
    return max(largest, sum(p.numel() for p in module.parameters() if id(p) not in in_lists))


def token_patch(denoiser_config: dict, vae_config: dict) -> int:
    """Latent cells per token side: the transformer's own patch size, else what packing its input takes
    (FLUX packs 2x2 cells of 16 channels into 64); 1 for a UNet and FLUX.2 (its VAE folds the patches)."""
    if "all_patch_size" in denoiser_config:  # Z-Image
        return int(denoiser_config["all_patch_size"][0])
    if int(denoiser_config.get("patch_size") or 1) > 1:
        return int(denoiser_config["patch_size"])
    patch = (vae_config.get("patch_size") or (1,))[0]
    latent = int(vae_config.get("latent_channels") or vae_config.get("z_dim")) * patch * patch
    return max(1, round((int(denoiser_config["in_channels"]) / latent) ** 0.5))


def _shape(name, family, networks: dict, text_tokens: int, guidance_batches: int) -> ModelShape:
    vae, denoiser = networks["vae"], networks["denoiser"]
    factor = families.get(family).vae_factor(_public(vae.config))  # as the family reads it
    return ModelShape(
        name=name, family=family, denoiser_config=_public(denoiser.config),
        parameters={k: sum(p.numel() for p in m.parameters()) for k, m in networks.items()},
        largest_blocks={k: largest_block(m) for k, m in networks.items()}, vae_class=type(vae).__name__,
        vae_config=_public(vae.config), text_tokens=int(text_tokens), guidance_batches=int(guidance_batches),
        vae_scale_factor=factor, size_factor=factor * token_patch(dict(denoiser.config), dict(vae.config)),
        vae_upcast=bool(vae.config.get("force_upcast", False)) and family in UPCASTING,
    )  # fmt: skip


def _public(config) -> dict:
    """A config without its bookkeeping entries (``_class_name``, ``_name_or_path``, ...)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


UPCASTING = frozenset({"sdxl"})  # families whose VAE follows force_upcast (models/sdxl.py)


def build_network(class_name: str, config, device="meta") -> torch.nn.Module:
    """A network of a diffusers or transformers class from its config, random weights on ``device``
    (``"meta"``: no memory, for counting parameters)."""
    import diffusers
    import transformers

    with torch.device(device):
        if hasattr(diffusers, class_name):
            return getattr(diffusers, class_name).from_config(dict(config))
        cls = getattr(transformers, class_name)
        return cls(
            config if isinstance(config, transformers.PretrainedConfig) else cls.config_class(**config)
        )


def shape_of_configs(name: str, family: str, components: dict, text_tokens: int, guidance: str) -> ModelShape:
    """A shape from ``components``: name -> ``(class name, config)`` (the denoiser named ``unet`` or
    ``transformer``), as :class:`regionedit.bench.architectures.Spec` holds them."""
    networks = {k: build_network(*v) for k, v in components.items()}
    networks["denoiser"] = networks.pop("unet") if "unet" in networks else networks.pop("transformer")
    return _shape(name, family, networks, text_tokens, 1 if guidance == "distilled" else 2)


def shape_of_folder(name: str, folder: Path, family: str) -> ModelShape:
    """A shape from a diffusers folder's ``model_index.json`` and component ``config.json`` files."""
    import transformers

    index = _json(folder / "model_index.json")
    networks, tokenizers = {}, {}
    for key, value in index.items():
        if (
            key.startswith("_")
            or not isinstance(value, list)
            or value[0] is None
            or not (folder / key).is_dir()
        ):
            continue
        library, cls = value
        if key.startswith("tokenizer"):
            tokenizers[key] = _json(folder / key / "tokenizer_config.json").get("model_max_length", 77)
        elif library == "diffusers" and (folder / key / "config.json").is_file():
            networks[key] = build_network(cls, _json(folder / key / "config.json"))
        elif library == "transformers" and (folder / key / "config.json").is_file():
            networks[key] = build_network(cls, transformers.AutoConfig.from_pretrained(str(folder / key)))
    networks["denoiser"] = networks.pop("unet") if "unet" in networks else networks.pop("transformer")
    tokens = TEXT_TOKENS.get(family, lambda t: t.get("tokenizer", 77))(tokenizers)
    distilled = networks["denoiser"].config.get("guidance_embeds") and family in DISTILLED_BY_EMBEDDING
    distilled = distilled or bool(index.get("is_distilled"))
    return _shape(name, family, networks, tokens, 1 if distilled else 2)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None


# Text tokens per prompt from the folder's tokenizer limits, as each family's pipeline pads them.
TEXT_TOKENS = {
    "flux": lambda t: min(512, t.get("tokenizer_2", 512)),
    "sd3": lambda t: t.get("tokenizer", 77) + min(256, t.get("tokenizer_3", 256)),
    "flux2": lambda t: min(512, t.get("tokenizer", 512)),
    "qwenimage": lambda t: PROMPT_TOKENS,
    "zimage": lambda t: PROMPT_TOKENS,
}
DISTILLED_BY_EMBEDDING = frozenset({"flux"})  # a guidance embedding means one batch per prompt (FLUX.1-dev)


def model_text_tokens(model) -> int:
    """Text tokens per prompt a loaded model's denoiser attends to."""
    return model.text_tokens() if hasattr(model, "text_tokens") else model.tokenizer.model_max_length


def shape_of_model(model) -> ModelShape:
    """The shape of a loaded :class:`~regionedit.models.interface.Model` (its own networks and settings)."""
    networks = {"denoiser": model.denoiser, "vae": model.vae}
    for key in type(model).modules:
        value = getattr(model, key, None)
        if key.startswith("text_encoder") and isinstance(value, torch.nn.Module):
            networks[key] = value
    shape = _shape(model.name, model.family, networks, model_text_tokens(model), model.guidance_batches)
    return replace(shape, vae_scale_factor=model.vae_scale_factor, size_factor=model.size_factor)
