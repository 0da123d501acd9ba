"""One edit request from start to file: shared by the CLI, the batch runner and the UI."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .errors import InvalidInputError, OutputExistsError, PromptCountError
from .io import load_image, save_image
from .lomoe import EditResult, LoMOEOptions
from .lomoe import edit as lomoe_edit
from .regions import Region, mask_to_array

METHODS = ("lomoe",)


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
    options: LoMOEOptions = field(default_factory=LoMOEOptions)
    model: str = "mini"

    def check_output(self, out: str | Path, overwrite: bool) -> Path:
        out = Path(out)
        if out.suffix.lower() != ".png":
            raise InvalidInputError(f"output {out} must end in .png (parameters are stored in a PNG chunk)")
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
        return out

    def prepare(self) -> tuple[Image.Image, list[Region]]:
        """Read the image and masks and check counts and sizes; no model needed."""
        if self.method not in METHODS:
            raise InvalidInputError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise InvalidInputError(f"seed must be a non-negative integer, got {self.seed!r}")
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
        if not isinstance(self.background_prompt, str):
            raise InvalidInputError("background_prompt must be a string")
        image = self.image if isinstance(self.image, Image.Image) else load_image(self.image)
        negs = (self.negative_prompts * n) if len(self.negative_prompts) == 1 else self.negative_prompts
        regions = []
        for i, (mask, prompt) in enumerate(zip(self.masks, self.prompts, strict=True), start=1):
            arr = mask_to_array(mask, what=f"mask {i}")
            regions.append(Region(arr, prompt, negs[i - 1] if negs else None))
        return image, regions

    def metadata(self, model_name: str) -> dict:
        import diffusers
        import transformers

        from . import __version__

        return {
            "regionedit": __version__,
            "method": self.method,
            "model": model_name,
            "seed": self.seed,
            "background_prompt": self.background_prompt,
            "prompts": list(self.prompts),
            "negative_prompts": list(self.negative_prompts),
            "masks": [str(m) if isinstance(m, (str, Path)) else "<array>" for m in self.masks],
            "options": dataclasses.asdict(self.options),
            "versions": {
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
            },
        }


def load_model(name: str, device=None, dtype=None, allow_pickle: bool = False):
    from .models.loading import load

    return load(name, device=device, dtype=dtype, allow_pickle=allow_pickle)


def run(model, request: EditRequest, progress: bool = True, callback=None, inversion=None) -> EditResult:
    """Run a request on a loaded model; ``inversion`` reuses an earlier one of the same image."""
    image, regions = request.prepare()
    model.check_image_size(image.height, image.width)
    generator = torch.Generator().manual_seed(request.seed)
    source = inversion if inversion is not None else image
    return lomoe_edit(
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


def save_result(
    result: EditResult,
    request: EditRequest,
    out: str | Path,
    overwrite: bool = False,
    save_masks: bool = False,
    model_name: str | None = None,
) -> Path:
    """Write the edited PNG (atomically) with every parameter in a ``regionedit`` text chunk."""
    out = request.check_output(out, overwrite)
    meta = request.metadata(model_name or request.model)
    meta["timings"] = result.timings
    path = save_image(result.image, out, overwrite=overwrite, text={"regionedit": json.dumps(meta)})
    if save_masks:
        for i, m in enumerate(result.mask_images, start=1):
            save_image(m, out.with_name(f"{out.stem}_mask_{i}.png"), overwrite=True)
    return path


def read_metadata(path: str | Path) -> dict:
    """The parameters stored in a PNG written by regionedit."""
    with Image.open(path) as im:
        text = im.text.get("regionedit") if hasattr(im, "text") else None
    if text is None:
        raise InvalidInputError(f"{path} has no regionedit metadata")
    return json.loads(text)
