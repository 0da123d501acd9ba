"""LoMOE at the paper's defaults must give the same bits as the committed reference.

The references (``tests/data/lomoe_tiny_paper*.*``) were made by the editor before the model-family
interface existed, one per kind of CPU it was run on (float kernels round differently across CPU
generations: the two differ by 8e-4 at most in the latents, one level in the pixels); any refactor
of the edit path has to reproduce one of them exactly. On a CPU of a third kind the output can
only be held to that rounding: the test then checks closeness and says so.
"""

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from regionedit import LoMOEOptions, Region
from regionedit.lomoe import edit

from .conftest import box

DATA = Path(__file__).parent / "data"


def test_lomoe_at_paper_defaults_is_bit_identical(tiny_model, image64):
    regions = [Region(box(6, 26, 6, 26), "a blue square"), Region(box(34, 58, 28, 56), "a red circle")]
    result = edit(
        tiny_model,
        image64,
        regions,
        background_prompt="a red square and a blue square on a gray background",
        options=LoMOEOptions(),
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    pixels = np.asarray(result.image)
    references = sorted(DATA.glob("lomoe_tiny_paper*.safetensors"))
    assert len(references) == 2
    for path in references:
        expected = load_file(path)["latents"]
        if torch.equal(result.latents, expected):
            with Image.open(path.with_suffix(".png")) as im:
                assert np.array_equal(pixels, np.asarray(im.convert("RGB")))
            return
    # another kind of CPU: within the rounding seen between the two (a 1% change of the background
    # weight moves the latents by 7e-3)
    closest = min((load_file(p)["latents"] - result.latents).abs().max().item() for p in references)
    warnings.warn(
        f"no reference matches bit for bit on this CPU; closest differs by {closest:.1e}", stacklevel=1
    )
    assert closest < 2e-3
