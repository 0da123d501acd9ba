"""Load a model: ``"mini"``, a diffusers folder, a single ``.safetensors`` or ``.gguf`` file or a hub id.

The family is read from the files (which components a folder holds, which weights a single
file has), never from the name. :func:`describe` reads only small JSON files and tensor names,
so front ends can check a request against the model (its VAE factor, its recommended settings)
before the slow :func:`load`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InvalidOptionError, ModelLoadError
from ..quiet import quiet_libraries
from . import families
from . import memory as weights
from .interface import Model

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MINI_DIR = DATA_DIR / "mini"  # the bundled shapes-world model
MINI_FLOW_DIR = DATA_DIR / "mini_flow"  # its FLUX-architecture sibling
SETTINGS_FILE = "regionedit_settings.json"  # beside model_index.json: recommended edit settings


@dataclass(frozen=True)
class ModelInfo:
    """What is known of a model before loading it.

    Attributes:
        name: as given (``"mini"``, a folder, a file, a hub id).
        path: the local folder, when there is one.
        family: the family's registry name (``"sd"``, ``"flux"``, ...); None when it can only be told
            by loading (an uncached hub id).
        vae_scale_factor: pixels per latent cell; None when unknown before loading.
        patch_size: latent cells per token side (2 for FLUX and SD3 transformers, else 1).
        settings: recommended settings per method (``regionedit_settings.json``), else empty;
            None when the model itself could not be found.
    """

    name: str
    path: Path | None = None
    family: str | None = None
    vae_scale_factor: int | None = None
    settings: dict | None = field(default_factory=dict)
    patch_size: int = 1


def _single_file_family(path: Path) -> type[Model]:
    """The family of a single-file ``.safetensors`` checkpoint, from its tensor names alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            keys = list(fh.keys())
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(f"cannot read {path} as safetensors: {exc}") from None
    return families.family_of_keys(keys, str(path))


def _gguf_family(path: Path) -> str | None:
    """The family of a ``.gguf`` denoiser from its tensor names in the original layout; None for
    names in diffusers' layout (the family then comes from ``--model-config``)."""
    weights.need_package("gguf", "a .gguf model")
    from gguf import GGUFReader

    try:
        keys = [t.name for t in GGUFReader(str(path)).tensors]
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path} as GGUF: {exc}") from None
    try:
        return families.family_of_keys(keys, str(path)).family
    except ModelLoadError:
        return None


def _read(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what} {path} must hold a JSON object")
    return data


def _describe_folder(name: str, path: Path) -> ModelInfo:
    if not (path / "model_index.json").exists():
        raise ModelLoadError(f"{path} is not a diffusers model folder (no model_index.json)")
    family = families.family_of_index(_read(path / "model_index.json", "model index"), str(path))
    factor = None
    vae_config = path / "vae" / "config.json"
    if vae_config.is_file():
        factor = family.vae_factor(_read(vae_config, "VAE config"))
    settings = _read(path / SETTINGS_FILE, "settings file") if (path / SETTINGS_FILE).is_file() else {}
    if isinstance(settings.get("controlnets"), dict):  # folders relative to the model's
        settings["controlnets"] = {k: str((path / v).resolve()) for k, v in settings["controlnets"].items()}
    return ModelInfo(name, path, family.family, factor, settings, family.patch_size)


def describe(model: str | os.PathLike = "mini") -> ModelInfo:
    """What can be known of ``model`` without loading its weights (see :class:`ModelInfo`)."""
    spec = str(model)
    if spec == "mini":
        if not (MINI_DIR / "model_index.json").exists():
            raise ModelLoadError(f"the bundled mini model is missing from {MINI_DIR}; reinstall regionedit")
        return _describe_folder(spec, MINI_DIR)
    if spec == "mini-flow":
        if not (MINI_FLOW_DIR / "model_index.json").exists():
            raise ModelLoadError(
                f"the mini flow model is missing from {MINI_FLOW_DIR}; reinstall regionedit, or train one with "
                "`regionedit train-mini --family flow --out DIR` and pass DIR/pipeline as the model"
            )
        return _describe_folder(spec, MINI_FLOW_DIR)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _describe_folder(spec, path)
    if path.exists():
        if path.suffix == ".safetensors":
            return ModelInfo(spec, family=_single_file_family(path).family)
        if path.suffix == ".gguf":
            return ModelInfo(spec, family=_gguf_family(path))
        if path.suffix in PICKLE_SUFFIXES:
            return ModelInfo(spec)
        raise ModelLoadError(f"{path}: unknown model file type; expected .safetensors, .gguf or a folder")
    if spec.startswith((".", "/", "~")) or spec.endswith((".safetensors", ".gguf") + PICKLE_SUFFIXES):
        raise ModelLoadError(f"model path not found: {spec}")
    cached = _hub_folder(spec, local_only=True)  # the cache first: no network, no waiting
    if cached is None and "/" not in spec:  # hub ids of diffusers models are owner/name
        raise ModelLoadError(
            f"unknown model {spec!r}: not mini, mini-flow, a model folder, a .safetensors file or a hub id "
            "(owner/name)"
        )
    if cached is None and _offline():
        raise ModelLoadError(
            f"model {spec!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it first, or use mini, mini-flow, a model folder or a .safetensors file"
        )
    cached = cached or _hub_folder(spec, local_only=False)
    return _describe_folder(spec, cached) if cached is not None else ModelInfo(spec)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _hub_folder(repo: str, local_only: bool) -> Path | None:
    """The local snapshot folder of a hub id whose model index is cached (or, not ``local_only``,
    downloadable)."""
    from huggingface_hub import hf_hub_download

    try:
        index = hf_hub_download(repo, "model_index.json", local_files_only=local_only or _offline())
    except Exception:  # not cached, no network, not a repo: loading will say which
        return None
    folder = Path(index).parent
    try:
        hf_hub_download(repo, SETTINGS_FILE, local_files_only=local_only or _offline())
    except Exception:
        pass  # most models carry no settings file
    return folder


def dtype_argument(dtype: torch.dtype) -> dict:
    """diffusers' ``from_pretrained`` keyword for the dtype: ``dtype`` where the installed version
    names it so (it deprecates ``torch_dtype``), else ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    new = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    return {"dtype": dtype} if new else {"torch_dtype": dtype}


def resolve_device(device, dtype) -> tuple[torch.device, torch.dtype]:
    """``device``/``dtype`` as given by a user (names or torch objects), CPU and float32 by default."""
    try:
        device = torch.device(device) if device is not None else torch.device("cpu")
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"unknown device {device!r} ({exc}); use cpu, cuda, cuda:1, mps, ...") from None
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


def load(
    model: str | os.PathLike | ModelInfo = "mini",
    device=None,
    dtype=None,
    allow_pickle: bool = False,
    config=None,
    memory=None,
) -> Model:
    """Load a model for editing.

    Args:
        model: ``"mini"`` (the bundled shapes-world model), a diffusers folder (with
            ``model_index.json``), a single-file ``.safetensors`` checkpoint, a ``.gguf``
            denoiser, or a hub id
            (used only when cached, or online; ``HF_HUB_OFFLINE=1`` is respected); or what
            :func:`describe` told of one.
        device: torch device; CPU by default.
        dtype: network dtype (``torch.float16``/``"fp16"``, ...); float32 by default.
        allow_pickle: pickled ``.ckpt``/``.bin`` weights execute code when loaded; they are
            refused unless this is true.
        config: for a single-file checkpoint, where its components' configs come from: a local
            diffusers folder of the same architecture or a cached hub id (CLI: ``--model-config``).
            A ``.gguf`` file holds a quantized denoiser alone: the rest comes from there too.
        memory: :class:`~regionedit.models.memory.MemoryOptions` or a mapping of its fields:
            offloading, the denoiser's storage dtype, a quantized denoiser (CLI: ``--offload``,
            ``--storage-dtype``, ``--quantize``).

    Returns:
        The family's :class:`~regionedit.models.interface.Model`, with ``settings`` from the
        folder's ``regionedit_settings.json`` (empty when it has none).
    """
    device, dtype = resolve_device(device, dtype)
    memory = weights.make_memory(memory)
    info = model if isinstance(model, ModelInfo) else describe(model)
    weights.check(memory, device, _is_gguf(info))
    with quiet_libraries():
        return _load(info, device, dtype, allow_pickle, config, memory)


def _is_gguf(info: ModelInfo) -> bool:
    return info.path is None and Path(info.name).suffix == ".gguf"


def _config_family(config) -> str | None:
    """The family of a ``--model-config`` folder (or cached hub id), None when it has no model index."""
    folder = Path(str(config)).expanduser()
    folder = folder if folder.is_dir() else _hub_folder(str(config), local_only=True)
    if folder is None or not (folder / "model_index.json").is_file():
        return None
    return families.family_of_index(_read(folder / "model_index.json", "model index"), str(folder)).family


def _load(info: ModelInfo, device, dtype, allow_pickle: bool, config, memory) -> Model:
    import diffusers

    spec = info.name
    if config is not None and (info.path is not None or not Path(spec).expanduser().is_file()):
        raise ModelLoadError(f"--model-config is for single-file checkpoints; {spec} is a folder or a hub id")
    gguf = _is_gguf(info)
    if gguf and config is None:
        raise ModelLoadError(
            f"{spec} holds a quantized denoiser alone; give the rest of the model with --model-config DIR "
            "(a diffusers folder of the same architecture; Python: load(..., config=...))"
        )
    family = info.family or (_config_family(config) if gguf else None)
    cls = families.get(family or "sd")  # an uncached hub id: the most common family, or its load fails
    pipeline = getattr(diffusers, cls.pipeline)
    quantization = weights.denoiser_quantization(memory, dtype, gguf)
    kwargs = dict(**dtype_argument(dtype), **cls.pipeline_kwargs, **cls.load_kwargs(info.path))
    single_file = info.path is None and Path(spec).expanduser().is_file()
    if quantization is not None and not single_file:  # a folder or hub id: the denoiser alone, quantized
        kwargs["quantization_config"] = diffusers.PipelineQuantizationConfig(
            quant_mapping={cls.denoiser_name: quantization}
        )
    try:
        if info.path is not None:
            pickled = any(p.suffix == ".bin" for p in info.path.rglob("*.bin"))
            safe = any(info.path.rglob("*.safetensors"))
            if pickled and not safe and not allow_pickle:
                raise ModelLoadError(
                    f"{info.path} holds only pickled .bin weights; pass allow_pickle=True "
                    "(CLI: --allow-pickle) if you trust them"
                )
            pipe = pipeline.from_pretrained(str(info.path), use_safetensors=safe, **kwargs)
        elif single_file:
            pipe = _from_single_file(
                pipeline, cls, Path(spec).expanduser(), allow_pickle, config, kwargs, quantization
            )
        else:
            pipe = pipeline.from_pretrained(spec, local_files_only=_offline(), **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # diffusers raises many types; the user needs one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load model {spec!r}: {first}") from None
    extra = {k: pipe.config[k] for k in cls.config_fields if k in pipe.config}
    return from_components(
        dict(pipe.components), spec, device, dtype, cls, info.settings, move=False, memory=memory, **extra
    )


def _from_single_file(pipeline, cls: type[Model], path: Path, allow_pickle: bool, config, kwargs,
                      quantization=None):  # fmt: skip
    """A single-file checkpoint through diffusers, its configs from ``config`` (a folder or a cached
    hub id) or, without it, from the hub's copy of the family's reference model when reachable.
    ``quantization`` is the denoiser's quantization config (a ``.gguf`` file's, or quantize's)."""
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(
            f"{path} is a pickled checkpoint, which can run code when loaded; "
            "convert it to .safetensors or pass allow_pickle=True (CLI: --allow-pickle)"
        )
    if config is not None:
        folder = Path(str(config)).expanduser()  # (a folder, or a hub id when it does not exist here)
        if folder.exists() and not (folder / "model_index.json").is_file():
            raise ModelLoadError(
                f"--model-config {config}: not a diffusers model folder (no model_index.json)"
            )
        if cls.single_file_holds == "denoiser" or path.suffix == ".gguf":  # the rest from the config
            import diffusers

            quantized = {} if quantization is None else {"quantization_config": quantization}
            denoiser = getattr(diffusers, cls.denoiser_class).from_single_file(
                str(path), config=str(config), subfolder=cls.denoiser_name, local_files_only=_offline(),
                **dtype_argument(kwargs.get("dtype", kwargs.get("torch_dtype"))), **quantized,
            )  # fmt: skip
            return pipeline.from_pretrained(
                str(config), **{cls.denoiser_name: denoiser}, local_files_only=_offline(), **kwargs
            )
        _refuse_quantized_pipeline(path, quantization)
        return pipeline.from_single_file(str(path), config=str(config), local_files_only=_offline(), **kwargs)
    _refuse_quantized_pipeline(path, quantization)
    try:
        if cls.single_file_holds == "denoiser":
            raise ModelLoadError(f"a {cls.display_name} file holds only the {cls.denoiser_name}")
        return pipeline.from_single_file(str(path), local_files_only=_offline(), **kwargs)
    except Exception:  # the reference configs are not cached here: the user must give them
        raise ModelLoadError(
            f"{path} is a single-file {cls.display_name} checkpoint whose configs are not available offline; "
            "give them with --model-config DIR (a diffusers folder of the same architecture) or a cached "
            "hub id (Python: load(..., config=...))"
        ) from None


def _refuse_quantized_pipeline(path: Path, quantization) -> None:
    if quantization is not None:
        raise ModelLoadError(
            f"{path} holds a whole pipeline, and diffusers quantizes only a denoiser loaded on its own; "
            "save the pipeline as a diffusers folder and load that with quantize"
        )


def from_components(
    components: dict,
    name: str = "components",
    device=None,
    dtype=None,
    cls=None,
    settings: dict | None = None,
    move: bool = True,
    memory=None,
    **extra,
) -> Model:
    """Wrap in-memory components (as built in tests, keyed like a diffusers pipeline) into a model.

    ``cls`` is the family's class; by default the family the components make
    (:func:`~regionedit.models.families.family_of_components`). The modules are moved to ``device``/``dtype`` in place (``nn.Module.to``),
    as diffusers does; ``move=False`` moves them to the device only (they already have their dtype).
    ``extra`` are family fields (SDXL's ``force_zeros_for_empty_prompt``). ``memory``
    (:class:`~regionedit.models.memory.MemoryOptions` or a mapping) offloads the components and sets the
    denoiser's storage dtype; its ``quantize`` needs files (:func:`load`).
    """
    device, dtype = resolve_device(device, dtype)
    memory = weights.make_memory(memory)
    cls = cls or families.family_of_components(components)
    if memory.quantize is not None and getattr(components[cls.denoiser_name], "hf_quantizer", None) is None:
        raise InvalidOptionError(
            "quantize applies when loading from files: use regionedit.load(..., memory=...)"
        )
    homes = {k: weights.home(memory, k, cls.denoiser_name, device) for k in cls.modules}
    fields = {
        k: components[k].to(homes[k], dtype) if move else components[k].to(homes[k])
        for k in cls.modules
        if components.get(k) is not None  # SD3 without its T5
    }
    fields.update({k: components.get(k) for k in cls.objects})
    model = cls(
        **fields,
        scheduler_config=dict(components["scheduler"].config),
        name=name,
        device=device,
        dtype=dtype,
        settings=dict(settings or {}),
        **extra,
    )
    weights.apply(model, memory)
    return model
