"""Bad input everywhere: each case gives one clear line and exit 2, changes no input, writes nothing."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

import regionedit
from regionedit import edit_api
from regionedit.cli import main
from regionedit.errors import InvalidInputError, InvalidMaskError, NonFiniteError, RegionEditError
from regionedit.io import load_image
from regionedit.models.loading import ModelInfo
from regionedit.multimodal import MultimodalOptions
from regionedit.regions import mask_to_array

from .conftest import box


class _Marker:
    """Unpickling this creates a file: proof that a pickle was (or was not) executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def ws(tmp_path, image64):
    """A folder of valid inputs; each case breaks one thing."""
    image64.save(tmp_path / "in.png")
    Image.fromarray(box(8, 24, 8, 24)).save(tmp_path / "m1.png")
    Image.fromarray(box(36, 56, 30, 54)).save(tmp_path / "m2.png")
    (tmp_path / "out").mkdir()
    return tmp_path


def base_args(ws, model_dir, **over):
    args = {
        "--image": str(ws / "in.png"),
        "--mask": [str(ws / "m1.png")],
        "--prompt": ["a blue square"],
        "--background-prompt": "a red square and a blue square on a gray background",
        "--model": str(model_dir),
        "--out": str(ws / "out" / "edited.png"),
        "--steps": "2",
        "--bootstrap-steps": "1",
    }
    args.update(over)
    argv = ["edit"]
    for key, value in args.items():
        for v in value if isinstance(value, list) else [value]:
            argv += [key] if v is None else [key, v]  # None: a flag alone
    return argv


def _write(ws, name, data: bytes) -> str:
    (ws / name).write_bytes(data)
    return str(ws / name)


def _png(ws, name, array_or_image) -> str:
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    im.save(ws / name)
    return str(ws / name)


def _spec(ws, spec) -> list[str]:
    path = ws / "spec.json"
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return ["edit", "--spec", str(path), "--model", "unused-model-dir", "--out", str(ws / "out" / "s.png")]


def _model_copy(ws, model_dir) -> Path:
    dst = ws / "model-copy"
    shutil.copytree(model_dir, dst)
    return dst


def _pickled_folder(ws, model_dir):
    dst = _model_copy(ws, model_dir)
    for f in dst.rglob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    return base_args(ws, model_dir, **{"--model": str(dst)})


def _pickle_file(ws, model_dir):
    path = ws / "model.ckpt"
    path.write_bytes(pickle.dumps(_Marker(ws / "PICKLE_RAN")))
    return base_args(ws, model_dir, **{"--model": str(path)})


def _broken_unet_config(ws, model_dir):
    dst = _model_copy(ws, model_dir)
    (dst / "unet" / "config.json").write_text("{not json")
    return base_args(ws, model_dir, **{"--model": str(dst)})


def _missing_weights(ws, model_dir):
    dst = _model_copy(ws, model_dir)
    for f in (dst / "unet").glob("*.safetensors"):
        f.unlink()
    return base_args(ws, model_dir, **{"--model": str(dst)})


def _exists(ws, model_dir):
    (ws / "out" / "edited.png").write_bytes(b"keep me")
    return base_args(ws, model_dir)


def _bomb(ws, model_dir):
    # 9000x8000 = 72 M pixels, above MAX_PIXELS, yet a few kB as a 1-bit PNG.
    Image.new("1", (9000, 8000)).save(ws / "bomb.png")
    return base_args(ws, model_dir, **{"--image": str(ws / "bomb.png")})


def _truncated(ws, model_dir):
    data = (ws / "in.png").read_bytes()
    return base_args(ws, model_dir, **{"--image": _write(ws, "trunc.png", data[: len(data) // 2])})


def _args(**over):
    return lambda ws, model_dir: base_args(ws, model_dir, **over)


def _mask(array):
    return lambda ws, model_dir: base_args(ws, model_dir, **{"--mask": [_png(ws, "bad_mask.png", array)]})


# name -> builder(ws, model_dir) -> argv, and a fragment the one-line message must contain.
CASES = {
    "image missing": (_args(**{"--image": "nowhere.png"}), "not found"),
    "image is text": (
        lambda ws, m: base_args(ws, m, **{"--image": _write(ws, "a.png", b"hello")}),
        "cannot read",
    ),
    "image empty file": (
        lambda ws, m: base_args(ws, m, **{"--image": _write(ws, "e.png", b"")}),
        "cannot read",
    ),
    "image truncated": (_truncated, "cannot read"),
    "image is a folder": (lambda ws, m: base_args(ws, m, **{"--image": str(ws / "out")}), "not found"),
    "image decompression bomb": (_bomb, "above the limit"),
    "image size not a multiple": (
        lambda ws, m: base_args(
            ws,
            m,
            **{
                "--image": _png(ws, "odd.png", np.zeros((62, 63, 3), np.uint8)),
                "--mask": [_png(ws, "oddm.png", box(0, 20, 0, 20)[:62, :63])],
            },
        ),
        "resize",
    ),
    "mask missing": (_args(**{"--mask": ["nomask.png"]}), "mask 1 file not found"),
    "mask is text": (lambda ws, m: base_args(ws, m, **{"--mask": [_write(ws, "m.png", b"xx")]}), "mask 1"),
    "mask wrong size": (_mask(box(0, 20, 0, 20, size=32)), "masks must have the image's size"),
    "mask empty": (_mask(np.zeros((64, 64), np.uint8)), "empty"),
    "mask too faint": (_mask(np.full((64, 64), 100, np.uint8)), "empty"),
    "mask smaller than a latent cell": (_mask(box(1, 2, 1, 2)), "latent"),
    "more prompts than masks": (_args(**{"--prompt": ["a", "b"]}), "give one prompt per mask"),
    "more masks than prompts": (
        lambda ws, m: base_args(ws, m, **{"--mask": [str(ws / "m1.png"), str(ws / "m2.png")]}),
        "one prompt per mask",
    ),
    "too many negative prompts": (_args(**{"--negative-prompt": ["x", "y"]}), "negative prompts"),
    "empty prompt": (_args(**{"--prompt": ["  "]}), "empty prompt"),
    "steps zero": (_args(**{"--steps": "0"}), "--steps must be an integer in 1..1000"),
    "steps negative": (_args(**{"--steps": "-3"}), "--steps must be"),
    "steps not an integer": (_args(**{"--steps": "2.5"}), "invalid int"),
    "negative guidance": (_args(**{"--guidance-scale": "-1"}), "--guidance-scale must be"),
    "NaN guidance": (_args(**{"--guidance-scale": "nan"}), "--guidance-scale must be"),
    "inf learning rate": (_args(**{"--learning-rate": "inf"}), "--learning-rate must be"),
    "zero temperature": (_args(**{"--temperature": "0"}), "temperature"),
    "threshold above one": (_args(**{"--mask-threshold": "2"}), "--mask-threshold must be"),
    "unknown overlap": (_args(**{"--overlap": "max"}), "argument --overlap: invalid choice: 'max'"),
    "unknown mask resize": (_args(**{"--mask-resize": "bilinear"}), "argument --mask-resize: invalid choice"),
    "flag not a boolean": (
        _args(**{"--paste-back=maybe": None}),
        "argument --paste-back/--no-paste-back: ignored explicit",
    ),
    "negative seed": (_args(**{"--seed": "-1"}), "seed"),
    "unknown method": (_args(**{"--method": "magic"}), "invalid choice"),
    "unknown resize": (_args(**{"--resize": "stretch"}), "invalid choice"),
    "unknown dtype": (_args(**{"--dtype": "float8"}), "dtype"),
    "output not png": (lambda ws, m: base_args(ws, m, **{"--out": str(ws / "out" / "x.jpg")}), ".png"),
    "output exists": (_exists, "--overwrite"),
    "model folder missing": (_args(**{"--model": "./no/such/model"}), "not found"),
    "model folder not diffusers": (
        lambda ws, m: base_args(ws, m, **{"--model": str(ws / "out")}),
        "model_index",
    ),
    "model folder pickled only": (_pickled_folder, "pickled"),
    "pickled checkpoint file": (_pickle_file, "pickled"),
    "model unet config broken": (_broken_unet_config, "cannot load model"),
    "model weights missing": (_missing_weights, "cannot load model"),
    "spec missing": (lambda ws, m: ["edit", "--spec", str(ws / "nope.json")], "spec file not found"),
    "spec not JSON": (lambda ws, m: _spec(ws, "{oops"), "not valid JSON"),
    "spec not an object": (lambda ws, m: _spec(ws, [1, 2]), "JSON object"),
    "spec unknown key": (lambda ws, m: _spec(ws, {"image": "in.png", "prompt": "x"}), "unknown key 'prompt'"),
    "spec masks not strings": (lambda ws, m: _spec(ws, {"masks": [3]}), "must be a mask path or an object"),
    "spec seed a string": (lambda ws, m: _spec(ws, {"seed": "abc"}), "'seed' must be int"),
    "spec options not an object": (lambda ws, m: _spec(ws, {"options": [1]}), "'options' must be dict"),
    "spec option wrong type": (lambda ws, m: _spec(ws, {"options": {"paste_back": "yes"}}), "paste_back"),
    "spec unknown option": (lambda ws, m: _spec(ws, {"options": {"stepz": 3}}), "unknown option"),
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_one_line_exit_2_nothing_written(name, ws, tiny_model_dir, capsys):
    build, fragment = CASES[name]
    argv = build(ws, tiny_model_dir)
    before = _snapshot(ws)
    rc = _main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("regionedit: error:") and "Traceback" not in err
    assert fragment in lines[0], lines[0]
    assert _snapshot(ws) == before  # no input changed, no output or temp file left
    assert not (ws / "PICKLE_RAN").exists()


def _main(argv) -> int:
    """cli.main, with argparse's own exits (bad flag values) turned into return codes."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_at_least_thirty_distinct_cases():
    assert len(CASES) >= 30


def test_cli_subprocess_bad_mask_prints_one_line(ws, tiny_model_dir):
    """The installed entry point, not just main(): no traceback reaches the terminal."""
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(ws / "empty.png")
    argv = base_args(ws, tiny_model_dir, **{"--mask": [str(ws / "empty.png")]})
    before = _snapshot(ws)
    proc = subprocess.run(
        [sys.executable, "-m", "regionedit.cli", *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "mask 1 is empty" in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(ws) == before


def test_cli_resize_pad_writes_input_size(ws, tiny_model_dir, capsys):
    image = _png(ws, "odd.png", np.asarray(Image.open(ws / "in.png"))[:62, :63])
    mask = _png(ws, "oddm.png", box(0, 20, 0, 20)[:62, :63])
    argv = base_args(ws, tiny_model_dir, **{"--image": image, "--mask": [mask], "--resize": "pad"})
    assert _main(argv) == 0
    with Image.open(ws / "out" / "edited.png") as im:
        assert im.size == (63, 62)
        assert json.loads(im.text["regionedit"])["resize"] == "pad"


# --- image modes that are accepted (documented in the README) ----------------------------


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16", "LA", "1"])
def test_image_modes_load_as_rgb(tmp_path, image64, mode):
    if mode == "I;16":
        arr = (np.asarray(image64.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        im = Image.fromarray(arr, mode="I;16")
    else:
        im = image64.convert(mode)
    im.save(tmp_path / "x.png")
    out = load_image(tmp_path / "x.png")
    assert out.mode == "RGB" and out.size == image64.size
    if mode in ("L", "I;16"):
        grey = np.asarray(image64.convert("L"), dtype=int)
        assert np.abs(np.asarray(out, dtype=int)[..., 0] - grey).max() <= 1


def test_rgba_transparent_pixels_become_black(tmp_path):
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[..., :3] = 200
    arr[:4, :, 3] = 255
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png"))
    assert (out[:4] == 200).all() and (out[4:] == 0).all()


def test_sixteen_bit_mask_is_read_as_binary(tmp_path):
    arr = box(8, 24, 8, 24).astype(np.uint16) * 65535
    Image.fromarray(arr, mode="I;16").save(tmp_path / "m16.png")
    got = mask_to_array(tmp_path / "m16.png") >= 0.5
    assert (got == box(8, 24, 8, 24)).all()
    assert (mask_to_array(arr) >= 0.5).sum() == box(8, 24, 8, 24).sum()  # the same as an array


MM = {"method": "multimodal", "options": MultimodalOptions()}
BAD_MULTIMODAL_REQUESTS = {
    "two prompts without masks": (dict(MM, prompts=["a", "b"]), "exactly one prompt"),
    "two masks, one prompt": (dict(MM, masks=[box(8, 24, 8, 24)] * 2), "one prompt per mask"),
    "control for a missing region": (dict(MM, controls=["2:edge=auto"]), "region 2 but there are 1"),
    "control region 0": (dict(MM, controls=["0:edge=auto"]), "REGION a number from 1"),
    "mask of another size": (dict(MM, masks=[box(0, 8, 0, 8, size=32)]), "image's size"),
    "negative prompts": (dict(MM, negative_prompts=["x"]), "negative_prompts: need the lomoe method"),
    "LoMOE options": (dict(MM, options=regionedit.LoMOEOptions()), "takes MultimodalOptions"),
    "controls for LoMOE": ({"controls": ["edge=auto"]}, "need the multimodal method"),
    "malformed control": (dict(MM, controls=["edge"]), "KIND=VALUE"),
    "unknown kind": (dict(MM, controls=["depth=auto"]), "kind must be one of"),
    "more scales than controls": (
        dict(MM, controls=["edge=auto"], control_scales=[1, 2]),
        "2 control scales",
    ),
    "a net without its control": (dict(MM, controlnets={"pose": "x"}), "no pose control"),
}


@pytest.mark.parametrize("name", list(BAD_MULTIMODAL_REQUESTS))
def test_bad_multimodal_request_fails_before_any_model(name, image64):
    kw, fragment = BAD_MULTIMODAL_REQUESTS[name]
    kw = {"masks": [], "prompts": ["a"], **kw}
    request = edit_api.EditRequest(image=image64, background_prompt="b", **kw)
    with pytest.raises(RegionEditError, match=fragment):
        request.prepare(ModelInfo("tiny", vae_scale_factor=4))  # the model's files, not its weights


# --- edge cases that are accepted -------------------------------------------------------


def _run(model, request):
    return edit_api.run(model, request.prepare(model), progress=False)


def _request(image, masks, prompts, **kw):
    kw.setdefault("options", regionedit.LoMOEOptions(num_inference_steps=2, bootstrap_steps=1))
    return edit_api.EditRequest(image=image, masks=masks, prompts=prompts, background_prompt="a", **kw)


def test_full_mask_and_overlapping_soft_masks_run(tiny_model, image64):
    full = np.ones((64, 64), np.float32)
    soft = box(0, 40, 0, 40).astype(np.float32) * 0.8  # grey, over the threshold: edited
    res = _run(tiny_model, _request(image64, [full, soft], ["a", "b"]))
    assert res.image.size == (64, 64)
    assert np.isfinite(res.latents.numpy()).all()


@pytest.mark.parametrize("mode,size", [("pad", (63, 62)), ("crop", (60, 60))])
def test_resize_pad_keeps_size_crop_takes_lower_multiple(tiny_model, image64, mode, size):
    image = image64.crop((1, 2, 64, 64))  # 63x62: not a multiple of 4
    mask = box(10, 30, 10, 30)[2:, 1:]
    res = _run(tiny_model, _request(image, [mask], ["a"], resize=mode))
    assert res.image.size == size
    assert res.mask_images[0].size == size


def test_resize_pad_matches_editing_the_padded_image(tiny_model, image64):
    """Pad = edit the edge-replicated image, then crop back: checked against doing that by hand."""
    image = image64.crop((0, 0, 62, 62))
    mask = box(10, 30, 10, 30)[:62, :62]
    res = _run(tiny_model, _request(image, [mask], ["a"], resize="pad"))
    padded = Image.fromarray(np.pad(np.asarray(image), ((0, 2), (0, 2), (0, 0)), mode="edge"))
    pmask = np.pad(mask, ((0, 2), (0, 2)), mode="edge")
    ref = _run(tiny_model, _request(padded, [pmask], ["a"]))
    assert np.array_equal(np.asarray(res.image), np.asarray(ref.image)[:62, :62])


def test_nonfinite_half_precision_fails_clearly(tiny_model, image64, monkeypatch):
    """NaN from the networks becomes a typed error naming the fix, not a traceback."""

    def nan_decode(latents, check_finite=True):
        raise FloatingPointError("the VAE decoded NaN or inf values even in float32")

    monkeypatch.setattr(tiny_model, "decode", nan_decode)
    with pytest.raises(NonFiniteError, match="float32"):
        _run(tiny_model, _request(image64, [box(8, 24, 8, 24)], ["a"]))


def test_vae_nan_in_half_is_retried_in_float32(tiny_components):
    """Model.decode: a float16 VAE that returns NaN is rerun in float32 once."""
    from regionedit.models.loading import from_components

    # A copy: Module.to() casts in place, and the session's float32 tiny model shares these.
    model = from_components(copy.deepcopy(tiny_components), name="half", dtype=torch.float16)
    calls = []
    real = model.vae.decode

    def flaky(z, *a, **k):
        calls.append(z.dtype)
        out = real(z, *a, **k)
        if z.dtype == torch.float16:
            out.sample.fill_(float("nan"))
        return out

    model.vae.decode = flaky
    x = model.decode(torch.zeros(1, 4, 16, 16))
    assert calls == [torch.float16, torch.float32]
    assert torch.isfinite(x).all()


# --- property-based: mask and spec parsing never fail with anything but our errors -------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.bool_, np.uint8, np.uint16, np.int32, np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_mask_parsing_property(arr):
    try:
        out = mask_to_array(arr)
    except InvalidMaskError as exc:
        assert str(exc)
        return
    assert out.ndim == 2 and out.dtype == np.float32
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
_spec_values = st.dictionaries(
    st.sampled_from(sorted(edit_api.SPEC_FIELDS) + ["bogus"]),
    _json
    | st.text(max_size=8)
    | st.lists(st.text(max_size=8), max_size=3)
    | st.dictionaries(
        st.sampled_from(["steps", "guidance_scale", "overlap", "paste_back"]), _json, max_size=2
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(_spec_values | _json)
def test_spec_parsing_property(spec):
    try:
        checked = edit_api.check_spec(spec, "spec")
    except InvalidInputError as exc:
        assert str(exc).startswith("spec")
        return
    assert checked is spec
    for key in ("masks", "prompts", "negative_prompts"):
        value = spec.get(key, [])
        assert isinstance(value, str) or all(isinstance(v, str) for v in value)
    if "options" in spec:
        regionedit.make_options(
            spec.get("method", "lomoe"), spec["options"]
        )  # accepted by check_spec -> builds


def test_errors_are_value_errors():
    for exc in (InvalidInputError("x"), InvalidMaskError("x")):
        assert isinstance(exc, ValueError) and isinstance(exc, RegionEditError)


def test_existing_mask_output_refused_before_anything_is_written(tiny_model, image64, tmp_path):
    request = _request(image64, [box(8, 24, 8, 24)], ["a"])
    prepared = request.prepare(tiny_model)
    result = edit_api.run(tiny_model, prepared, progress=False)
    (tmp_path / "e_mask_1.png").write_bytes(b"keep")
    with pytest.raises(regionedit.errors.OutputExistsError, match="e_mask_1.png"):
        edit_api.save_result(result, request, prepared, tmp_path / "e.png", save_masks=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e_mask_1.png"]
    assert (tmp_path / "e_mask_1.png").read_bytes() == b"keep"
    edit_api.save_result(result, request, prepared, tmp_path / "e.png", save_masks=True, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.png", "e_mask_1.png"]
