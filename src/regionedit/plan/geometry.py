"""What a denoiser computes on, per image, from its config alone: its blocks' tokens and widths, and
the attention maps LoMOE captures.

Activation memory is counted in token-widths: a block that carries ``tokens`` vectors of ``width``
channels keeps a fixed multiple of ``tokens · width`` values for its backward pass (the multiple is
the family's block kind's coefficient, :mod:`regionedit.plan.coefficients`). A UNet level's
"tokens" are its pixels.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    """Per image: ``blocks`` as ``(kind, tokens, width)``; ``captured`` as ``(heads, image tokens, text
    tokens)`` for each attention layer whose image-to-text map LoMOE's loss reads."""

    blocks: list[tuple[str, int, int]]
    captured: list[tuple[int, int, int]]

    def token_widths(self) -> dict[str, int]:
        """Σ tokens · width per block kind."""
        out: dict[str, int] = {}
        for kind, tokens, width in self.blocks:
            out[kind] = out.get(kind, 0) + tokens * width
        return out

    def largest(self) -> int:
        """The largest block's tokens · width (what a forward without gradients holds at once)."""
        return max(tokens * width for _, tokens, width in self.blocks)

    def map_values(self) -> int:
        """Values of the captured maps: Σ heads · image tokens · text tokens."""
        return sum(h * i * t for h, i, t in self.captured)


def geometry(family: str, config: dict, grid: tuple[int, int], text_tokens: int) -> Geometry:
    """The geometry of a ``family`` denoiser with ``config`` on a ``grid`` of ``(rows, columns)`` tokens
    (latent cells for a UNet) with ``text_tokens`` text tokens per prompt."""
    if family not in GEOMETRIES:
        raise ValueError(f"no memory geometry for the {family!r} family; known: {', '.join(GEOMETRIES)}")
    return GEOMETRIES[family](config, grid, text_tokens)


def _double_single(config: dict, grid: tuple[int, int], text_tokens: int) -> Geometry:
    """FLUX.1 and FLUX.2: double-stream blocks (captured), then single-stream blocks, on [text, image]."""
    image, heads = grid[0] * grid[1], config["num_attention_heads"]
    width, joint = heads * config["attention_head_dim"], grid[0] * grid[1] + text_tokens
    blocks = [("double", joint, width)] * config["num_layers"] + [("single", joint, width)] * config[
        "num_single_layers"
    ]
    return Geometry(blocks, [(heads, image, text_tokens)] * config["num_layers"])


def _joint(config: dict, grid: tuple[int, int], text_tokens: int) -> Geometry:
    """SD3 and Qwen-Image: joint (double-stream) blocks only, all captured."""
    image, heads = grid[0] * grid[1], config["num_attention_heads"]
    width, layers = heads * config["attention_head_dim"], config["num_layers"]
    return Geometry([("double", image + text_tokens, width)] * layers, [(heads, image, text_tokens)] * layers)


def _zimage(config: dict, grid: tuple[int, int], text_tokens: int) -> Geometry:
    """Z-Image: image-only and text-only refiners, then joint blocks (captured); each sequence padded to a
    multiple of 32."""
    image, text = -(-grid[0] * grid[1] // 32) * 32, -(-text_tokens // 32) * 32
    width, refiners = config["dim"], config.get("n_refiner_layers", 2)
    blocks = [("block", image, width)] * refiners + [("block", text, width)] * refiners
    blocks += [("block", image + text, width)] * config["n_layers"]
    return Geometry(blocks, [(config["n_heads"], image, text)] * config["n_layers"])


def _per_level(value, levels: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def _unet(config: dict, grid: tuple[int, int], text_tokens: int) -> Geometry:
    """A ``UNet2DConditionModel``: resnets and transformer layers level by level, down, middle, up
    (an up level has one resnet more, reading the skip connection)."""
    channels = list(config["block_out_channels"])
    levels = len(channels)
    layers = _per_level(config.get("layers_per_block", 2), levels)
    depth = _per_level(config.get("transformer_layers_per_block", 1), levels)
    heads = _per_level(config.get("num_attention_heads") or config.get("attention_head_dim", 8), levels)
    pixels = [-(-grid[0] // 2**k) * -(-grid[1] // 2**k) for k in range(levels)]
    blocks, captured = [], []

    def level(k: int, resnets: int, cross: bool) -> None:
        for _ in range(resnets):
            blocks.append(("resnet", pixels[k], channels[k]))
            if cross:
                blocks.extend([("attention", pixels[k], channels[k])] * depth[k])
                captured.extend([(heads[k], pixels[k], text_tokens)] * depth[k])

    for k, kind in enumerate(config["down_block_types"]):
        level(k, layers[k], kind.startswith("CrossAttn"))
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid is not None:
        blocks.extend([("resnet", pixels[-1], channels[-1])] * 2)
        if "CrossAttn" in mid:
            blocks.extend([("attention", pixels[-1], channels[-1])] * depth[-1])
            captured.extend([(heads[-1], pixels[-1], text_tokens)] * depth[-1])
    for i, kind in enumerate(config["up_block_types"]):
        level(levels - 1 - i, layers[levels - 1 - i] + 1, kind.startswith("CrossAttn"))
    return Geometry(blocks, captured)


GEOMETRIES = {"sd": _unet, "sdxl": _unet, "flux": _double_single, "flux2": _double_single, "sd3": _joint,
              "qwenimage": _joint, "zimage": _zimage}  # fmt: skip
