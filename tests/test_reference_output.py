"""LoMOE at the paper's defaults must give the same bits as the committed reference.

The reference (``tests/data/lomoe_tiny_paper.*``) was made by the editor before the model-family
interface existed; any refactor of the edit path has to reproduce it exactly.
"""

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
    expected = load_file(DATA / "lomoe_tiny_paper.safetensors")["latents"]
    assert torch.equal(result.latents, expected)
    with Image.open(DATA / "lomoe_tiny_paper.png") as im:
        assert np.array_equal(np.asarray(result.image), np.asarray(im.convert("RGB")))
