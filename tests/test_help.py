"""Options explain themselves: every flag's help, the options' docstrings and the docs' tables."""

import argparse
import re
import sys
from pathlib import Path

import pytest

import regionedit
from regionedit.cli import build_parser, main
from regionedit.execution import ExecutionOptions
from regionedit.inversion import InversionOptions
from regionedit.multimodal.options import MaskEstimateOptions
from regionedit.options import leaf_fields, options_table
from regionedit.shapes.edit_tune_config import EditTuneConfig

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS))
from options_tables import TABLES, rewrite  # noqa: E402


def subcommands(parser, prefix=()):
    """``(words, parser)`` of every command and subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from subcommands(sub, (*prefix, name))


def described_flags(help_text: str) -> dict[str, str]:
    """Flag -> its description, parsed from an argparse help text."""
    out, current = {}, None
    for line in help_text.splitlines():
        m = re.match(r"^  (-[^ ].*?)(?:  +(\S.*))?$", line)
        if m:
            flags = re.findall(r"(--?[\w-]+)", m.group(1).split(" ")[0] + " " + m.group(1))
            current = flags[0]
            out[current] = m.group(2) or ""
        elif current and re.match(r"^ {8,}\S", line):
            out[current] += " " + line.strip()
        else:
            current = None
    return out


def test_every_flag_of_every_subcommand_says_what_it_does(capsys):
    commands = list(subcommands(build_parser()))
    assert {("edit",), ("shapes",), ("demo",), ("train-mini",), ("bench", "shapes"), ("batch",), ("serve",)} <= {
        c for c, _ in commands
    }  # fmt: skip
    for words, parser in commands:
        text = parser.format_help()
        flags = described_flags(text)
        wanted = {s for a in parser._actions for s in a.option_strings[:1] if s not in ("-h",)}
        assert wanted <= set(flags), (words, wanted - set(flags))
        for flag, description in flags.items():
            if flag in ("-h", "--help"):
                continue
            words_said = re.sub(r"\(default: [^)]*\)", "", description).split()
            assert len(words_said) >= 2 and not description.startswith("default"), (words, flag, description)


def test_edit_help_lists_choices_booleans_and_the_models_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    mini = capsys.readouterr().out
    assert "{nearest,majority}" in mini and "--paste-back, --no-paste-back" in mini
    assert "[--paste-back PASTE_BACK]" not in mini
    with pytest.raises(SystemExit):
        main(["edit", "--model", "mini-flow", "--help"])
    flow = capsys.readouterr().out
    grid = {name: re.search(r"--mask-grid \{token,latent\}\s+(.*?)\(default: (\w+)\)", t, re.S) for name, t in
            (("mini", mini), ("mini-flow", flow))}  # fmt: skip
    assert grid["mini"].group(2) == "token" and grid["mini-flow"].group(2) == "latent"  # each model's setting
    steps = re.search(r"--steps N .*?\(default: ([^)]*)\)", mini, re.S).group(1)
    assert steps.startswith("lomoe 25")  # the mini model's 25 steps, not the class's 50


@pytest.mark.parametrize(
    "cls",
    [regionedit.LoMOEOptions, regionedit.MultimodalOptions, MaskEstimateOptions, ExecutionOptions, InversionOptions,
     EditTuneConfig],
)  # fmt: skip
def test_the_options_docstrings_describe_every_field(cls):
    doc = cls.__doc__
    for name, f, _ in leaf_fields(cls):
        assert f.metadata.get("help"), name
        assert f"    {name} (" in doc and f.metadata["help"] in doc, name


def test_the_docs_option_tables_are_the_code_s():
    for path, classes in TABLES.items():
        text = (DOCS.parent / path).read_text()
        assert rewrite(text, classes) == text, f"{path} is out of date: python docs/options_tables.py"
        for cls in classes:
            assert options_table(cls) in text
    text = (DOCS / "lomoe.md").read_text()
    drifted = text.replace(
        "| `temperature` | `--temperature` | `1.25` |", "| `temperature` | `--temperature` | `1.5` |"
    )
    assert (
        drifted != text and rewrite(drifted, TABLES["docs/lomoe.md"]) == text
    )  # a drift is found and mended
