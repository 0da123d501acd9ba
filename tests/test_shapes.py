import json

import numpy as np
import pytest

from regionedit.shapes.model import VOCAB_WORDS, build_tokenizer
from regionedit.shapes.world import COLOURS, SHAPES, make_scene, render, write_scene


def test_same_seed_same_scene_and_pixels():
    a, b = make_scene(7, 5), make_scene(7, 5)
    assert a == b
    assert np.array_equal(render(a)[0], render(b)[0])
    assert make_scene(8, 5) != a


@pytest.mark.parametrize("n", [1, 3, 7])
def test_objects_do_not_overlap_and_masks_match(n):
    scene = make_scene(n, n)
    image, masks = render(scene)
    assert image.shape == (64, 64, 3) and len(masks) == n
    total = np.sum(masks, axis=0)
    assert total.max() == 1  # no pixel belongs to two objects
    for obj, m in zip(scene.objects, masks, strict=True):
        assert obj.colour in COLOURS and obj.shape in SHAPES
        x0, y0, x1, y1 = obj.bbox
        assert m[y0:y1, x0:x1].sum() == m.sum() > 0  # the silhouette lies inside its box
        colour = np.array(COLOURS[obj.colour])
        inner = image[m]
        assert np.abs(inner.astype(int) - colour).max(axis=1).min() <= 2  # drawn in its colour


def test_caption_lists_objects_and_background():
    scene = make_scene(3, 3)
    cap = scene.caption
    assert cap.endswith(f"on a {scene.background} background")
    for obj in scene.objects:
        assert f"a {obj.colour} {obj.shape}" in cap
    assert cap.count(" and ") == 1 and cap.count(",") == 1


def test_write_scene_files(tmp_path):
    scene = make_scene(1, 2)
    out = write_scene(scene, tmp_path / "s")
    meta = json.loads((out / "scene.json").read_text())
    assert meta["caption"] == scene.caption and len(meta["objects"]) == 2
    from PIL import Image

    m = np.asarray(Image.open(out / meta["objects"][0]["mask"]))
    x0, y0, x1, y1 = meta["objects"][0]["bbox"]
    assert m[y0:y1, x0:x1].min() == 255 and m.sum() // 255 == (y1 - y0 + 2) * (x1 - x0 + 2)
    assert Image.open(out / "image.png").size == (64, 64)


def test_tokenizer_has_one_token_per_word():
    tok = build_tokenizer()
    for word in VOCAB_WORDS:
        ids = tok(word).input_ids
        assert len(ids) == 3, (word, tok.convert_ids_to_tokens(ids))
    assert tok.model_max_length == 48
