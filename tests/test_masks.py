"""Masks from words, clicks and boxes: the model's attention on every family, GrabCut from clicks,
transformers' detectors and segmenters on tiny random folders; the front ends' errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import regionedit
from regionedit import masks
from regionedit.cli import main
from regionedit.errors import DependencyError, InvalidInputError, ModelLoadError
from regionedit.masks.query import MaskQuery, apply_grow, find_all, from_json
from regionedit.shapes.world import make_scene, render

from . import tiny_finders
from .test_flow import BUILDERS


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


@pytest.fixture(scope="module")
def scene():
    s = make_scene(2, 3, size=128)  # a yellow triangle, a white triangle, a purple square on teal
    image, silhouettes = render(s)
    return s, Image.fromarray(image), silhouettes


@pytest.fixture(scope="module")
def mini():
    return regionedit.load("mini")


def test_words_are_found_by_the_mini_models_attention(mini, scene):
    s, image, silhouettes = scene
    for obj, silhouette in zip(s.objects, silhouettes, strict=True):
        found = masks.from_words(mini, image, obj.phrase, caption=s.caption)
        assert found.how == "attention" and found.score >= masks.MIN_SCORE
        assert iou(found.mask, silhouette) > 0.8, obj.phrase
    again = masks.from_words(mini, image, s.objects[0].phrase, caption=s.caption)
    assert np.array_equal(
        again.mask, masks.from_words(mini, image, s.objects[0].phrase, caption=s.caption).mask
    )


def test_all_instances_and_words_that_are_not_there(mini, scene):
    s, image, silhouettes = scene
    both = masks.from_words(
        mini, image, "triangle", caption=s.caption, all_instances=True, min_score=0, count=2
    )
    assert len(both) >= 2  # the yellow and the white triangle
    assert (
        max(iou(f.mask, silhouettes[0]) for f in both) > 0.5
        and max(iou(f.mask, silhouettes[1]) for f in both) > 0.5
    )
    with pytest.raises(masks.MaskNotFoundError, match=r"finds nothing that 'a giraffe' names \(best score"):
        masks.from_words(mini, image, "a giraffe")


def test_regions_naming_the_same_words_take_distinct_objects_left_to_right(mini, scene):
    s, image, silhouettes = scene
    triangles = sorted(silhouettes[:2], key=lambda m: np.nonzero(m)[1].mean())  # left, then right
    found = find_all([MaskQuery(words="triangle"), MaskQuery(words="Triangle ")], image, mini, s.caption,
                     min_score=0)  # fmt: skip
    assert iou(found[0].mask, triangles[0]) > 0.8 and iou(found[1].mask, triangles[1]) > 0.8
    grown = find_all([MaskQuery(words="triangle"), MaskQuery(words="triangle", grow="box")], image, mini,
                     s.caption, min_score=0)  # fmt: skip
    assert np.array_equal(grown[0].mask, found[0].mask)  # each query keeps its own grow
    assert np.array_equal(grown[1].mask, apply_grow(found[1].mask, "box"))
    alone = find_all([MaskQuery(words="triangle")], image, mini, s.caption, min_score=0)[0]
    assert np.array_equal(alone.mask, masks.from_words(mini, image, "triangle", s.caption, min_score=0).mask)
    with pytest.raises(masks.MaskNotFoundError, match=r"^4 regions name 'a purple square' but only"):
        find_all([MaskQuery(words=s.objects[2].phrase)] * 4, image, mini, s.caption)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_every_flow_family_reads_its_joint_attention(family):
    model = regionedit.models.loading.from_components(BUILDERS[family](), name=family)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    assert model.word_positions("a red square on gray", "red square")
    attention = masks.word_map(model, image, "red square", caption="a red square on gray")
    assert attention.values.shape == (32, 48) and np.isfinite(attention.values).all()
    found = masks.from_words(model, image, "red square", caption="a red square on gray", min_score=0)
    assert found.mask.shape == (32, 48)


def test_the_unet_family_and_sdxl_give_their_word_positions(tiny_model):
    assert tiny_model.word_positions("a red square and a blue circle", "a blue circle") != []
    assert tiny_model.word_positions("a red square", "a blue circle") == []


def test_clicks_without_a_segmenter_fit_flat_colours_and_noise(scene):
    s, image, silhouettes = scene
    pixels = np.asarray(image)
    noisy = np.clip(pixels + np.random.default_rng(0).normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    for img in (pixels, noisy):
        for silhouette in silhouettes:
            ys, xs = np.nonzero(silhouette)
            point = (int(xs.mean()), int(ys.mean()))
            assert iou(masks.from_points(img, [point]).mask, silhouette) > 0.9
    # a negative click on the other triangle keeps it out of a click on both
    ys0, xs0 = np.nonzero(silhouettes[0])
    ys1, xs1 = np.nonzero(silhouettes[1])
    one = masks.from_points(image, [(int(xs0.mean()), int(ys0.mean()))], [(int(xs1.mean()), int(ys1.mean()))])
    assert not (one.mask & silhouettes[1]).any()


def test_boxes_growing_and_bad_coordinates(scene):
    _, image, _ = scene
    found = masks.from_box(image, (10, 20, 50, 60))
    assert found.box == (10, 20, 50, 60) and found.mask.sum() == 40 * 40
    assert apply_grow(found.mask, 2).sum() == 44 * 44 and apply_grow(found.mask, "box+1").sum() == 42 * 42
    wide = Image.new("RGB", (96, 64))
    with pytest.raises(InvalidInputError, match=r"point \(96, 10\) is outside the 96x64 image"):
        masks.from_points(wide, [(96, 10)])
    with pytest.raises(InvalidInputError, match="not inside the 96x64 image"):
        masks.from_box(wide, (0, 0, 97, 10))
    with pytest.raises(InvalidInputError, match="grow must be"):
        MaskQuery(words="x", grow="boxes")
    with pytest.raises(InvalidInputError, match="one of words, points or box"):
        from_json({"words": "x", "box": [0, 0, 1, 1]})
    with pytest.raises(InvalidInputError, match="unknown key"):
        from_json({"word": "x"})


@pytest.fixture(scope="module")
def finders(tmp_path_factory):
    root = tmp_path_factory.mktemp("finders")
    return {
        "sam": tiny_finders.sam(root / "sam"),
        "sam-hq": tiny_finders.sam(root / "sam-hq", hq=True),
        "grounding-dino": tiny_finders.grounding_dino(root / "gdino"),
        "owlv2": tiny_finders.owlv2(root / "owlv2"),
    }


WIDE = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", ["sam", "sam-hq"])
def test_segmenters_cut_clicks_and_boxes_at_the_images_size(finders, name):
    from regionedit.masks.segmenters import load_segmenter

    segmenter = load_segmenter(str(finders[name]))
    clicked = masks.from_points(WIDE, [(70, 40)], [(5, 5)], segmenter=segmenter)
    boxed = masks.from_box(WIDE, (24, 16, 72, 48), segmenter=segmenter)
    assert clicked.mask.shape == boxed.mask.shape == (64, 96) and clicked.how == "segmenter"
    assert 0 <= clicked.score <= 1.5


@pytest.mark.parametrize("name", ["grounding-dino", "owlv2"])
def test_detectors_give_boxes_in_image_pixels_and_a_segmenter_cuts_them(finders, name):
    from regionedit.masks.segmenters import detect, load_detector, load_segmenter

    if name == "owlv2":
        pytest.importorskip(
            "scipy", reason="OWL image processors need scipy: pip install 'regionedit[masks]'"
        )
    detector = load_detector(str(finders[name]))
    boxes = detect(detector, WIDE, "red box", 0.0)
    assert boxes and all(0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 64 for (x0, y0, x1, y1), _ in boxes)
    found = masks.from_words(None, WIDE, "red box", detector=detector, segmenter=load_segmenter(str(finders["sam"])),
                             all_instances=True, min_score=0)  # fmt: skip
    assert found and all(f.mask.shape == (64, 96) and f.how == "detector+segmenter" for f in found)
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)


def test_finders_that_cannot_load_are_one_line(tmp_path, finders):
    from regionedit.masks.segmenters import load_detector, load_segmenter

    (tmp_path / "sam2").mkdir()
    (tmp_path / "sam2" / "config.json").write_text(json.dumps({"architectures": ["Sam2Model"]}))
    with pytest.raises(DependencyError, match="need torchvision"):
        load_segmenter(str(tmp_path / "sam2"))
    with pytest.raises(ModelLoadError, match="a segmenter is a SamModel or SamHQModel"):
        load_segmenter(str(finders["owlv2"]))
    with pytest.raises(ModelLoadError, match="cannot load the detector"):
        load_detector(str(tmp_path / "nowhere"))


def test_the_mask_command(tmp_path, capsys, finders):
    s = make_scene(2, 3, size=128)
    Image.fromarray(render(s)[0]).save(tmp_path / "in.png")
    base = ["mask", "--image", str(tmp_path / "in.png")]
    assert main([*base, "--words", "a white triangle", "--caption", s.caption, "--grow", "box+1", "--out",
                 str(tmp_path / "w.png")]) == 0  # fmt: skip
    assert (
        main([*base, "--point", "40,100", "--negative-point", "5,5", "--out", str(tmp_path / "p.png")]) == 0
    )
    assert (
        main(
            [
                *base,
                "--box",
                "10,10,50,60",
                "--segmenter",
                str(finders["sam"]),
                "--out",
                str(tmp_path / "b.png"),
            ]
        )
        == 0
    )
    assert (
        main([*base, "--words", "triangle", "--all", "--min-score", "0", "--out", str(tmp_path / "t.png")])
        == 0
    )
    out = capsys.readouterr().out
    assert "score" in out and (tmp_path / "t_1.png").exists() and (tmp_path / "t_2.png").exists()
    w = np.asarray(Image.open(tmp_path / "w.png")) > 127
    ys, xs = np.nonzero(w)
    assert w.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # grown to its box
    cases = [
        ([*base, "--point", "400,10"], "outside the 128x128 image"),
        ([*base, "--words", "a giraffe"], "finds nothing that 'a giraffe' names (best score"),
        ([*base, "--words", "cat", "--detector", str(tmp_path / "nowhere")], "cannot load the detector"),
        ([*base, "--point", "1,2,3"], "--point must look like X,Y"),
    ]
    for argv, fragment in cases:
        assert main([*argv, "--out", str(tmp_path / "bad.png")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fragment in err and not (tmp_path / "bad.png").exists(), err


def test_a_region_from_words_edits_the_same_through_cli_spec_and_batch(tmp_path, capsys):
    """The words are found and edited in one command; a spec file and a batch line with the same
    query give the same pixels; the masks used are saved and recorded."""
    from regionedit.edit_api import read_metadata

    s = make_scene(2, 3, size=128)
    Image.fromarray(render(s)[0]).save(tmp_path / "in.png")
    fast = ["--steps", "4", "--bootstrap-steps", "1"]
    assert main(["edit", "--image", str(tmp_path / "in.png"), "--region", "a white triangle=a red square",
                 "--grow", "box+1", "--background-prompt", s.caption, "--save-masks", "--out",
                 str(tmp_path / "cli.png"), *fast]) == 0, capsys.readouterr().err  # fmt: skip
    query = {"words": "a white triangle", "grow": "box+1"}
    spec = {"image": "in.png", "masks": [query], "prompts": ["a red square"], "background_prompt": s.caption,
            "options": {"steps": 4, "bootstrap_steps": 1}, "out": str(tmp_path / "spec.png")}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main(["edit", "--spec", str(tmp_path / "spec.json")]) == 0
    line = {"id": "words", **{k: v for k, v in spec.items() if k != "out"}}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(line) + "\n")
    assert main(["batch", str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / "batch")]) == 0
    cli = np.asarray(Image.open(tmp_path / "cli.png"))
    assert np.array_equal(cli, np.asarray(Image.open(tmp_path / "spec.png")))
    assert np.array_equal(cli, np.asarray(Image.open(tmp_path / "batch" / "words.png")))
    assert read_metadata(tmp_path / "cli.png")["masks"] == [query]
    used = np.asarray(Image.open(tmp_path / "cli_mask_1.png")) > 127
    assert (
        iou(used, masks.from_box(tmp_path / "in.png", (8, 74, 46, 112)).mask) > 0.8
    )  # the white triangle's box
    assert not np.array_equal(cli, np.asarray(Image.open(tmp_path / "in.png")))


def test_bad_queries_fail_before_the_model_loads(tmp_path, capsys):
    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    spec = {"image": "in.png", "masks": [{"points": [[70, 3]]}], "prompts": ["x"], "background_prompt": "y",
            "out": str(tmp_path / "o.png"), "model": str(tmp_path / "no-model")}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main(["edit", "--spec", str(tmp_path / "spec.json")]) == 2
    err = capsys.readouterr().err
    assert "point (70, 3) is outside the 64x64 image" in err and "no-model" not in err
    assert main(["edit", "--image", str(tmp_path / "in.png"), "--region", "nothing here", "--background-prompt",
                 "y", "--out", str(tmp_path / "o.png")]) == 2  # fmt: skip
    assert "--region must look like WORDS=PROMPT" in capsys.readouterr().err


def test_the_same_seed_reads_the_same_attention(mini, scene):
    s, image, _ = scene
    a = masks.word_map(mini, image, "a purple square", s.caption, torch.Generator().manual_seed(3))
    b = masks.word_map(mini, image, "a purple square", s.caption, torch.Generator().manual_seed(3))
    assert np.array_equal(a.values, b.values)


def test_the_benchmarks_words_method_names_shared_phrases_left_to_right(mini, monkeypatch):
    from regionedit.bench import methods
    from regionedit.shapes.items import shapes_item

    item = shapes_item(8, 20, "multi", 2, 4, 128)  # two orange circles, the right one listed first
    assert item.prompts and len({(s["colour"], s["shape"]) for s in item.sources}) == 1
    used = {}
    monkeypatch.setattr(methods, "run_lomoe", lambda model, it, cfg, gen: used.setdefault("masks", it.masks))
    methods.run_lomoe_words(mini, item, None, None)
    assert [iou(found, given) > 0.8 for found, given in zip(used["masks"], item.masks, strict=True)] == [
        True
    ] * 2
