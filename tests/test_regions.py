import numpy as np
import pytest
import torch
from PIL import Image

from regionedit import LoMOEOptions
from regionedit.errors import InvalidMaskError, PromptCountError
from regionedit.lomoe.prepare import prepare_lomoe
from regionedit.regions import Region, active_weights, latent_masks, mask_to_array

from .conftest import box


def binary_masks(regions):
    """The binary masks a LoMOE edit of a 16x16 image (VAE factor 4) prepares."""
    prepared = prepare_lomoe(Image.new("RGB", (16, 16)), regions, "bg", LoMOEOptions(), 4)
    return [r.mask for r in prepared.regions]


def test_mask_forms_and_threshold(tmp_path):
    m = np.zeros((16, 16), np.uint8)
    m[2:6, 2:6] = 200
    m[8:10, 8:10] = 100  # below 0.5 after /255: not in the mask
    Image.fromarray(m).save(tmp_path / "m.png")
    rgb = Image.fromarray(np.stack([m] * 3, -1))
    for form in (tmp_path / "m.png", str(tmp_path / "m.png"), Image.fromarray(m), rgb, m, m / 255.0):
        (binary,) = binary_masks([Region(form, "x")])
        assert binary.sum() == 16 and binary[3, 3] and not binary[9, 9]


@pytest.mark.parametrize(
    "region,msg",
    [
        (Region(np.zeros((16, 16)), "x"), "mask 1 is empty"),
        (Region(np.ones((8, 16)), "x"), "mask 1 is 16x8 but the image is 16x16"),
        (Region(np.ones((16, 16)), ""), "empty prompt"),
        (Region(np.ones((16, 16)), "x", start=0.5, end=0.2), "start < end"),
        (Region(np.full((16, 16), np.nan), "x"), "NaN"),
        (Region(np.ones((2, 16, 16)), "x"), "2-D"),
    ],
)
def test_region_errors(region, msg):
    with pytest.raises((InvalidMaskError, PromptCountError), match=msg):
        binary_masks([region])


def test_latent_masks_background_first_and_overlap_policies():
    a, b = box(0, 32, 0, 32), box(16, 48, 16, 48)
    avg = latent_masks([a, b], (16, 16))
    assert avg.shape == (3, 1, 16, 16)
    assert avg[0, 0, 15, 15] == 1 and avg[0, 0, 6, 6] == 0
    assert avg[1, 0, 6, 6] == 1 and avg[2, 0, 6, 6] == 1  # overlap: both weigh in (averaged)
    last = latent_masks([a, b], (16, 16), overlap="last")
    assert last[1, 0, 6, 6] == 0 and last[2, 0, 6, 6] == 1
    assert torch.all(last[1:].sum(0) <= 1)


def test_feather_softens_edges_but_keeps_centre():
    m = latent_masks([box(16, 48, 16, 48)], (16, 16), feather=1.0)
    assert 0 < m[1, 0, 4, 8] < 1  # the edge cell is now fractional
    assert m[1, 0, 8, 8] > 0.95
    assert torch.allclose(m[0], torch.clamp(1 - m[1], 0, 1))


def test_mask_too_small_for_latent_grid():
    with pytest.raises(InvalidMaskError, match="covers no cell"):
        latent_masks([box(1, 2, 1, 2)], (16, 16))


def test_active_step_range_hands_area_back_to_background():
    w = latent_masks([box(0, 32, 0, 32)], (16, 16))
    regions = [Region(None, "x", start=0.5, end=1.0)]
    early = active_weights(w, regions, 0, 10)
    assert early[1].sum() == 0 and early[0].min() == 1
    late = active_weights(w, regions, 6, 10)
    assert torch.equal(late, w)


def test_mask_to_array_scales_255():
    assert mask_to_array(np.full((2, 2), 255)).max() == 1.0


def test_lomoe_prepares_its_masks_by_the_mask_resize_option():
    mask = np.zeros((16, 16), bool)
    mask[3:14, 3:14] = True  # 4-px cells: the edge cells are a quarter and a half covered
    weights = {}
    for rule in ("nearest", "majority"):
        opts = LoMOEOptions(mask_resize=rule)
        weights[rule] = prepare_lomoe(
            Image.new("RGB", (16, 16)), [Region(mask, "x")], "bg", opts, 4
        ).latent_masks
        assert torch.equal(weights[rule], latent_masks([mask.astype(np.float32)], (4, 4), resize=rule))
    assert not torch.equal(weights["nearest"], weights["majority"])


def test_lomoe_masks_on_the_token_or_the_latent_grid():
    # 16 px, VAE factor 4, 2x2-cell tokens: a mask on one latent cell takes its whole token on the
    # token grid, and only that cell on the latent grid
    mask = np.zeros((16, 16), bool)
    mask[8:12, 4:8] = True
    weights = {}
    for grid in ("token", "latent"):
        opts = LoMOEOptions(mask_grid=grid, mask_resize="majority")
        prepared = prepare_lomoe(Image.new("RGB", (16, 16)), [Region(mask, "x")], "bg", opts, 4, patch_size=2)
        weights[grid] = prepared.latent_masks[1, 0]
        assert prepared.latent_masks.shape == (2, 1, 4, 4)
    token = torch.zeros(4, 4)
    token[2:4, 0:2] = 1
    cell = torch.zeros(4, 4)
    cell[2, 1] = 1
    assert torch.equal(weights["token"], token)
    assert torch.equal(weights["latent"], cell)


def test_majority_resize_takes_cells_at_least_half_covered():
    # 64 px -> 16 cells of 4 px; the box covers pixels 3..13: its first cell a quarter, its last a half
    m = box(3, 14, 3, 14)
    near = latent_masks([m], (16, 16))[1, 0]
    major = latent_masks([m], (16, 16), resize="majority")[1, 0]
    assert near[0, 0] == 0 and near[3, 3] == 1  # top-left pixels 0 (outside) and 12 (inside)
    assert major[1:3, 1:3].all() and major[0].sum() == 0 and major[:, 0].sum() == 0
    assert major[3, 1] == 1 and major[3, 3] == 0  # half an edge cell in, a quarter corner out


def test_majority_resize_keeps_a_small_mask_on_its_best_cell():
    major = latent_masks([box(5, 7, 5, 7)], (16, 16), resize="majority")[1, 0]
    assert major.sum() == 1 and major[1, 1] == 1
    with pytest.raises(InvalidMaskError, match="mask resize"):
        latent_masks([box(5, 7, 5, 7)], (16, 16), resize="bilinear")
