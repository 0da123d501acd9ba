"""One edit request from plain data to file: what the CLI, the batch runner and the web page share.

A front end builds an :class:`EditRequest` (paths or images, prompts, option values as a
mapping), calls :meth:`EditRequest.prepare` once (every file read and every check, before the
model loads where the model's folder tells its VAE factor), then :func:`run` and
:func:`save_result`. Options come from :func:`regionedit.options.make_options`: the method's
defaults, the model's recommended settings, then the request's values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .errors import (
    InvalidInputError,
    InvalidOptionError,
    NonFiniteError,
    OutputExistsError,
    PromptCountError,
    RegionEditError,
)
from .execution import ExecutionOptions
from .io import save_image
from .lomoe.prepare import prepare_lomoe
from .models.loading import ModelInfo, describe
from .multimodal.prepare import prepare_multimodal
from .multimodal.request import check_counts, conditions_from, control_names, controlnet_folders
from .options import METHODS, check_option_names, make_execution, make_options
from .prepared import PreparedEdit
from .regions import Region


@dataclass
class EditRequest:
    """Everything that defines an edit, as plain data; checked once by :meth:`prepare`.

    ``options`` is a mapping of option values over the model's recommended settings (``steps``
    is accepted for ``num_inference_steps``), or an options object used as it is. For the
    multimodal method ``prompts`` holds the one target prompt, ``background_prompt`` the source
    caption and ``masks`` at most one mask (none: estimated).
    """

    image: object
    masks: list
    prompts: list[str]
    background_prompt: str
    negative_prompts: list[str] = field(default_factory=list)
    method: str = "lomoe"
    seed: int = 0
    options: Mapping | object | None = None
    model: str = "mini"
    resize: str | None = None  # None: sizes must fit the model; "pad" or "crop" (LoMOE)
    controls: list = field(default_factory=list)  # multimodal: "KIND=PATH|auto" or Condition
    control_scales: list[float] = field(default_factory=list)  # the first controls' scales
    controlnets: dict = field(default_factory=dict)  # kind -> diffusers folder (default: the model's)
    execution: Mapping | ExecutionOptions | None = None

    def check_output(self, out: str | Path, overwrite: bool) -> Path:
        out = Path(out)
        if out.suffix.lower() != ".png":
            raise InvalidInputError(f"output {out} must end in .png (parameters are stored in a PNG chunk)")
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
        return out

    def _check_fields(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.method != "multimodal" and (self.controls or self.control_scales or self.controlnets):
            raise InvalidInputError("controls, control scales and ControlNets need the multimodal method")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise InvalidInputError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.background_prompt, str):
            raise InvalidInputError("background_prompt must be a string")

    def prepare(self, model) -> PreparedEdit:
        """Read and check everything: image, masks, prompts, options, controls.

        Args:
            model: a loaded model or a :class:`~regionedit.models.loading.ModelInfo` (from
                ``describe``): its VAE factor and recommended settings are used.
        """
        self._check_fields()
        factor = model.vae_scale_factor
        if factor is None:
            raise InvalidInputError(f"the VAE factor of {self.model!r} is known only once it is loaded")
        patch = getattr(model, "patch_size", 1)  # latent cells per token side (flow transformers: 2)
        settings = model.settings or {}  # None: the model is unknown (only the inputs are checked)
        options = make_options(self.method, self.options, settings.get(self.method))
        execution = make_execution(self.execution)
        if self.method == "multimodal":
            check_counts(self)
            conditions = conditions_from(self.controls, self.control_scales)
            mask = self.masks[0] if self.masks else None
            prepared = prepare_multimodal(self.image, self.prompts[0], self.background_prompt, mask, conditions,
                                          options, factor, seed=self.seed, patch_size=patch)  # fmt: skip
            shipped = None if model.settings is None else settings.get("controlnets", {})
            nets = controlnet_folders(conditions, self.controlnets, shipped)
            prepared = dataclasses.replace(prepared, controlnets=nets)
        else:
            prepared = prepare_lomoe(self.image, self._regions(), self.background_prompt, options, factor,
                                     resize=self.resize, seed=self.seed, patch_size=patch)  # fmt: skip
        return dataclasses.replace(prepared, execution=execution)

    def _regions(self) -> list[Region]:
        if len(self.masks) != len(self.prompts):
            raise PromptCountError(
                f"got {len(self.masks)} mask(s) and {len(self.prompts)} prompt(s); give one prompt per mask"
            )
        n = len(self.masks)
        if len(self.negative_prompts) not in (0, 1, n):
            raise PromptCountError(
                f"got {len(self.negative_prompts)} negative prompts for {n} masks; "
                "give none, one for all, or one per mask"
            )
        negs = (self.negative_prompts * n) if len(self.negative_prompts) == 1 else self.negative_prompts
        pairs = enumerate(zip(self.masks, self.prompts, strict=True))
        return [Region(m, p, negs[i] if negs else None) for i, (m, p) in pairs]

    def metadata(self, model_name: str, prepared: PreparedEdit) -> dict:
        """What a written PNG records: the request and the options actually used."""
        import diffusers
        import transformers

        from .version import __version__

        meta = {
            "regionedit": __version__,
            "method": self.method,
            "model": model_name,
            "seed": self.seed,
            "background_prompt": self.background_prompt,
            "prompts": list(self.prompts),
            "negative_prompts": list(self.negative_prompts),
            "masks": [str(m) if isinstance(m, (str, Path)) else "<array>" for m in self.masks],
            "options": dataclasses.asdict(prepared.options),
            "resize": self.resize,
            "versions": {
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
            },
        }
        if self.method == "multimodal":
            meta["controls"] = control_names(self.controls)
            meta["control_scales"] = list(self.control_scales)
            meta["controlnets"] = {k: str(v) for k, v in prepared.controlnets.items()}
        return meta


# Keys of a spec file (CLI --spec) and of a batch manifest line, with their JSON types.
SPEC_FIELDS = {
    "image": (str,),
    "masks": (list, str),
    "prompts": (list, str),
    "negative_prompts": (list, str),
    "background_prompt": (str,),
    "method": (str,),
    "seed": (int,),
    "options": (dict,),
    "execution": (dict,),
    "model": (str,),
    "out": (str,),
    "resize": (str,),
    "controls": (list, str),
    "control_scales": (list,),
    "controlnets": (dict,),
}
_LISTS_OF_STR = ("masks", "prompts", "negative_prompts", "controls")


def check_spec(spec, where: str, fields: dict = SPEC_FIELDS) -> dict:
    """Check the keys and JSON types of a spec (or manifest) object; return it unchanged.

    Values are checked further (files, ranges against the model's settings) when the request
    is prepared.
    """
    if not isinstance(spec, dict):
        raise InvalidInputError(f"{where} must be a JSON object, got {type(spec).__name__}")
    for key, value in spec.items():
        if key not in fields:
            raise InvalidInputError(f"{where}: unknown key {key!r}; known keys: {sorted(fields)}")
        types = fields[key]
        # JSON true/false are Python bools, which are ints: refuse them where a number is meant.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("list" if t is list else t.__name__ for t in types)
            raise InvalidInputError(f"{where}: {key!r} must be {names}, got {json.dumps(value)[:60]}")
        if key in _LISTS_OF_STR and isinstance(value, list):
            for item in value:
                if not isinstance(item, str):
                    raise InvalidInputError(
                        f"{where}: {key!r} must be a list of strings, got item {json.dumps(item)[:60]}"
                    )
        if key == "control_scales" and any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in value
        ):
            raise InvalidInputError(
                f"{where}: 'control_scales' must be a list of numbers, got {json.dumps(value)[:60]}"
            )
        if key == "controlnets" and not all(isinstance(v, str) for v in value.values()):
            raise InvalidInputError(
                f"{where}: 'controlnets' maps a kind to a folder, got {json.dumps(value)[:60]}"
            )
        if key == "seed" and not 0 <= value < 2**63:
            raise InvalidInputError(f"{where}: 'seed' must be a non-negative integer, got {value}")
    method = spec.get("method", "lomoe")
    given = [k for k in ("controls", "control_scales", "controlnets") if k in spec]
    if given and method != "multimodal":
        raise InvalidInputError(f'{where}: {", ".join(given)} need "method": "multimodal"')
    try:
        if "options" in spec:
            check_option_names(method, spec["options"])
        make_execution(spec.get("execution"))
    except InvalidOptionError as exc:
        raise InvalidOptionError(f"{where}: {exc}") from None
    return spec


@contextlib.contextmanager
def quiet_libraries():
    """Hide diffusers/transformers loading bars and deprecation warnings unless logging is verbose.

    The CLI promises one line on error; library chatter before it would bury that line.
    """
    if logging.getLogger("regionedit").getEffectiveLevel() <= logging.INFO:
        yield
        return
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    bars = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        if bars[0]:
            dlog.enable_progress_bar()
        if bars[1]:
            tlog.enable_progress_bar()


def load_model(name, **load_arguments):
    """:func:`regionedit.load` with library chatter hidden (``load_arguments``: device, dtype,
    allow_pickle, config)."""
    from .models.loading import load

    with quiet_libraries():
        return load(name, **load_arguments)


def prepare_and_load(request: EditRequest, **load_arguments):
    """Prepare ``request`` against its model's files, then load the model: ``(model, prepared)``.

    For a model whose VAE factor is known only after loading (a single file, an uncached hub id)
    the inputs are checked first without it, and the size checks follow the load.
    """
    unknown = ModelInfo(request.model, vae_scale_factor=1, settings=None)  # checks the inputs alone
    try:
        info: ModelInfo = describe(request.model)
    except RegionEditError:
        request.prepare(unknown)  # a bad input is the first thing to say; then that the model is missing
        raise
    if info.vae_scale_factor is None:  # a single file or an uncached hub id: check what can be checked
        request.prepare(unknown)
    prepared = request.prepare(info) if info.vae_scale_factor is not None else None
    model = load_model(info, **load_arguments)
    return model, prepared if prepared is not None else request.prepare(model)


@contextlib.contextmanager
def _finite_or_error(model):
    """A half-precision UNet or VAE that overflowed (the decoder already retried in float32)
    becomes a one-line NonFiniteError."""
    try:
        yield
    except FloatingPointError as exc:
        raise NonFiniteError(
            f"{exc} (model dtype {model.dtype}); run in float32 (CLI: --dtype float32)"
        ) from None


def run(model, prepared: PreparedEdit, progress: bool = True, callback=None, inversion=None):
    """Run a prepared edit on a loaded model with the request's seed.

    ``inversion`` reuses an earlier LoMOE inversion of the same image and caption. Returns the
    method's result: :class:`~regionedit.lomoe.EditResult` or ``MultimodalResult``.
    """
    generator = torch.Generator().manual_seed(prepared.seed)
    if prepared.method == "multimodal":
        from .models.controlnet import cached_controlnet
        from .multimodal.editor import run as run_multimodal

        if inversion is not None:
            raise InvalidInputError("reusing an inversion is supported by the LoMOE method only")
        nets = {kind: cached_controlnet(path, model, kind) for kind, path in prepared.controlnets.items()}
        with quiet_libraries(), _finite_or_error(model):
            return run_multimodal(
                model, prepared, nets, generator=generator, progress=progress, callback=callback
            )
    from .lomoe.editor import run as run_lomoe

    with quiet_libraries(), _finite_or_error(model):
        result = run_lomoe(model, prepared, inversion=inversion, generator=generator, progress=progress,
                           callback=callback)  # fmt: skip
    box = prepared.crop_box
    if box is not None:
        result.image = result.image.crop(box)
        result.reconstruction = result.reconstruction.crop(box)
        result.mask_images = [m.crop(box) for m in result.mask_images]
    return result


def side_images(result, prepared: PreparedEdit) -> dict:
    """Name suffix -> image written beside the edit by ``save_masks``."""
    if prepared.method != "multimodal":
        return {f"_mask_{i}": m for i, m in enumerate(result.mask_images, start=1)}
    out = {"_mask": result.mask_image, "_guidance": result.guidance_image}
    for kind, im in zip([c.kind for c in prepared.conditions], result.control_images, strict=True):
        name = f"_control_{kind}"
        out[name if name not in out else f"{name}_{len(out)}"] = im  # two of a kind: keep both
    return out


def save_result(
    result,
    request: EditRequest,
    prepared: PreparedEdit,
    out: str | Path,
    overwrite: bool = False,
    save_masks: bool = False,
    model_name: str | None = None,
    extra: dict | None = None,
) -> Path:
    """Write the edited PNG (atomically) with every parameter in a ``regionedit`` text chunk.

    ``extra`` adds keys to the recorded parameters (the batch runner's job fingerprint).
    """
    out = request.check_output(out, overwrite)
    sides = {out.with_name(f"{out.stem}{k}.png"): im for k, im in side_images(result, prepared).items()}
    # Check every target first: a refused mask file must not leave the image half-delivered.
    for p in sides if save_masks else []:
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{p} exists; pass --overwrite to replace it")
    meta = request.metadata(model_name or request.model, prepared)
    meta["timings"] = result.timings
    meta.update(extra or {})
    path = save_image(result.image, out, overwrite=overwrite, text={"regionedit": json.dumps(meta)})
    if save_masks:
        for p, im in sides.items():
            save_image(im, p, overwrite=overwrite)
    return path


def read_metadata(path: str | Path) -> dict:
    """The parameters stored in a PNG written by regionedit."""
    with Image.open(path) as im:
        text = im.text.get("regionedit") if hasattr(im, "text") else None
    if text is None:
        raise InvalidInputError(f"{path} has no regionedit metadata")
    return json.loads(text)
