"""One edit request from start to file: shared by the CLI, the batch runner and the UI."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import (
    ImageSizeError,
    InvalidInputError,
    InvalidMaskError,
    InvalidOptionError,
    NonFiniteError,
    OutputExistsError,
    PromptCountError,
)
from .io import load_image, save_image
from .lomoe import LoMOEOptions
from .lomoe import edit as lomoe_edit
from .multimodal.options import MultimodalOptions
from .regions import Region, latent_masks, mask_to_array, validate_regions

METHODS = ("lomoe", "multimodal")
OPTION_CLASSES = {"lomoe": LoMOEOptions, "multimodal": MultimodalOptions}
RESIZE_MODES = ("pad", "crop")


@dataclass
class EditRequest:
    """Everything that defines an edit; validated by :meth:`prepare`."""

    image: object
    masks: list
    prompts: list[str]
    background_prompt: str
    negative_prompts: list[str] = field(default_factory=list)
    method: str = "lomoe"
    seed: int = 0
    options: LoMOEOptions | MultimodalOptions | None = None  # None: the method's defaults
    model: str = "mini"
    resize: str | None = None  # None: sizes must fit the model; "pad" or "crop" (see fit_to_model)
    # multimodal only: the prompt is the target, background_prompt the source caption, at most one mask
    controls: list = field(default_factory=list)  # "KIND=PATH|auto" (e.g. "edge=auto") or Condition
    control_scales: list[float] = field(default_factory=list)  # the first controls' scales
    controlnets: dict = field(default_factory=dict)  # kind -> diffusers folder (default: bundled)

    def __post_init__(self):
        if self.options is None:
            self.options = OPTION_CLASSES.get(self.method, LoMOEOptions)()

    def check_output(self, out: str | Path, overwrite: bool) -> Path:
        out = Path(out)
        if out.suffix.lower() != ".png":
            raise InvalidInputError(f"output {out} must end in .png (parameters are stored in a PNG chunk)")
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
        return out

    def _check_method(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if not isinstance(self.options, OPTION_CLASSES[self.method]):
            raise InvalidOptionError(
                f"method {self.method!r} takes {OPTION_CLASSES[self.method].__name__}, "
                f"got {type(self.options).__name__}"
            )
        if self.method != "multimodal" and (self.controls or self.control_scales or self.controlnets):
            raise InvalidInputError("controls, control scales and ControlNets need the multimodal method")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise InvalidInputError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.background_prompt, str):
            raise InvalidInputError("background_prompt must be a string")

    def check(self) -> None:
        """Every check that needs no model, so that bad input fails before a slow load."""
        if self.method == "multimodal":
            self.prepare_multimodal()
        else:
            self.prepare()

    def prepare_multimodal(self):
        """Read the image and mask and parse the controls (multimodal): ``(image, mask, conditions)``."""
        from .multimodal.request import check_request

        self._check_method()
        image = self.image if isinstance(self.image, Image.Image) else load_image(self.image)
        mask, conditions = check_request(self, image)
        return image, mask, conditions

    def prepare(self) -> tuple[Image.Image, list[Region]]:
        """Read the image and masks and check counts and sizes; no model needed (LoMOE)."""
        self._check_method()
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
        if self.resize not in (None, *RESIZE_MODES):
            raise InvalidInputError(f"resize must be None, 'pad' or 'crop', got {self.resize!r}")
        image = self.image if isinstance(self.image, Image.Image) else load_image(self.image)
        negs = (self.negative_prompts * n) if len(self.negative_prompts) == 1 else self.negative_prompts
        regions = []
        for i, (mask, prompt) in enumerate(zip(self.masks, self.prompts, strict=True), start=1):
            arr = mask_to_array(mask, what=f"mask {i}")
            if arr.shape != (image.height, image.width):
                raise InvalidMaskError(
                    f"mask {i} is {arr.shape[-1]}x{arr.shape[0]} but the image is "
                    f"{image.width}x{image.height}; masks must have the image's size"
                )
            regions.append(Region(arr, prompt, negs[i - 1] if negs else None))
        return image, regions

    def metadata(self, model_name: str) -> dict:
        import diffusers
        import transformers

        from . import __version__

        meta = {
            "regionedit": __version__,
            "method": self.method,
            "model": model_name,
            "seed": self.seed,
            "background_prompt": self.background_prompt,
            "prompts": list(self.prompts),
            "negative_prompts": list(self.negative_prompts),
            "masks": [str(m) if isinstance(m, (str, Path)) else "<array>" for m in self.masks],
            "options": dataclasses.asdict(self.options),
            "resize": self.resize,
            "versions": {
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
            },
        }
        if self.method == "multimodal":
            from .multimodal.request import control_names

            meta["controls"] = control_names(self.controls)
            meta["control_scales"] = list(self.control_scales)
            meta["controlnets"] = {k: str(v) for k, v in self.controlnets.items()}
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

    Values are checked further (files, ranges) when the request is prepared.
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
    if "options" in spec:
        try:
            options_from_dict(spec["options"], OPTION_CLASSES.get(method, LoMOEOptions))
        except InvalidOptionError as exc:
            raise InvalidOptionError(f"{where}: {exc}") from None
    return spec


def _json_type_ok(annotation: str, value) -> bool:
    """Does a JSON value fit a simple annotation such as ``"int | None"``?"""
    for t in (part.strip() for part in annotation.split("|")):
        if (
            (t == "None" and value is None)
            or (t == "bool" and isinstance(value, bool))
            or (t == "int" and isinstance(value, int) and not isinstance(value, bool))
            or (t == "float" and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (t == "str" and isinstance(value, str))
        ):
            return True
    return False


def options_from_dict(values: dict, cls=LoMOEOptions):
    """Editor options from a dict of field names (``steps`` is accepted for num_inference_steps).

    Multimodal: ``steps`` without ``optimize_steps`` keeps t_u at the first half of the steps.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        key = {"steps": "num_inference_steps"}.get(key, key)
        if key not in names:
            raise InvalidOptionError(f"unknown option {key!r}; known: {sorted(names)}")
        expected = str(cls.__dataclass_fields__[key].type)
        if not _json_type_ok(expected, value):
            raise InvalidOptionError(f"option {key} must be {expected}, got {json.dumps(value)[:60]}")
        kwargs[key] = value
    try:
        if cls is MultimodalOptions and "num_inference_steps" in kwargs and "optimize_steps" not in kwargs:
            steps = kwargs.pop("num_inference_steps")
            return MultimodalOptions(**kwargs).at_steps(steps)
        return cls(**kwargs)
    except TypeError as exc:  # e.g. a number compared with a string inside __post_init__
        raise InvalidOptionError(f"invalid options {values}: {exc}") from None


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


def load_model(name: str, device=None, dtype=None, allow_pickle: bool = False):
    from .models.loading import load

    with quiet_libraries():
        return load(name, device=device, dtype=dtype, allow_pickle=allow_pickle)


def fit_to_model(image: Image.Image, regions: list[Region], factor: int, mode: str):
    """Make the image size a multiple of ``factor``.

    ``"pad"`` replicates the edge pixels (and mask edges) up to the next multiple; the caller
    crops the result back with the returned box. ``"crop"`` centre-crops image and masks to
    the lower multiple; the result keeps the cropped size.

    Returns:
        (image, regions, box): ``box`` is ``(left, top, right, bottom)`` of the input inside
        the edited image for "pad", else None.
    """
    w, h = image.size
    if mode == "pad":
        nh, nw = -(-h // factor) * factor, -(-w // factor) * factor
        pads = ((0, nh - h), (0, nw - w))
        arr = np.pad(np.asarray(image.convert("RGB")), (*pads, (0, 0)), mode="edge")
        masks = [np.pad(np.asarray(r.mask), pads, mode="edge") for r in regions]
        box = (0, 0, w, h)
    else:
        nh, nw = h // factor * factor, w // factor * factor
        if nh == 0 or nw == 0:
            raise ImageSizeError(f"image is {w}x{h}; too small to crop to a multiple of {factor}")
        top, left = (h - nh) // 2, (w - nw) // 2
        arr = np.asarray(image.convert("RGB"))[top : top + nh, left : left + nw]
        masks = [np.asarray(r.mask)[top : top + nh, left : left + nw] for r in regions]
        box = None
    regions = [dataclasses.replace(r, mask=m) for r, m in zip(regions, masks, strict=True)]
    return Image.fromarray(np.ascontiguousarray(arr)), regions, box


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


def run(model, request: EditRequest, progress: bool = True, callback=None, inversion=None):
    """Run a request on a loaded model; ``inversion`` reuses an earlier one of the same image (LoMOE).

    Returns the method's result: :class:`EditResult` (LoMOE) or ``MultimodalResult``.
    """
    if request.method == "multimodal":
        return _run_multimodal(model, request, progress, callback, inversion)
    image, regions = request.prepare()
    box = None
    if request.resize is not None and inversion is None:
        f = model.vae_scale_factor
        if image.height % f or image.width % f:
            image, regions, box = fit_to_model(image, regions, f, request.resize)
    model.check_image_size(image.height, image.width)
    if inversion is None:
        # Every mask check before the (slow, chatty) inversion, so errors come first.
        f = model.vae_scale_factor
        masks = validate_regions(regions, image.height, image.width, request.options.mask_threshold)
        latent_masks(masks, (image.height // f, image.width // f))
    generator = torch.Generator().manual_seed(request.seed)
    source = inversion if inversion is not None else image
    with quiet_libraries(), _finite_or_error(model):
        result = lomoe_edit(
            model,
            source,
            regions,
            background_prompt=None if inversion is not None else request.background_prompt,
            options=request.options,
            generator=generator,
            progress=progress,
            callback=callback,
            original=image,
        )
    if box is not None:
        result.image = result.image.crop(box)
        result.reconstruction = result.reconstruction.crop(box)
        result.mask_images = [m.crop(box) for m in result.mask_images]
    return result


def _run_multimodal(model, request: EditRequest, progress, callback, inversion):
    from .multimodal.request import run_request

    if inversion is not None:
        raise InvalidInputError("reusing an inversion is supported by the LoMOE method only")
    image, mask, conditions = request.prepare_multimodal()
    model.check_image_size(image.height, image.width)
    with quiet_libraries(), _finite_or_error(model):
        return run_request(model, request, image, mask, conditions, progress=progress, callback=callback)


def side_images(result, request: EditRequest) -> dict:
    """Name suffix -> image written beside the edit by ``save_masks``."""
    if request.method == "multimodal":
        from .multimodal.request import side_images as multimodal_side_images

        return multimodal_side_images(result, request)
    return {f"_mask_{i}": m for i, m in enumerate(result.mask_images, start=1)}


def save_result(
    result,
    request: EditRequest,
    out: str | Path,
    overwrite: bool = False,
    save_masks: bool = False,
    model_name: str | None = None,
) -> Path:
    """Write the edited PNG (atomically) with every parameter in a ``regionedit`` text chunk."""
    out = request.check_output(out, overwrite)
    sides = {out.with_name(f"{out.stem}{k}.png"): im for k, im in side_images(result, request).items()}
    # Check every target first: a refused mask file must not leave the image half-delivered.
    for p in sides if save_masks else []:
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{p} exists; pass --overwrite to replace it")
    meta = request.metadata(model_name or request.model)
    meta["timings"] = result.timings
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
