"""The Gradio page: paint one layer per object, a prompt per layer, edit, download.

Nothing here runs at import; :func:`build_app` builds the page and ``regionedit serve``
launches it. gradio is imported inside :func:`build_app` (an optional extra).
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from .. import methods
from ..errors import RegionEditError
from ..lomoe.options import LoMOEOptions
from ..multimodal.options import MultimodalOptions
from ..options import field_types
from .engine import DEFAULT_MAX_PIXELS, LAYER_COLOURS, MAX_OBJECTS, Engine, page_values

log = logging.getLogger(__name__)

METHOD_LABELS = {
    "lomoe": "LoMOE",
    "multimodal": "Multi-modal (λ-weighted optimisation)",
}  # the page's methods
CLICK_MODES = ("on the object", "off the object")
PICK_SIDE = 256  # pixels the photo to click on is enlarged to, at most
STAGES = {"invert": "inverting", "reference": "reference pass", "edit": "editing", "multimodal": "editing"}
CONTROL_KINDS = ("edge", "scribble")  # the kinds with a bundled mini ControlNet
VISIBLE_ROWS = 3  # prompt rows shown; the rest sit in an accordion

INTRO = """\
# regionedit — edit several objects at once
Upload an image (or load a shapes-world example), paint each object to change on **its own layer**
(layer *n* uses prompt *n*) or select it by words or clicks below the editor, describe the input in
the background prompt, and press **Edit**.
Re-editing the same image reuses its inversion, so later edits are faster.
**Multi-modal**: the same layers and prompts (no layer painted: prompt 1 alone, its region
estimated), the background prompt the input's caption; add an edge map or a scribble for every
region and set λ (higher keeps more of the input inside the regions; outside them nothing changes).
"""


OUTPUT_HEIGHT = 300
# Small images (the mini model's are 64x64) are shown enlarged with visible pixels, not blurred.
CSS = """
#input-image img, #mask-image img, #result-image img {
  image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain;
}
"""


def launch(app, host: str = "127.0.0.1", port: int = 7860, block: bool = True, quiet: bool = False):
    """Start the app's server; the one launch path of ``regionedit serve`` and the tests."""
    return app.queue().launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        quiet=quiet,
        show_error=False,  # errors are our one-line gr.Error messages; never tracebacks
        css=CSS,
        footer_links=["api"],
    )


def import_gradio():
    try:
        import gradio as gr
    except ImportError:
        raise RegionEditError("the web UI needs gradio: pip install 'regionedit[ui]'") from None
    return gr


def editor_to_inputs(value) -> tuple[Image.Image | None, list]:
    """An ImageEditor value (numpy RGBA) -> (background image or None, layer arrays)."""
    if not value:
        return None, []
    background = value.get("background")
    if background is None or np.asarray(background).size == 0:
        return None, []
    arr = np.asarray(background)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        # Uploaded images arrive RGBA; flatten transparency on black as regionedit.io does.
        image = Image.fromarray(arr.astype(np.uint8), "RGBA")
        base = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(base, image).convert("RGB")
    else:
        image = Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return image, list(value.get("layers") or [])


def pick_scale(image: Image.Image) -> int:
    """How many times the photo to click on is enlarged (whole pixels, so a click maps back exactly):
    small images are hard to click at their own size, and the page shows images no larger."""
    return max(1, PICK_SIDE // max(image.size))


def layer_of(mask: np.ndarray, index: int) -> np.ndarray:
    """An RGBA editor layer painted in layer ``index``'s colour (1-based) where ``mask`` is, translucent
    so the object shows through."""
    layer = np.zeros((*mask.shape, 4), np.uint8)
    colour = [int(LAYER_COLOURS[(index - 1) % len(LAYER_COLOURS)][k : k + 2], 16) for k in (1, 3, 5)]
    layer[mask] = [*colour, 128]
    return layer


def editor_value(image: np.ndarray, layers: list[np.ndarray]) -> dict:
    """An editor value: the RGB image as its background, the layers over it and their composite."""
    rgba = np.concatenate([image[..., :3], np.full((*image.shape[:2], 1), 255, np.uint8)], axis=-1)
    composite = Image.fromarray(rgba)
    for layer in layers:
        composite = Image.alpha_composite(composite, Image.fromarray(np.asarray(layer, np.uint8)))
    return {"background": rgba, "layers": layers, "composite": np.asarray(composite)}


def with_layer(value, index: int, mask: np.ndarray) -> dict:
    """The editor ``value`` with layer ``index`` (1-based) replaced by ``mask``."""
    image, layers = editor_to_inputs(value)
    layers = [np.asarray(layer, np.uint8) for layer in layers]
    while len(layers) < index:
        layers.append(np.zeros((*mask.shape, 4), np.uint8))
    layers[index - 1] = layer_of(mask, index)
    return editor_value(np.asarray(image), layers)


def example_value(seed: int, num_objects: int = 2, size: int = 64):
    """A shapes-world scene as an editor value: the image, one layer per object box, prompts."""
    from ..shapes.world import box_mask, make_scene, render

    scene = make_scene(int(seed), int(num_objects), size=size)
    image, _ = render(scene)
    layers = [layer_of(box_mask(obj, size), i) for i, obj in enumerate(scene.objects, start=1)]
    value = editor_value(image, layers)
    return value, scene


def build_app(
    model,
    model_name: str | None = None,
    options: dict | LoMOEOptions | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    output_dir=None,
    example_size: int | None = None,
    multimodal_options: dict | MultimodalOptions | None = None,
):
    """Build the Gradio Blocks app around a loaded model (nothing is launched).

    Args:
        model: from :func:`regionedit.load` (tests pass a tiny random model).
        model_name: shown in the page and stored in the PNG metadata.
        options: the page's starting LoMOE values over the model's settings (an options object
            is taken as it is); by default ``paste_back`` on, since people painting a region
            expect every other pixel to stay as it was.
        max_pixels: larger images are refused with a message.
        output_dir: where edited PNGs are written (a temporary folder by default).
        example_size: side of the shapes-world examples (default: the model's native size).
        multimodal_options: the multi-modal method's starting values, likewise (the model's
            settings by default); the page sets its steps (t_u keeps its share) and λ; the
            *LoMOE options* (guidance scale included) do not apply to it.
    """
    gr = import_gradio()
    engine = Engine(model, model_name, max_pixels=max_pixels, output_dir=output_dir)
    base = engine.options("lomoe", {"paste_back": True} if options is None else options)
    mm_base = engine.options("multimodal", multimodal_options)
    lomoe_types = field_types(LoMOEOptions)

    brush_size = max(2, model.native_size // 16)  # radius; "auto" (25) covers half a 64x64 image

    with gr.Blocks(title="regionedit") as demo:
        gr.Markdown(INTRO + f"\nModel: `{engine.model_name}`", elem_id="intro")
        with gr.Row():
            with gr.Column(scale=3):
                editor = gr.ImageEditor(
                    label="Image — paint one layer per object",
                    type="numpy",
                    image_mode="RGBA",
                    format="png",  # lossless: the background must come back unchanged
                    layers=gr.LayerOptions(
                        layers=[f"object {i}" for i in range(1, VISIBLE_ROWS + 1)],
                        allow_additional_layers=True,
                    ),
                    brush=gr.Brush(
                        default_size=brush_size,
                        colors=LAYER_COLOURS,
                        default_color=LAYER_COLOURS[0],
                        color_mode="defaults",
                    ),
                    transforms=("crop",),
                    sources=("upload", "clipboard"),
                    elem_id="editor",
                    height=480,
                )
                with gr.Accordion("Select an object by words or clicks", open=True):
                    with gr.Row():
                        find_layer = gr.Dropdown(list(range(1, MAX_OBJECTS + 1)), value=1, label="Layer",
                                                 elem_id="find-layer", scale=1)  # fmt: skip
                        find_words = gr.Textbox(label="Words", placeholder="the red triangle", elem_id="find-words",
                                                scale=3)  # fmt: skip
                        find_button = gr.Button("Find", elem_id="find", scale=1)
                    click_mode = gr.Radio(CLICK_MODES, value=CLICK_MODES[0], label="A click on the photo below is",
                                          elem_id="click-mode")  # fmt: skip
                    pick = gr.Image(label="Click the object to select it for the layer", type="numpy",
                                    interactive=False, elem_id="pick-image", height=PICK_SIDE + 40)  # fmt: skip
                    clicks = gr.State({})
                with gr.Row():
                    example_seed = gr.Number(
                        value=0, precision=0, label="Example scene seed", elem_id="example-seed", scale=1
                    )
                    example_objects = gr.Slider(
                        1, 3, value=2, step=1, label="Objects", elem_id="example-objects", scale=1
                    )
                    example_btn = gr.Button("Load shapes-world example", elem_id="example", scale=1)
            with gr.Column(scale=2):
                background = gr.Textbox(
                    label="Background prompt (caption of the input image)", elem_id="background-prompt"
                )
                prompts, negatives = [], []

                def prompt_row(i):
                    with gr.Row():
                        prompts.append(gr.Textbox(label=f"Layer {i} prompt", elem_id=f"prompt-{i}", scale=2))
                        negatives.append(
                            gr.Textbox(
                                label=f"Layer {i} negative prompt",
                                placeholder="default",
                                elem_id=f"negative-{i}",
                                scale=1,
                            )
                        )

                for i in range(1, VISIBLE_ROWS + 1):
                    prompt_row(i)
                with gr.Accordion("More layers", open=False):
                    for i in range(VISIBLE_ROWS + 1, MAX_OBJECTS + 1):
                        prompt_row(i)
                method = gr.Dropdown(
                    [(METHOD_LABELS[name], name) for name in methods.names() if name in METHOD_LABELS],
                    value=methods.DEFAULT,
                    label="Method",
                    elem_id="method",
                )
                with gr.Row():
                    steps = gr.Slider(
                        1, 100, value=base.num_inference_steps, step=1, label="Steps (LoMOE)", elem_id="steps"
                    )
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                with gr.Accordion("LoMOE options", open=False):
                    guidance = gr.Number(base.guidance_scale, label="Guidance scale", elem_id="guidance")
                    xa_weight = gr.Number(
                        base.cross_attention_weight, label="Cross-attention weight λ_xa", elem_id="xa-weight"
                    )
                    bg_weight = gr.Number(
                        base.background_weight, label="Background weight λ_b", elem_id="bg-weight"
                    )
                    bootstrap = gr.Number(
                        base.bootstrap_steps, precision=0, label="Bootstrap steps", elem_id="bootstrap"
                    )
                    feather = gr.Number(base.feather, label="Feather (latent pixels)", elem_id="feather")
                    paste_back = gr.Checkbox(
                        base.paste_back, label="Keep original pixels outside the masks", elem_id="paste-back"
                    )
                with gr.Accordion("Multi-modal method", open=False):
                    lam = gr.Slider(
                        0, 1, value=mm_base.preservation_weight, step=0.05, elem_id="lambda",
                        label="λ: preservation weight inside the regions (0 follows the instruction, 1 keeps the input)",
                    )  # fmt: skip
                    mm_steps = gr.Slider(
                        1, 100, value=mm_base.num_inference_steps, step=1, elem_id="mm-steps",
                        label="Steps (the optimised ones keep their share)",
                    )  # fmt: skip
                    control_kind = gr.Dropdown(
                        list(CONTROL_KINDS), value="edge", label="Layout map kind", elem_id="control-kind"
                    )
                    control_image = gr.Image(
                        label="Layout map (optional; the input's size)", type="numpy", image_mode="RGB",
                        format="png", sources=("upload", "clipboard"), elem_id="control-image",
                    )  # fmt: skip
                run = gr.Button("Edit", variant="primary", elem_id="run")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            shown_input = gr.Image(
                label="Input", type="pil", format="png", elem_id="input-image", height=OUTPUT_HEIGHT
            )
            shown_masks = gr.Image(
                label="Masks", type="pil", format="png", elem_id="mask-image", height=OUTPUT_HEIGHT
            )
            shown_result = gr.Image(
                label="Result", type="pil", format="png", elem_id="result-image", height=OUTPUT_HEIGHT
            )
        download = gr.File(label="Edited PNG (parameters embedded)", elem_id="download")

        def on_edit(
            value, background_prompt, method_name, n_steps, seed_value, g, xa, bw, boot, fe, paste,
            *texts, progress=gr.Progress(),  # noqa: B008 - gradio injects progress this way
        ):  # fmt: skip
            prompt_texts, negative_texts = (
                list(texts[:MAX_OBJECTS]),
                list(texts[MAX_OBJECTS : 2 * MAX_OBJECTS]),
            )
            lam_value, kind, control, mm_n = texts[2 * MAX_OBJECTS :] or (
                mm_base.preservation_weight,
                "edge",
                None,
                mm_base.num_inference_steps,
            )

            def edit_multimodal(image, layers):  # its own settings and CFG; the page sets steps and λ
                values = {"num_inference_steps": int(mm_n), "preservation_weight": float(lam_value)}
                mm = engine.options("multimodal", values, base=mm_base)
                return engine.edit_multimodal(
                    image, layers, prompt_texts, background_prompt, control=control, control_kind=kind,
                    seed=int(seed_value or 0), options=mm, progress=report,
                )  # fmt: skip

            def edit_lomoe(image, layers):
                fields = dict(num_inference_steps=n_steps, guidance_scale=g, cross_attention_weight=xa,
                              background_weight=bw, bootstrap_steps=boot, feather=fe, paste_back=bool(paste))  # fmt: skip
                opts = engine.options("lomoe", page_values(fields, lomoe_types), base=base)
                return engine.edit(image, layers, prompt_texts, negative_texts, background_prompt, method="lomoe",
                                   seed=int(seed_value or 0), options=opts, progress=report)  # fmt: skip

            def report(stage, done, total):  # every loop of the edit, from its first step
                progress((done, total), desc=STAGES.get(stage, stage), unit="steps")

            page_edits = {"lomoe": edit_lomoe, "multimodal": edit_multimodal}
            try:
                image, layers = editor_to_inputs(value)
                out = page_edits[methods.get(method_name).name](image, layers)
            except (
                Exception
            ) as exc:  # one line on the page (the status follows the last run); never a traceback
                if not isinstance(exc, RegionEditError):
                    log.exception("edit failed")
                message = (
                    str(exc)
                    if isinstance(exc, RegionEditError)
                    else f"internal error: {type(exc).__name__}: {exc}"
                )
                gr.Warning(message)
                return gr.update(), gr.update(), None, None, f"**Not edited:** {message}"
            return image, out.overlay, out.image, str(out.png_path), out.message

        def on_find(value, caption, layer, words):
            """Fill a layer from words: the found mask replaces the layer, and can still be painted over."""
            try:
                image, _ = editor_to_inputs(value)
                found = engine.find(image, words=words, caption=caption)
            except RegionEditError as exc:
                gr.Warning(str(exc))
                return gr.update(), f"**Not found:** {exc}"
            return with_layer(value, int(layer), found.mask), (
                f"Layer {int(layer)} holds what {words.strip()!r} names (score {found.score:.2f}); paint over it to "
                "correct it, then press Edit."
            )

        def on_click(value, layer, mode, state, evt: gr.SelectData):
            """A click adds a point on (or off) the object of the layer; the layer follows the points."""
            try:
                image, _ = editor_to_inputs(value)
                key = f"{int(layer)}:{hash(np.asarray(image).tobytes()) if image is not None else 0}"
                points = state.get(key, {"on": [], "off": []})
                k = pick_scale(image)  # the photo is shown k times enlarged
                points["on" if mode == CLICK_MODES[0] else "off"].append(
                    tuple(int(v) // k for v in evt.index)
                )
                found = engine.find(image, points=points["on"], negative_points=points["off"])
            except RegionEditError as exc:
                gr.Warning(str(exc))
                return gr.update(), state, f"**Not selected:** {exc}"
            state = {**state, key: points}
            return (
                with_layer(value, int(layer), found.mask),
                state,
                (
                    f"Layer {int(layer)}: {len(points['on'])} click(s) on the object, {len(points['off'])} off it."
                ),
            )

        on_click.__annotations__["evt"] = gr.SelectData  # gradio reads it to pass the click (a string here)

        def on_example(seed_value, n_objects):
            value, scene = example_value(
                int(seed_value or 0), int(n_objects), size=example_size or model.native_size
            )
            texts = [o.phrase for o in scene.objects]
            texts += [""] * (MAX_OBJECTS - len(texts))
            return [value, scene.caption, *texts, *([""] * MAX_OBJECTS)]

        run.click(
            on_edit,
            inputs=[editor, background, method, steps, seed, guidance, xa_weight, bg_weight, bootstrap, feather,
                    paste_back, *prompts, *negatives, lam, control_kind, control_image, mm_steps],
            outputs=[shown_input, shown_masks, shown_result, download, status],
            api_name="edit",
            concurrency_limit=1,  # one model, one edit at a time
            show_progress_on=[status],  # the progress shows once, in the status line
        )  # fmt: skip
        find_button.click(on_find, inputs=[editor, background, find_layer, find_words], outputs=[editor, status],
                          api_name="find")  # fmt: skip
        pick.select(
            on_click, inputs=[editor, find_layer, click_mode, clicks], outputs=[editor, clicks, status]
        )

        def photo_of(value):  # the photo to click on: the editor's image, once per new image
            image, _ = editor_to_inputs(value)
            if image is None:
                return None
            k = pick_scale(image)
            return np.asarray(image).repeat(k, axis=0).repeat(k, axis=1)

        editor.upload(photo_of, inputs=[editor], outputs=[pick], show_progress="hidden")
        example_btn.click(
            on_example,
            inputs=[example_seed, example_objects],
            outputs=[editor, background, *prompts, *negatives],
            api_name="example",
        ).then(photo_of, inputs=[editor], outputs=[pick], show_progress="hidden")
    demo.engine = engine  # tests and callers can reach the cache and output folder
    return demo
