"""ShapesBench generation and the real-benchmark loaders on tiny fixtures in their layouts."""

import json

import numpy as np
import pytest
from PIL import Image

from regionedit.bench.realdata import decode_pie_mask, load_lomoe_bench, load_pie_bench, split_quoted
from regionedit.errors import InvalidInputError
from regionedit.shapes.items import shapes_bench, shapes_item


def _same(a, b):
    return (
        a.id == b.id
        and np.array_equal(a.image, b.image)
        and all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks, strict=True))
        and a.prompts == b.prompts
        and a.captions == b.captions
    )


def test_shapes_bench_is_deterministic_and_prefix_stable():
    a, b = shapes_bench(4, seed=3), shapes_bench(6, seed=3)
    assert all(_same(x, y) for x, y in zip(a, b[:4], strict=True))
    assert not _same(shapes_item(3, 0), shapes_item(4, 0))


def test_shapes_items_edit_every_object_with_new_attributes():
    for item in shapes_bench(12, seed=0, min_masks=2, max_masks=7):
        assert 2 <= item.num_masks <= 7
        assert len(item.prompts) == len(item.targets) == len(item.sources) == item.num_masks
        assert len(item.captions) == item.num_masks + 1
        assert item.captions[0] == item.source_caption and item.captions[-1] == item.target_caption
        for m, p, t, s in zip(item.masks, item.prompts, item.targets, item.sources, strict=True):
            assert m.dtype == bool and m.any()
            assert t != s, "an edit must change colour, shape or both"
            assert p == f"a {t['colour']} {t['shape']}"
            assert p in item.target_caption
        union = np.logical_or.reduce(item.masks)
        assert (~union).any(), "there must be background left to preserve"
    counts = {i.num_masks for i in shapes_bench(40, seed=0)}
    assert len(counts) >= 4  # the mask count actually varies


def test_single_set_has_one_mask():
    for item in shapes_bench(6, which="single", seed=1):
        assert item.num_masks == 1 and item.image.shape == (64, 64, 3)


def test_shape_set_changes_the_shape_only_and_renders_the_target():
    from regionedit.shapes.judge import load_judge

    judge = load_judge()
    for item in shapes_bench(8, which="shape", seed=2):
        ((t, s),) = zip(item.targets, item.sources, strict=True)
        assert t["colour"] == s["colour"] and t["shape"] != s["shape"]
        # the target image holds the new object where the mask is, and nothing else changed
        v = judge.classify(item.target_image, item.masks[0])
        assert (v.colour, v.shape) == (t["colour"], t["shape"])
        outside = ~item.masks[0]
        assert np.array_equal(item.target_image[outside], item.image[outside])


def test_single_set_is_unchanged_by_the_shape_set():
    # adding the "shape" set must not move the "single" items already measured (values read
    # from the generator before the "shape" set existed)
    item = shapes_item(0, 3, which="single")
    assert item.prompts == ["a yellow circle"]
    assert item.source_caption == "a yellow square on a brown background"


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="min_masks"):
        shapes_item(0, 0, min_masks=5, max_masks=3)
    with pytest.raises(ValueError, match="set"):
        shapes_item(0, 0, which="triple")


def test_split_quoted():
    assert split_quoted('"a b.png" "c.png"') == ["a b.png", "c.png"]
    assert split_quoted("m.png") == ["m.png"]
    assert split_quoted(["x", "y"]) == ["x", "y"]


def _write_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_lomoe_bench_layout(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    _write_png(tmp_path / "images" / "0.png", img)
    m1 = np.zeros((40, 40), np.uint8)
    m1[:10, :10] = 255
    m2 = np.zeros((40, 40), np.uint8)
    m2[20:, 20:] = 255
    _write_png(tmp_path / "masks" / "0 a.png", m1)  # a space inside a quoted path
    _write_png(tmp_path / "masks" / "0_b.png", m2)
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "0.txt").write_text("a cat and a dog\n")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "1.txt").write_text("a tiger\n")
    _write_png(tmp_path / "images" / "1.png", img)
    data = {
        "0": {
            "image_path": "images/0.png",
            "mask_path": '"masks/0 a.png" "masks/0_b.png"',
            "fg_prompt": '"a lion" "a wolf"',
            "bg_path": "captions/0.txt",
        },
        "1": {
            "image_path": "images/1.png",
            "mask_path": '"masks/0_b.png"',
            "prompt_path": "prompts/1.txt",
            "bg_prompt": "a cat",
        },
    }
    (tmp_path / "LoMOE.json").write_text(json.dumps(data))
    items = load_lomoe_bench(tmp_path / "LoMOE.json", size=32)
    assert [i.id for i in items] == ["lomoe-0", "lomoe-1"]
    a, b = items
    assert a.prompts == ["a lion", "a wolf"] and a.source_caption == "a cat and a dog"
    assert a.image.shape == (32, 32, 3) and a.masks[0].shape == (32, 32)
    assert a.masks[0][:8, :8].all() and not a.masks[0][8:, 8:].any()
    assert b.prompts == ["a tiger"] and b.source_caption == "a cat" and b.num_masks == 1
    data["0"]["fg_prompt"] = '"only one"'
    (tmp_path / "LoMOE.json").write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match="2 masks but 1 prompts"):
        load_lomoe_bench(tmp_path / "LoMOE.json")


def test_pie_mask_decoding():
    m = decode_pie_mask([0, 3, 512 * 2 + 5, 2])
    assert m.shape == (512, 512) and m.sum() == 5
    assert m[0, :3].all() and m[2, 5:7].all() and not m[1].any()
    end = decode_pie_mask([512 * 512 - 2, 10])  # clipped at the end
    assert end.sum() == 2


def test_pie_bench_layout(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    _write_png(tmp_path / "annotation_images" / "0_random_140" / "000000000000.jpg", img)
    rle = []
    for r in range(100, 140):
        rle += [r * 512 + 200, 50]
    mapping = {
        "000000000000": {
            "image_path": "0_random_140/000000000000.jpg",
            "original_prompt": "a [cat] sitting on a bench",
            "editing_prompt": "a [tiger] sitting on a bench",
            "editing_instruction": "make the cat a tiger",
            "editing_type_id": "1",
            "blended_word": "cat tiger",
            "mask": rle,
        },
        "000000000001": {
            "image_path": "0_random_140/000000000000.jpg",
            "original_prompt": "a photo",
            "editing_prompt": "a painting",
            "editing_type_id": "9",
            "mask": [],
        },
    }
    (tmp_path / "mapping_file.json").write_text(json.dumps(mapping))
    items = load_pie_bench(tmp_path, size=64)
    assert len(items) == 1  # the empty-mask global edit is skipped
    it = items[0]
    assert it.source_caption == "a cat sitting on a bench" and it.prompts == ["a tiger sitting on a bench"]
    assert it.masks[0].shape == (64, 64) and it.masks[0][13:17, 26:31].all() and not it.masks[0][:10].any()
    assert load_pie_bench(tmp_path, categories=["9"]) == []


def test_silhouette_masks_edit_the_outline_and_score_the_box():
    from regionedit.shapes.world import SHAPES

    for box_item, tight in zip(
        shapes_bench(6, which="shape", seed=2),
        shapes_bench(6, which="shape", seed=2, mask_kind="silhouette"),
        strict=True,
    ):
        # same scene, targets and box masks for scoring; only the edit mask differs
        assert np.array_equal(box_item.image, tight.image) and box_item.targets == tight.targets
        assert np.array_equal(tight.eval_masks[0], box_item.masks[0])
        assert np.array_equal(box_item.eval_masks[0], box_item.masks[0])
        edit, box = tight.masks[0], tight.eval_masks[0]
        assert edit.any() and not (edit & ~box).any() and (box & ~edit).any()
        # the mask is the old object's own pixels: the source colour is there, not the background
        colour = tight.image[edit].mean(0)
        assert np.abs(colour.astype(float) - tight.image[~box].mean(0)).sum() > 30
        # the new shape reaches outside the old outline unless the old object was a square
        changed = np.any(tight.target_image != tight.image, axis=-1)
        assert tight.sources[0]["shape"] in SHAPES
        if tight.sources[0]["shape"] != "square":
            assert (changed & ~edit).any()
    with pytest.raises(ValueError, match="mask kind"):
        shapes_item(0, 0, mask_kind="outline")
