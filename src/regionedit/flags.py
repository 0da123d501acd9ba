"""Command-line flags made from the options dataclasses, for every command that edits.

One flag per field (nested options get their field's name as a prefix), the field's type and
default in ``--help``; :func:`option_values` gives back only the flags a user actually set, as
the mapping :func:`regionedit.options.make_options` takes.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from .options import field_types

# Flags whose names differ from the option field.
FLAG_NAMES = {
    "num_inference_steps": "steps",
    "preservation_weight": "lambda",
    "control_scale": "default-control-scale",
}


def add_model_flags(parser, default: str | None = "mini") -> None:
    """``--model`` and how to load it: the same flags on every command that loads a model."""
    parser.add_argument(
        "--model", default=default, help="mini (default), a diffusers folder, a .safetensors file or a hub id"
    )
    parser.add_argument(
        "--model-config",
        default=None,
        metavar="DIR|HUB_ID",
        help="for a single-file checkpoint: a diffusers folder of the same architecture (or a cached hub id) "
        "giving its component configs, so it loads offline",
    )
    parser.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--dtype", default=None, help="float32 (default), float16, bfloat16")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="allow loading pickled .ckpt/.bin weights"
    )


def load_arguments(args) -> dict:
    """The keyword arguments of :func:`regionedit.load` given by :func:`add_model_flags`' flags."""
    return dict(
        device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle, config=args.model_config
    )


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parser_of(kind):
    kinds = [k for k in (typing.get_args(kind) or (kind,)) if k is not type(None)]
    first = kinds[0] if kinds else str
    return {bool: parse_bool, int: int, float: float}.get(first, str)


def _fields(cls, prefix: str = ""):
    """(dotted name, field, type) of every leaf field, nested options flattened."""
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        kind = types[f.name]
        if dataclasses.is_dataclass(kind):
            yield from _fields(kind, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, kind


def _flag(name: str, rename: dict) -> str:
    if name in rename:
        return "--" + rename[name]
    return "--" + "-".join(FLAG_NAMES.get(part, part) for part in name.split(".")).replace("_", "-")


def _dest(name: str, dest_prefix: str) -> str:
    return f"{dest_prefix}opt_{name.replace('.', '__')}"


def add_option_flags(parser, cls, title: str, skip=(), rename: dict | None = None, dest_prefix: str = ""):
    """Add a flag per field of ``cls`` (except ``skip``) in a group titled ``title``.

    A flag already on the parser (a field of the same name in another method's options) is
    shared: it keeps one meaning and one destination. A bare boolean flag means true
    (``--paste-back``); ``--paste-back false`` also works.
    """
    rename = rename or {}
    group = parser.add_argument_group(title)
    taken = dict(parser._option_string_actions)
    for name, f, kind in _fields(cls):
        flag = _flag(name, rename)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if name in skip:
            continue
        if flag in taken:  # shared with another options class: say both defaults
            taken[flag].help += f"; {cls.__name__}: {default!r}"
            continue
        kind_parser = _parser_of(kind)
        group.add_argument(
            flag,
            dest=_dest(name, dest_prefix),
            type=kind_parser,
            default=None,
            metavar=name.split(".")[-1].upper(),
            help=f"default: {cls.__name__}: {default!r}",
            **({"nargs": "?", "const": True} if kind_parser is parse_bool else {}),
        )


def option_values(cls, args, dest_prefix: str = "") -> dict:
    """The fields of ``cls`` set on the command line, as a (nested) mapping."""
    values: dict = {}
    for name, _, _ in _fields(cls):
        v = getattr(args, _dest(name, dest_prefix), None)
        if v is None:
            continue
        *parents, leaf = name.split(".")
        target = values
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = v
    return values


def flag_names(values: dict, prefix: str = "") -> list[str]:
    """The dotted names of a nested mapping's leaves (for messages)."""
    out = []
    for k, v in values.items():
        out += flag_names(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out
