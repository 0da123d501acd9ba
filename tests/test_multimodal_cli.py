"""`regionedit edit --method multimodal` on the tiny model saved as a diffusers folder."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from regionedit.cli import main
from regionedit.edit_api import read_metadata

from .test_multimodal import make_controlnet

BACKSLASH_NEWLINE = "\\\n"
FAST = ["--steps", "4", "--optimize-steps", "2", "--grad-steps", "2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_components, image64):
    d = tmp_path_factory.mktemp("mmcli")
    image64.save(d / "in.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(d / "mask.png")
    make_controlnet(tiny_components["unet"], 0).save_pretrained(d / "cn_edge", safe_serialization=True)
    kp = np.zeros((18, 3))
    kp[0], kp[1] = (32, 12, 1), (32, 20, 1)
    (d / "pose.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": kp.ravel().tolist()}]}))
    return d


def test_cli_multimodal_edit_with_edge_control(files, tiny_model_dir, capsys):
    out = files / "out.png"
    rc = main(["edit", "--method", "multimodal", "--model", str(tiny_model_dir), "--image", str(files / "in.png"),
               "--mask", str(files / "mask.png"), "--prompt", "a blue circle", "--source-prompt", "a red square",
               "--control", "edge=auto", "--controlnet", f"edge={files / 'cn_edge'}", "--control-scale", "0.7",
               "--lambda", "0.8", "--save-masks", "--out", str(out), *FAST])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    meta = read_metadata(out)
    assert meta["method"] == "multimodal" and meta["options"]["preservation_weight"] == 0.8
    assert meta["options"]["num_inference_steps"] == 4 and meta["control_scales"] == [0.7]
    assert Image.open(out).size == (64, 64)
    assert (files / "out_mask.png").exists() and (files / "out_control_edge.png").exists()


def test_cli_multimodal_two_regions_with_a_control_for_one(files, tiny_model_dir, capsys):
    """--mask/--prompt pairs as for LoMOE, ``2:edge=auto`` for the second region only; outside both
    masks the pixels are the round trip's, the same as the library's edit with the same regions."""
    from regionedit import Region, load
    from regionedit.models.controlnet import load_controlnet
    from regionedit.multimodal import Condition, MultimodalOptions, edit

    second = np.zeros((64, 64), np.uint8)
    second[36:60, 30:62] = 255
    Image.fromarray(second).save(files / "mask2.png")
    out = files / "two.png"
    rc = main(["edit", "--method", "multimodal", "--model", str(tiny_model_dir), "--image", str(files / "in.png"),
               "--mask", str(files / "mask.png"), "--prompt", "a blue circle", "--mask", str(files / "mask2.png"),
               "--prompt", "a green square", "--source-prompt", "a red square", "--control", "2:edge=auto",
               "--controlnet", f"edge={files / 'cn_edge'}", "--out", str(out), *FAST])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    meta = read_metadata(out)
    assert meta["prompts"] == ["a blue circle", "a green square"] and meta["controls"] == ["2:edge=auto"]
    model = load(str(tiny_model_dir))
    opts = MultimodalOptions(**{**dataclasses.asdict(MultimodalOptions()), **meta["options"],
                                "mask_estimate": MultimodalOptions().mask_estimate})  # fmt: skip
    regions = [Region(files / "mask.png", "a blue circle"), Region(files / "mask2.png", "a green square")]
    net = load_controlnet(files / "cn_edge", model, "edge")
    ref = edit(model, files / "in.png", source_prompt="a red square", regions=regions, options=opts,
               conditions=[Condition("edge", "auto", region=1)], controlnets=[net])  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(ref.image))
    outside = np.asarray(ref.mask_image) == 0
    assert np.array_equal(np.asarray(ref.image)[outside], np.asarray(ref.reconstruction)[outside])
    spec = {"method": "multimodal", "image": "in.png", "masks": ["mask.png", "mask2.png"],
            "prompts": ["a blue circle", "a green square"], "background_prompt": "a red square",
            "controls": ["2:edge=auto"], "controlnets": {"edge": "cn_edge"}, "options": meta["options"],
            "out": str(files / "two-spec.png")}  # fmt: skip
    (files / "two.json").write_text(json.dumps(spec))
    assert main(["edit", "--spec", str(files / "two.json"), "--model", str(tiny_model_dir)]) == 0
    assert np.array_equal(
        np.asarray(Image.open(files / "two-spec.png").convert("RGB")), np.asarray(ref.image)
    )
    rc = main(["edit", "--method", "multimodal", "--model", str(tiny_model_dir), "--image", str(files / "in.png"),
               "--mask", str(files / "mask.png"), "--prompt", "a blue circle", "--control", "3:edge=auto",
               "--out", str(files / "bad.png"), *FAST])  # fmt: skip
    assert rc == 2 and "region 3 but there are 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--control", "edge"], "KIND=VALUE"),
        (["--control", "pose=KP.json", "--controlnet", "pose=NOWHERE"], "no ControlNet for pose"),
        (["--control", "edge=auto", "--controlnet", "edge=CN", "--control-scale", "1", "--control-scale", "2"],
         "--control-scale"),
        (["--control", "pose=BAD.json", "--controlnet", "pose=CN"], "not valid JSON"),
        (["--lambda", "2"], "--lambda must be in [0, 1]"),
    ],
)  # fmt: skip
def test_cli_multimodal_errors(files, tiny_model_dir, capsys, extra, message):
    (files / "bad.json").write_text("{people")
    sub = {"KP.json": str(files / "pose.json"), "NOWHERE": str(files / "nowhere"), "CN": str(files / "cn_edge"),
           "BAD.json": str(files / "bad.json")}  # fmt: skip
    extra = [next((e.replace(k, v) for k, v in sub.items() if k in e), e) for e in extra]
    out = files / "err.png"
    rc = main(["edit", "--method", "multimodal", "--model", str(tiny_model_dir), "--image", str(files / "in.png"),
               "--prompt", "a blue circle", "--out", str(out), *FAST, *extra])  # fmt: skip
    assert rc == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_readme_recipe_uses_the_mini_models_settings(capsys, tmp_path, monkeypatch):
    """The README's multi-modal command, as written there, on the mini model: no tuning flag, so
    the options are the mini model's shipped multimodal settings with λ from the command."""
    import shlex
    from pathlib import Path

    from regionedit import load, make_options

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("regionedit shapes --seed 11 --objects 2")
    commands = readme[start : readme.index("```", start)].replace(BACKSLASH_NEWLINE, " ").splitlines()
    monkeypatch.chdir(tmp_path)
    shapes, edit = (shlex.split(c)[1:] for c in commands)
    tuning = {"--steps", "--optimize-steps", "--grad-steps", "--learning-rate", "--loss-space", "--solver"}
    assert edit[0] == "edit" and not tuning & set(edit)  # the settings ship with the model
    assert main(shapes) == 0 and main(edit) == 0, capsys.readouterr().err
    opts = read_metadata(tmp_path / "mm-edited.png")["options"]
    shipped = make_options("multimodal", {"preservation_weight": 0.6}, load("mini").settings["multimodal"])
    assert opts == dataclasses.asdict(shipped)
    assert (opts["loss_space"], opts["solver"], opts["main_pass_control_scale"]) == (
        "noisy",
        "closed_form",
        0.0,
    )


def test_spec_file_with_relative_paths_equals_the_flags(files, tiny_model_dir, capsys, tmp_path):
    """A multimodal --spec (paths relative to it) gives the flags' edit; flags override the spec."""
    spec = {"method": "multimodal", "image": "in.png", "masks": "mask.png", "prompts": ["a blue circle"],
            "background_prompt": "a red square", "controls": ["edge=auto"], "controlnets": {"edge": "cn_edge"},
            "options": {"steps": 4, "optimize_steps": 2, "grad_steps": 2, "preservation_weight": 0.8},
            "out": str(tmp_path / "a.png")}  # fmt: skip
    (files / "spec.json").write_text(json.dumps(spec))
    model = ["--model", str(tiny_model_dir)]
    assert main(["edit", "--spec", str(files / "spec.json"), "--lambda", "0.5", *model]) == 0, (
        capsys.readouterr().err
    )
    assert main(["edit", "--method", "multimodal", "--image", str(files / "in.png"), "--mask", str(files / "mask.png"),
                 "--prompt", "a blue circle", "--source-prompt", "a red square", "--control", "edge=auto",
                 "--controlnet", f"edge={files / 'cn_edge'}", "--lambda", "0.5", "--out", str(tmp_path / "b.png"),
                 *FAST, *model]) == 0, capsys.readouterr().err  # fmt: skip
    a, b = (np.asarray(Image.open(tmp_path / n).convert("RGB")) for n in ("a.png", "b.png"))
    assert np.array_equal(a, b)
    meta = read_metadata(tmp_path / "a.png")
    assert meta["options"]["preservation_weight"] == 0.5 and meta["options"]["optimize_steps"] == 2
    assert meta["masks"] == [str(files / "mask.png")] and meta["controlnets"] == {
        "edge": str(files / "cn_edge")
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "multimodal", "--negative-prompt", "blurry"], "--negative-prompt: need the lomoe method"),
        (["--method", "multimodal", "--control", "edge=MISSING.png"], "control image file not found"),
        (["--method", "multimodal", "--control", "edge=auto", "--controlnet", "edge=NOWHERE"], "no ControlNet"),
        (["--background-prompt", "b", "--mask", "MASK", "--control", "edge=auto"], "need the multimodal method"),
        (["--background-prompt", "b", "--mask", "MASK", "--lambda", "0.2"], "--lambda: need the multimodal method"),
    ],
)  # fmt: skip
def test_misplaced_or_bad_inputs_fail_before_the_model_loads(files, capsys, tmp_path, argv, message):
    """A model path that does not exist: reaching the load would give another error."""
    sub = {"MISSING.png": str(tmp_path / "missing.png"), "NOWHERE": str(tmp_path / "nowhere"),
           "MASK": str(files / "mask.png")}  # fmt: skip
    argv = [next((a.replace(k, v) for k, v in sub.items() if k in a), a) for a in argv]
    rc = main(["edit", "--image", str(files / "in.png"), "--prompt", "a blue circle", "--out",
               str(tmp_path / "o.png"), "--model", str(tmp_path / "no-model"), *argv])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "no-model" not in err, err


def test_method_flag_over_a_spec_without_method_and_control_flag_over_spec_controls(files, tmp_path):
    from regionedit import MultimodalOptions, make_options
    from regionedit.edit_api import EditRequest

    spec = {"image": "in.png", "prompts": ["a blue circle"], "background_prompt": "a red square",
            "controls": ["scribble=in.png"], "control_scales": [0.5], "controlnets": {"scribble": "cn_edge"},
            "options": {"preservation_weight": 0.3}}  # fmt: skip
    (files / "spec2.json").write_text(json.dumps(spec))
    seen = {}
    import regionedit.edit_api as api

    def stop(request, model):  # the request as built, before any model work
        seen["request"] = request
        raise api.InvalidInputError("stop here")

    orig = EditRequest.prepare
    EditRequest.prepare = stop
    try:
        assert main(["edit", "--spec", str(files / "spec2.json"), "--method", "multimodal", "--out",
                     str(tmp_path / "x.png")]) == 2  # fmt: skip
        spec_request = seen.pop("request")
        assert main(["edit", "--spec", str(files / "spec2.json"), "--method", "multimodal", "--control", "edge=auto",
                     "--out", str(tmp_path / "x.png")]) == 2  # fmt: skip
        flag_request = seen.pop("request")
    finally:
        EditRequest.prepare = orig
    assert spec_request.controls == [f"scribble={files / 'in.png'}"]  # relative to the spec
    assert spec_request.control_scales == [0.5] and spec_request.options["preservation_weight"] == 0.3
    assert spec_request.controlnets == {"scribble": str(files / "cn_edge")}
    assert flag_request.controls == ["edge=auto"]  # the flag replaces the spec's controls, scales and nets
    assert flag_request.control_scales == [] and flag_request.controlnets == {}
    request = EditRequest(image="x", masks=[], prompts=["a"], background_prompt="", method="multimodal")
    assert make_options("multimodal", request.options) == MultimodalOptions()  # the method's own defaults
