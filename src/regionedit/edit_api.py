"""One edit request from plain data to file: what the CLI, the batch runner and the web page share.

A front end builds an :class:`EditRequest` (paths or images, prompts, option values as a
mapping), calls :meth:`EditRequest.prepare` once (every file read and every check, before the
model loads where the model's folder tells its VAE factor), then :func:`run` and
:func:`save_result`. The request's method (:mod:`regionedit.methods`) checks, prepares and runs
it; its options are the method's defaults, the model's recommended settings, then the request's
values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import methods
from .errors import InvalidInputError, InvalidOptionError, NonFiniteError, OutputExistsError, RegionEditError
from .execution import ExecutionOptions, make_execution
from .io import save_image
from .models.loading import ModelInfo, describe, load
from .prepared import PreparedEdit
from .progress import Report
from .quiet import quiet_libraries


@dataclass
class EditRequest:
    """Everything that defines an edit, as plain data; checked once by :meth:`prepare`.

    ``options`` is a mapping of option values over the model's recommended settings (``steps``
    is accepted for ``num_inference_steps``), or an options object used as it is. The multimodal
    method takes a prompt per mask as LoMOE does, or one prompt and no mask (the mask is then
    estimated); ``background_prompt`` is the source caption. A mask may be asked for instead of
    given: a :class:`~regionedit.masks.query.MaskQuery` (words, clicks or a box), found when the
    model is loaded, with the ``detector`` and ``segmenter`` named here if any. The fields after
    ``model`` are taken by some methods only (``Method.request_fields``); setting another's is an error.
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
    resize: str | None = None  # None: sizes must fit the model; "pad" or "crop"
    controls: list = field(default_factory=list)  # multimodal: "KIND=PATH|auto" or Condition
    control_scales: list[float] = field(default_factory=list)  # the first controls' scales
    controlnets: dict = field(default_factory=dict)  # kind -> diffusers folder (default: the model's)
    execution: Mapping | ExecutionOptions | None = None
    detector: str | None = None  # words -> boxes: a transformers zero-shot detector (hub id or folder)
    segmenter: str | None = None  # boxes and clicks -> masks: SAM or SAM-HQ (hub id or folder)

    def input_paths(self) -> list[Path]:
        """The files this request reads (image, masks, control maps), resolved."""
        paths = [
            self.image,
            *self.masks,
            *(str(c).partition("=")[2] for c in self.controls if isinstance(c, str)),
        ]
        return [Path(p).resolve() for p in paths if isinstance(p, (str, Path)) and p]

    def check_output(self, out: str | Path, overwrite: bool) -> Path:
        out = Path(out)
        if out.suffix.lower() != ".png":
            raise InvalidInputError(f"output {out} must end in .png (parameters are stored in a PNG chunk)")
        if out.resolve() in self.input_paths():  # --overwrite replaces outputs, never an input
            raise InvalidInputError(f"output {out} is an input of this edit; write the edit to another file")
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
        return out

    def given_fields(self) -> list[str]:
        """The method-specific fields this request sets."""
        return [f for f in sorted(methods.optional_fields()) if getattr(self, f) not in (None, [], {}, ())]

    def _check_fields(self):
        try:
            method = methods.get(self.method)
        except InvalidOptionError as exc:
            raise InvalidInputError(str(exc)) from None
        methods.check_fields(method, self.given_fields())
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise InvalidInputError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.background_prompt, str):
            raise InvalidInputError("background_prompt must be a string")
        method.check_request(self)
        return method

    def prepare(self, model) -> PreparedEdit:
        """Read and check everything: image, masks, prompts, options, controls.

        Args:
            model: a loaded model or a :class:`~regionedit.models.loading.ModelInfo` (from
                ``describe``): its VAE factor and recommended settings are used.
        """
        method = self._check_fields()
        factor = model.vae_scale_factor
        if factor is None:
            raise InvalidInputError(f"the VAE factor of {self.model!r} is known only once it is loaded")
        patch = getattr(model, "patch_size", 1)  # latent cells per token side (flow transformers: 2)
        settings = model.settings  # None: the model is unknown (only the inputs are checked)
        options = method.options(self.options, method.model_settings(settings))
        execution = make_execution(self.execution)
        found = dataclasses.replace(self, masks=self.found_masks(model))
        prepared = method.prepare(found, options, factor, patch, settings)
        return dataclasses.replace(prepared, execution=execution)

    def asks_for_masks(self) -> bool:
        """Does a mask have to be found (words, clicks, a box) rather than read?"""
        from .masks.query import MaskQuery

        return any(isinstance(m, MaskQuery) for m in self.masks)

    def found_masks(self, model) -> list:
        """The masks, each query found in the image with ``model`` once it is loaded; before that
        (``model`` a ModelInfo) a query's points and box are checked and it stands as a full mask."""
        from .masks.query import MaskQuery, find_all

        if not self.asks_for_masks():
            return list(self.masks)
        from .masks import check_box, check_points
        from .prepared import read_image

        image = read_image(self.image)
        size = (image.height, image.width)
        queries = [m for m in self.masks if isinstance(m, MaskQuery)]
        if isinstance(model, ModelInfo):
            for m in queries:
                check_points(m.points, size)
                check_points(m.negative_points, size, "negative point")
                if m.box is not None:
                    check_box(m.box, size)
            found = (np.ones(size, bool) for _ in queries)
        else:
            found = iter(
                f.mask
                for f in find_all(
                    queries, image, model, self.background_prompt, self.detector, self.segmenter, self.seed
                )
            )
        return [next(found) if isinstance(m, MaskQuery) else m for m in self.masks]

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
            "masks": [mask_record(m) for m in self.masks],
            "options": dataclasses.asdict(prepared.options),
            "resize": self.resize,
            "versions": {
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
            },
        }
        return {**meta, **methods.get(self.method).metadata(self, prepared)}


def mask_record(mask):
    """How a request's mask is recorded: its path, its query, or ``"<array>"``."""
    from .masks.query import MaskQuery

    if isinstance(mask, MaskQuery):
        return mask.to_json()
    return str(mask) if isinstance(mask, (str, Path)) else "<array>"


def masks_from_json(items, resolve=lambda path: path, where: str = "masks") -> list:
    """A spec's or a batch line's masks: paths (``resolve``d) or query objects."""
    from .masks.query import from_json

    items = [items] if isinstance(items, (str, dict)) else list(items or [])
    return [
        resolve(m) if isinstance(m, str) else from_json(m, f"{where} {i}") for i, m in enumerate(items, 1)
    ]


# Keys of a spec file (CLI --spec) and of a batch manifest line, with their JSON types.
SPEC_FIELDS = {
    "image": (str,),
    "masks": (list, str, dict),
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
    "detector": (str,),
    "segmenter": (str,),
}
_LISTS_OF_STR = ("prompts", "negative_prompts", "controls")


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
        if key == "masks":
            masks_from_json(value, where=f"{where}: mask")  # paths or query objects
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
    try:
        method = methods.get(spec.get("method"))
    except InvalidOptionError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None
    try:
        methods.check_fields(method, [k for k in spec if k in methods.optional_fields()], repr)
    except InvalidInputError as exc:
        raise InvalidInputError(f'{where}: {exc} (set "method")') from None
    try:
        if "options" in spec:
            methods.check_option_names(method.name, spec["options"])
        make_execution(spec.get("execution"))
    except InvalidOptionError as exc:
        raise InvalidOptionError(f"{where}: {exc}") from None
    return spec


def prepare_and_load(request: EditRequest, **load_arguments):
    """Prepare ``request`` against its model's files, then load the model: ``(model, prepared)``.

    For a model whose VAE factor is known only after loading (a single file, an uncached hub id)
    the inputs are checked first without it, and the size checks follow the load. Masks asked for
    (words, clicks) are found with the loaded model: such a request is prepared again then.
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
    model = load(info, **load_arguments)
    if prepared is None or request.asks_for_masks():
        prepared = request.prepare(model)
    return model, prepared


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


def run(model, prepared: PreparedEdit, progress: bool | Report = True, callback=None, inversion=None):
    """Run a prepared edit on a loaded model with the request's seed.

    ``inversion`` reuses an earlier LoMOE inversion of the same image and caption. Returns the
    method's result: :class:`~regionedit.lomoe.EditResult` or ``MultimodalResult``.
    """
    generator = torch.Generator().manual_seed(prepared.seed)
    with quiet_libraries(), _finite_or_error(model):
        return methods.get(prepared.method).run(model, prepared, generator, progress, callback, inversion)


def side_images(result, prepared: PreparedEdit) -> dict:
    """Name suffix -> image written beside the edit by ``save_masks``."""
    return methods.get(prepared.method).side_images(result, prepared)


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
        if p.resolve() in request.input_paths():
            raise InvalidInputError(
                f"{p} (written by --save-masks) is an input of this edit; choose another --out"
            )
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
