"""The web UI driven through gradio_client against a local server, plus `regionedit serve`."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the web UI needs the ui extra: pip install 'regionedit[ui]'")
gradio_client = pytest.importorskip("gradio_client")

from regionedit.edit_api import read_metadata  # noqa: E402
from regionedit.lomoe.options import LoMOEOptions  # noqa: E402
from regionedit.ui.app import build_app, launch  # noqa: E402
from regionedit.ui.engine import MAX_OBJECTS, collect_regions  # noqa: E402

from .conftest import box  # noqa: E402

FAST = LoMOEOptions(num_inference_steps=2, bootstrap_steps=1, paste_back=True)
CAPTION = "a red square and a blue square on a gray background"
MAX_PIXELS = 80 * 80


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from regionedit import load

    app = build_app(
        load("mini"),  # the shipped model, as a user runs `regionedit serve`
        model_name="mini",
        options=FAST,
        max_pixels=MAX_PIXELS,
        output_dir=tmp_path_factory.mktemp("ui-out"),
    )
    port = free_port()
    launch(app, "127.0.0.1", port, block=False, quiet=True)
    try:
        yield app, gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.close()


def rgba_layer(mask: np.ndarray, colour=(255, 0, 0)) -> Image.Image:
    arr = np.zeros((*mask.shape, 4), np.uint8)
    arr[mask] = [*colour, 255]
    return Image.fromarray(arr, "RGBA")


def editor_value(tmp_path, image: Image.Image, masks: list) -> dict:
    """What the browser sends: the background and one transparent layer per object."""
    image.save(tmp_path / "bg.png")
    value = {
        "background": gradio_client.handle_file(str(tmp_path / "bg.png")),
        "layers": [],
        "composite": None,
    }
    for i, m in enumerate(masks):
        path = tmp_path / f"layer{i}.png"
        rgba_layer(m if m is not None else np.zeros(image.size[::-1], bool)).save(path)
        value["layers"].append(gradio_client.handle_file(str(path)))
    return value


def call_edit(client, value, background=CAPTION, prompts=(), negatives=(), seed=0, steps=2, method="lomoe",
              lam=0.6, kind="edge", control=None, guidance=FAST.guidance_scale):  # fmt: skip
    prompts = list(prompts) + [""] * (MAX_OBJECTS - len(prompts))
    negatives = list(negatives) + [""] * (MAX_OBJECTS - len(negatives))
    control = None if control is None else gradio_client.handle_file(str(control))
    return client.predict(
        value, background, method, steps, seed, guidance, FAST.cross_attention_weight,
        FAST.background_weight, FAST.bootstrap_steps, FAST.feather, True, *prompts, *negatives, lam, kind,
        control, steps, api_name="/edit",
    )  # fmt: skip


def test_multimodal_edit_with_a_painted_region_and_an_edge_map(server, image64, tmp_path):
    from regionedit.multimodal import canny_edges

    _, client = server
    m1 = box(8, 40, 8, 40)
    canny_edges(image64).save(tmp_path / "edges.png")
    value = editor_value(tmp_path, image64, [m1])
    *_, result, png, status = call_edit(client, value, prompts=["a blue circle"], method="multimodal", lam=0.3,
                                        control=tmp_path / "edges.png", seed=2, guidance=20.0)  # fmt: skip
    meta = read_metadata(png)
    assert meta["method"] == "multimodal" and meta["prompts"] == ["a blue circle"]
    assert meta["background_prompt"] == CAPTION and meta["controls"] == ["edge=<image>"]
    assert meta["options"]["preservation_weight"] == 0.3 and meta["options"]["num_inference_steps"] == 2
    assert meta["options"]["guidance_scale"] == 7.5  # the LoMOE options' guidance does not apply
    assert "your 1 mask(s)" in status and "edge map" in status and "λ = 0.3" in status
    out = np.asarray(Image.open(result).convert("RGB")).astype(int)
    assert np.abs(out - np.asarray(image64).astype(int)).mean() > 1  # it edited something

    *_, status = call_edit(client, editor_value(tmp_path, image64, [None]), prompts=["a blue circle"],
                           method="multimodal")  # fmt: skip
    assert "an estimated mask" in status
    *_, result, png, status = call_edit(client, editor_value(tmp_path, image64, [m1, m1]), prompts=["a"],
                                        method="multimodal")  # fmt: skip
    assert status.startswith("**Not edited:** layer 2 is painted but its prompt is empty")
    assert result is None and png is None  # the status and the result follow the last run
    *_, status = call_edit(client, value, prompts=["a", "b"], method="multimodal")
    assert "prompt 2 is filled in but layer 2 has no paint" in status
    m2 = box(44, 60, 40, 60)
    *_, result, png, status = call_edit(client, editor_value(tmp_path, image64, [m1, m2]), method="multimodal",
                                        prompts=["a blue circle", "a green square"])  # fmt: skip
    assert "your 2 mask(s)" in status
    assert read_metadata(png)["prompts"] == ["a blue circle", "a green square"]


def test_edit_two_layers_keeps_background_and_embeds_parameters(server, image64, tmp_path):
    _, client = server
    m1, m2 = box(4, 28, 4, 28), box(34, 60, 28, 58)
    value = editor_value(tmp_path, image64, [m1, m2])
    shown_input, shown_masks, result, png, status = call_edit(
        client, value, prompts=["a blue circle", "a green triangle"], negatives=["", "a red square"], seed=5
    )
    out = np.asarray(Image.open(result).convert("RGB")).astype(int)
    src = np.asarray(image64).astype(int)
    assert out.shape == src.shape
    outside = ~(m1 | m2)
    assert np.array_equal(out[outside], src[outside])  # paste_back: the background is untouched
    assert np.abs(out[m1] - src[m1]).mean() > 5 and np.abs(out[m2] - src[m2]).mean() > 5
    assert np.array_equal(np.asarray(Image.open(shown_input).convert("RGB")), np.asarray(image64))
    overlay = np.asarray(Image.open(shown_masks).convert("RGB")).astype(int)
    assert np.array_equal(overlay[outside], src[outside]) and not np.array_equal(overlay[m1], src[m1])
    meta = read_metadata(png)
    assert meta["prompts"] == ["a blue circle", "a green triangle"]
    assert meta["negative_prompts"][1] == "a red square" and meta["negative_prompts"][0]
    assert meta["seed"] == 5 and meta["background_prompt"] == CAPTION and meta["model"] == "mini"
    assert meta["options"]["num_inference_steps"] == 2
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), out)
    assert status.startswith("Edited in")


def test_second_edit_of_same_image_reuses_inversion(server, tmp_path):
    app, client = server
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))  # not cached by other tests
    value = editor_value(tmp_path, image, [box(8, 30, 8, 30)])
    *_, png1, status1 = call_edit(client, value, prompts=["a yellow circle"])
    *_, png2, status2 = call_edit(client, value, prompts=["a purple square"], seed=1)
    first, second = read_metadata(png1)["timings"], read_metadata(png2)["timings"]
    assert "reuses its inversion" in status1 and status2.startswith("Reused the inversion")
    assert second["invert_seconds"] < 0.1 * first["invert_seconds"]
    # A new caption is a new inversion.
    *_, status3 = call_edit(client, value, background="noise", prompts=["a purple square"])
    assert status3.startswith("Edited in")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_paint", "no layer is painted"),
        ("empty_prompt", "layer 2 is painted but its prompt is empty"),
        ("prompt_without_paint", "prompt 2 is filled in but layer 2 has no paint"),
        ("too_large", f"above this app's limit of {MAX_PIXELS} pixels"),
        ("odd_size", "multiples of 4"),
        ("no_background_prompt", "background prompt is empty"),
        ("no_image", "no image"),
    ],
)
def test_errors_are_messages_not_tracebacks(server, image64, tmp_path, case, expected):
    _, client = server
    masks, prompts, background, image = [box(4, 20, 4, 20), box(30, 50, 30, 50)], ["a", "b"], CAPTION, image64
    if case == "no_paint":
        masks = [None, None]
    elif case == "empty_prompt":
        prompts = ["a blue circle", "  "]
    elif case == "prompt_without_paint":
        masks[1] = None
    elif case in ("too_large", "odd_size"):
        side = 84 if case == "too_large" else 62
        image = image64.resize((side, side))
        masks = [box(4, 20, 4, 20, size=side)]
        prompts = ["a"]
    elif case == "no_background_prompt":
        background = " "
    value = editor_value(tmp_path, image, masks)
    if case == "no_image":
        value = {"background": None, "layers": [], "composite": None}
    *_, result, png, status = call_edit(client, value, background=background, prompts=prompts)
    assert status.startswith("**Not edited:**") and expected in status, status
    assert "Traceback" not in status and result is None and png is None


def test_example_fills_image_layers_and_prompts(server):
    _, client = server
    value, caption, *texts = client.predict(4, 2, api_name="/example")
    assert len(value["layers"]) == 2
    assert caption.endswith("background") and texts[0] in caption and texts[1] in caption
    assert texts[2:MAX_OBJECTS] == [""] * (MAX_OBJECTS - 2)
    layer = np.asarray(Image.open(value["layers"][0]))
    assert layer.shape == (128, 128, 4) and 0 < (layer[..., 3] > 0).mean() < 0.5  # the model's size


def test_layers_pair_with_prompts_by_number():
    m1, m3 = box(0, 8, 0, 8), box(20, 30, 20, 30)
    layers = [rgba_layer(m1), rgba_layer(np.zeros((64, 64), bool)), rgba_layer(m3)]
    masks, prompts, negs, numbers = collect_regions(
        [np.asarray(x) for x in layers], ["one", "", "three"], ["", "", "not three"], (64, 64)
    )
    assert numbers == [1, 3] and prompts == ["one", "three"] and negs == ["", "not three"]
    assert np.array_equal(masks[0], m1) and np.array_equal(masks[1], m3)


def test_importing_the_ui_launches_nothing():
    code = (
        "import sys, regionedit.cli, regionedit.ui, regionedit.ui.app, regionedit.ui.cli\n"
        "regionedit.cli.build_parser()\n"
        "assert 'gradio' not in sys.modules, 'gradio imported at import time'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_serve_defaults_to_localhost_and_mini():
    from regionedit.cli import COMMANDS, build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.model, args.host, args.port) == ("mini", "127.0.0.1", 7860)
    assert "serve" in COMMANDS


def test_serve_without_gradio_says_how_to_install(monkeypatch, capsys):
    from regionedit.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` fail
    assert main(["serve", "--model", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'regionedit[ui]'" in err and len(err.strip().splitlines()) == 1


def test_serve_command_starts_a_working_app(tiny_model_dir, tmp_path):
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "regionedit.cli",
        "serve",
        "--model",
        str(tiny_model_dir),
        "--port",
        str(port),
    ]
    cmd += ["--output-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # poll until the server answers
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as r:
                    config = json.loads(r.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start in 120 s"
                time.sleep(0.2)
        ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert {"editor", "background-prompt", "prompt-1", "run", "result-image"} <= ids
        assert str(tiny_model_dir) in json.dumps(config)  # the model's name is shown in the page
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_page_starts_from_the_models_settings(tiny_components, tmp_path):
    """No model name is special: the page's first values are the model's settings (paste-back on)."""
    from regionedit.models.loading import from_components

    settings = {"lomoe": {"num_inference_steps": 7, "guidance_scale": 3.0},
                "multimodal": {"preservation_weight": 0.4}}  # fmt: skip
    settings["multimodal"].update(num_inference_steps=12, optimize_steps=6)
    for given, steps, guidance, lam, mm_steps in ((settings, 7, 3.0, 0.4, 12), ({}, 50, 7.5, 0.6, 50)):
        model = from_components(tiny_components, name="tiny", settings=given)
        app = build_app(model, model_name="tiny", output_dir=tmp_path)
        config = app.get_config_file()
        values = {
            c.get("props", {}).get("elem_id"): c.get("props", {}).get("value") for c in config["components"]
        }
        assert (values["steps"], values["guidance"], values["lambda"]) == (steps, guidance, lam)
        assert values["mm-steps"] == mm_steps
        assert values["paste-back"] is True


def test_find_fills_the_chosen_layer_from_words_and_says_so(server, image64, tmp_path):
    app, client = server
    from regionedit import masks

    value = editor_value(tmp_path, image64, [box(8, 24, 8, 24)])
    new_value, status = client.predict(value, CAPTION, 2, "a blue square", api_name="/find")
    layers = [np.asarray(Image.open(layer)) for layer in new_value["layers"]]
    found = masks.from_words(app.engine.model, image64, "a blue square", caption=CAPTION)
    assert len(layers) == 2 and np.array_equal(layers[1][..., 3] > 0, found.mask)
    assert np.array_equal(layers[0][..., 3] > 0, box(8, 24, 8, 24))  # the other layer is kept
    assert status.startswith("Layer 2 holds what 'a blue square' names")
    _, status = client.predict(value, CAPTION, 1, "  ", api_name="/find")
    assert status.startswith("**Not found:**") and "type the words" in status


def test_a_layer_found_by_words_edits_as_the_same_words_in_a_spec_file(server, tmp_path):
    """Find on the page, then Edit, gives the pixels a spec file with the same words and options gives."""
    import dataclasses
    import json

    from regionedit.cli import main
    from regionedit.shapes.world import make_scene, render

    _, client = server
    scene = make_scene(2, 3, size=64)  # under the test page's pixel limit
    image = Image.fromarray(render(scene)[0])
    value = editor_value(tmp_path, image, [])
    found, status = client.predict(value, scene.caption, 1, "a white triangle", api_name="/find")
    assert status.startswith("Layer 1 holds")

    def send(path):  # what the page returned goes back up as files
        return gradio_client.handle_file(path) if path else None

    found = {"background": send(found["background"]), "layers": [send(p) for p in found["layers"]],
             "composite": send(found.get("composite"))}  # fmt: skip
    *_, png, status = call_edit(client, found, background=scene.caption, prompts=["a red square"])
    assert status.startswith("Edited in")
    image.save(tmp_path / "in.png")
    spec = {"image": "in.png", "masks": [{"words": "a white triangle"}], "prompts": ["a red square"],
            "background_prompt": scene.caption, "options": dataclasses.asdict(FAST), "out": str(tmp_path / "s.png")}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main(["edit", "--spec", str(tmp_path / "spec.json")]) == 0
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "s.png")))
