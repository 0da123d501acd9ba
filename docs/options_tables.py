"""Write the option tables of the docs from the options dataclasses.

    python docs/options_tables.py

Each table sits between ``<!-- options: ClassName -->`` and ``<!-- end options -->``; everything
else in the files stays as written. ``tests/test_help.py`` fails when a table and its class differ.
"""

from __future__ import annotations

import re
from pathlib import Path

from regionedit import ExecutionOptions, LoMOEOptions, MultimodalOptions
from regionedit.models.memory import MemoryOptions
from regionedit.multimodal.options import MaskEstimateOptions
from regionedit.options import options_table

ROOT = Path(__file__).resolve().parents[1]
TABLES = {
    "docs/lomoe.md": [LoMOEOptions, ExecutionOptions],
    "docs/multimodal.md": [MultimodalOptions, MaskEstimateOptions],
    "docs/models.md": [MemoryOptions],
}


def rewrite(text: str, classes) -> str:
    """``text`` with the table of each class in ``classes`` regenerated between its markers."""
    for cls in classes:
        pattern = re.compile(
            rf"(<!-- options: {cls.__name__} -->\n)(?:(?!<!--).)*?(<!-- end options -->)", re.S
        )
        if not pattern.search(text):
            raise ValueError(f"no <!-- options: {cls.__name__} --> ... <!-- end options --> block")
        text = pattern.sub(lambda m, cls=cls: m.group(1) + options_table(cls) + "\n" + m.group(2), text)
    return text


if __name__ == "__main__":
    for name, classes in TABLES.items():
        path = ROOT / name
        path.write_text(rewrite(path.read_text(), classes))
        print(f"wrote {name}")
