"""Benchmark metrics on hand-made images whose answers are known."""

import math
import mmap

import numpy as np
import pytest

from regionedit.bench.measure import PeakMemory
from regionedit.metrics import (
    PSNR_CAP_DB,
    attribute_accuracy,
    background_mse,
    background_of,
    background_psnr,
    background_ssim,
    image_metrics,
    seam_band,
    seam_score,
    union_mask,
)
from regionedit.shapes.judge import Verdict


def _box(y0, y1, x0, x1, size=32):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def _flat(value, size=32):
    return np.full((size, size, 3), value, np.uint8)


def test_identical_images_are_perfect():
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    m = image_metrics(img, img, [_box(4, 12, 4, 12)])
    assert m["bg_psnr"] == PSNR_CAP_DB
    assert m["bg_ssim"] == pytest.approx(1.0, abs=1e-12)
    assert m["bg_mse"] == 0.0
    assert m["seam"] == 0.0


def test_changes_inside_the_mask_do_not_touch_background_metrics():
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = src.copy()
    mask = _box(8, 20, 10, 24)
    out[mask] = 255 - out[mask]
    bg = background_of([mask], (32, 32))
    assert background_psnr(src, out, bg) == PSNR_CAP_DB
    # not a single window statistic may read a foreground pixel
    assert background_ssim(src, out, bg) == pytest.approx(1.0, abs=1e-12)


def test_known_shift_gives_known_psnr_and_mse():
    src, out = _flat(100), _flat(100)
    mask = _box(0, 16, 0, 32)
    out[~mask] = 100 + 51  # 0.2 on the [0, 1] scale
    out[mask] = 0  # the foreground is irrelevant
    bg = ~mask
    assert background_mse(src, out, bg) == pytest.approx(0.04)
    assert background_psnr(src, out, bg) == pytest.approx(10 * math.log10(1 / 0.04))


def test_no_uint8_wraparound():
    bg = np.ones((32, 32), bool)
    assert background_mse(_flat(10), _flat(250), bg) == pytest.approx((240 / 255) ** 2)
    assert background_mse(_flat(250), _flat(10), bg) == pytest.approx((240 / 255) ** 2)


def test_background_psnr_does_not_depend_on_mask_size():
    # The official script zeroes the foreground and scores whole images, so the same
    # background error reads better under a bigger mask. Ours must not move.
    rng = np.random.default_rng(2)
    src = rng.integers(0, 200, (32, 32, 3), dtype=np.uint8)
    out = src + 20
    small, large = _box(0, 4, 0, 4), _box(0, 24, 0, 24)
    p_small = background_psnr(src, out, ~small)
    p_large = background_psnr(src, out, ~large)
    assert p_small == pytest.approx(p_large)
    assert p_small == pytest.approx(10 * math.log10(1 / (20 / 255) ** 2))


def test_ssim_falls_with_noise():
    rng = np.random.default_rng(3)
    src = rng.integers(60, 200, (32, 32, 3)).astype(np.uint8)
    bg = ~_box(10, 20, 10, 20)
    values = []
    for sigma in (0, 5, 20, 60):
        noisy = np.clip(src + rng.normal(0, sigma, src.shape), 0, 255).astype(np.uint8)
        values.append(background_ssim(src, noisy, bg))
    assert values[0] == pytest.approx(1.0)
    assert values == sorted(values, reverse=True) and values[-1] < 0.6


def test_overlapping_masks_union_without_overflow():
    masks = [_box(0, 10, 0, 10)] * 300  # a uint8 sum would wrap to 44 and back
    u = union_mask(masks, (32, 32))
    assert u.dtype == bool and u.sum() == 100


def test_empty_background_is_nan():
    full = np.ones((32, 32), bool)
    assert math.isnan(background_psnr(_flat(0), _flat(9), ~full))


def test_seam_of_a_hard_step_has_the_closed_form():
    # flat input; the output fills a w x h box with a step of delta in every channel.
    # Only band pixels 4-adjacent to the box (2w + 2h of them) see it, each g = delta*sqrt(3);
    # the 1-pixel band has 2w + 2h + 4 pixels (its 4 corners touch only diagonally).
    src = _flat(100)
    out = src.copy()
    y0, y1, x0, x1 = 8, 20, 6, 26
    h, w = y1 - y0, x1 - x0
    mask = _box(y0, y1, x0, x1)
    out[mask] = 151
    delta = 51 / 255
    expected = delta * math.sqrt(3) * (2 * w + 2 * h) / (2 * w + 2 * h + 4)
    assert seam_band([mask], (32, 32), 1).sum() == 2 * w + 2 * h + 4
    assert seam_score(src, out, [mask], width=1) == pytest.approx(expected)


def test_seam_ignores_changes_away_from_the_border():
    src = _flat(100)
    out = src.copy()
    mask = _box(8, 24, 8, 24)
    out[12:20, 12:20] = 250  # 4 pixels inside the border: the band sees nothing
    assert seam_score(src, out, [mask]) == 0.0
    out[8:24, 8:24] = 250  # now the change reaches the border
    assert seam_score(src, out, [mask]) > 0.1


class _ListJudge:
    """Returns preset verdicts in order: known answers for the accuracy arithmetic."""

    def __init__(self, verdicts):
        self.verdicts = list(verdicts)
        self.seen = []

    def classify(self, image, mask):
        self.seen.append(mask)
        return self.verdicts[len(self.seen) - 1]


def test_attribute_accuracy_counts_both_colour_and_shape():
    judge = _ListJudge(
        [
            Verdict("red", "circle", 0.9, 0.9),  # both right
            Verdict("red", "square", 0.9, 0.9),  # colour right only
            Verdict("blue", "triangle", 0.9, 0.9),  # shape right only
            Verdict("green", "circle", 0.9, 0.9),  # neither
        ]
    )
    targets = [
        {"colour": "red", "shape": "circle"},
        {"colour": "red", "shape": "circle"},
        {"colour": "white", "shape": "triangle"},
        {"colour": "yellow", "shape": "square"},
    ]
    masks = [_box(i * 8, i * 8 + 6, 0, 6) for i in range(4)]
    score = attribute_accuracy(judge, _flat(0), masks, targets)
    assert (score.both, score.colour, score.shape) == (0.25, 0.5, 0.5)
    assert all(a is b for a, b in zip(judge.seen, masks, strict=True))


def test_peak_memory_sees_a_temporary_allocation():
    with PeakMemory("cpu") as base:
        pass
    with PeakMemory("cpu") as mem:
        # fresh pages from the kernel: a malloc could reuse memory an earlier test left resident
        block = mmap.mmap(-1, 64 * 2**20)
        block.write(b"\1" * len(block))  # 64 MiB, touched
        block.close()
    assert mem.kind in ("rss_hwm", "rss_sampled")
    assert mem.peak_mb > base.peak_mb + 40
