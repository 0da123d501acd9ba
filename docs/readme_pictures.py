"""Draw the README's pictures from what its blocks wrote.

    python docs/readme_pictures.py DIR [OUT_DIR]

DIR is the folder the README's blocks ran in (``tests/test_readme.py`` runs them in a temporary
one); the pictures go to OUT_DIR (default: docs/). Each picture is the blocks' own files side by
side, enlarged without smoothing, with a title over each.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

PICTURES = {
    "readme-lomoe.png": [("input", "scene/image.png"), ("mask 1", "scene/mask_1.png"),
                         ("mask 2", "scene/mask_2.png"), ("edited-cli.png", "edited-cli.png"),
                         ("edited-again.png", "edited-again.png")],
    "readme-multimodal.png": [("input", "mm/image.png"), ("mask 1", "mm/mask_1.png"), ("mask 2", "mm/mask_2.png"),
                              ("target_edges.png", "mm/target_edges.png"), ("mm-edited.png", "mm-edited.png")],
}  # fmt: skip


def side_by_side(panels: list[tuple[str, Image.Image]], scale: int = 2) -> Image.Image:
    w, h = panels[0][1].size
    pad, top = 6, 18
    out = Image.new("RGB", (len(panels) * (w * scale + pad) + pad, h * scale + top + pad), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, (title, image) in enumerate(panels):
        x = pad + i * (w * scale + pad)
        out.paste(image.convert("RGB").resize((w * scale, h * scale), Image.NEAREST), (x, top))
        draw.text((x, 4), title, fill=(0, 0, 0))
    return out


def draw(folder: Path, out_dir: Path) -> list[Path]:
    written = []
    for name, panels in PICTURES.items():
        picture = side_by_side([(title, Image.open(folder / rel)) for title, rel in panels])
        picture.save(out_dir / name)
        written.append(out_dir / name)
    return written


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    for path in draw(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else here):
        print(path)
