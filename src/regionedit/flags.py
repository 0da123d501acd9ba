"""Command-line flags made from the options dataclasses, for every command that edits.

One flag per field (nested options get their field's name as a prefix) with the field's own help,
its allowed values and its default; booleans as ``--flag/--no-flag``. :func:`option_values` gives
back only the flags a user actually set, as the mapping the options are built from.
"""

from __future__ import annotations

import argparse
import re
import typing

from . import methods
from .options import default_of, flag_name, leaf_fields, shown


def add_model_flags(parser, default: str | None = "mini") -> None:
    """``--model`` and how to load it: the same flags on every command that loads a model."""
    parser.add_argument(
        "--model",
        default=default,
        help="mini (default), mini-flow, a diffusers folder, a .safetensors or .gguf file or a hub id",
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
    from .models.memory import MemoryOptions

    add_option_flags(parser, MemoryOptions, "weights that fit (offloading, storage dtype, quantization)")


def load_arguments(args) -> dict:
    """The keyword arguments of :func:`regionedit.load` given by :func:`add_model_flags`' flags."""
    from .models.memory import MemoryOptions

    return dict(
        device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle, config=args.model_config,
        memory=option_values(MemoryOptions, args),
    )  # fmt: skip


def _kinds(kind) -> list:
    return [k for k in (typing.get_args(kind) or (kind,)) if k is not type(None)]


def _dest(name: str, dest_prefix: str) -> str:
    return f"{dest_prefix}opt_{name.replace('.', '__')}"


def _argument(group, cls, name: str, f, kind, default_text: str, dest_prefix: str, help_text=None,
              flag=None) -> None:  # fmt: skip
    """One flag (``flag``, by default the field's own) for field ``name`` of ``cls``."""
    first = (_kinds(kind) or [str])[0]
    meta = f.metadata
    text = (help_text or meta.get("help") or name.replace("_", " ")).replace("%", "%%")
    kwargs = dict(dest=_dest(name, dest_prefix), default=None, help=f"{text} (default: {default_text})")
    if first is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = {int: int, float: float}.get(first, str)
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        else:
            kwargs["metavar"] = {int: "N", float: "X"}.get(first, "TEXT")
    group.add_argument(flag or flag_name(cls, name), **kwargs)


def add_option_flags(parser, cls, title: str, skip=(), dest_prefix: str = "", defaults=None,
                     rename: dict | None = None) -> None:  # fmt: skip
    """A group titled ``title`` with a flag per field of ``cls`` (except ``skip``).

    ``defaults`` (an object of ``cls``) gives the defaults shown; by default the class's own.
    ``rename`` maps a field to another flag name (where two classes' flags would collide).
    """
    group = parser.add_argument_group(title)
    for name, f, kind in leaf_fields(cls):
        if name in skip:
            continue
        value = _value_at(defaults, name) if defaults is not None else default_of(f)
        flag = f"--{rename[name]}" if rename and name in rename else None
        _argument(group, cls, name, f, kind, shown(value, quote=False), dest_prefix, flag=flag)


def _value_at(options, dotted: str):
    for part in dotted.split("."):
        options = getattr(options, part)
    return options


def add_method_flags(parser, settings: dict | None = None) -> dict:
    """Every registered method's option flags, for ``regionedit edit`` and the bench.

    An option that several methods have (same name and flag) is added once, in a group of shared
    options, and means the same field in each; the rest go into one group per method. The
    defaults shown are ``settings``' (a model's recommended settings), else the methods' own.

    Returns method name -> its argument group (for the method's own request flags).
    """
    found: dict[str, list] = {}  # dotted name -> [(method, field, kind)]
    for method in methods.METHODS.values():
        for name, f, kind in leaf_fields(method.options_class):
            found.setdefault(name, []).append((method, f, kind))
    defaults = {}
    for method in methods.METHODS.values():
        try:
            defaults[method.name] = method.options({}, method.model_settings(settings))
        except Exception:  # unreadable settings: show the method's own defaults
            defaults[method.name] = method.options_class()
    shared = parser.add_argument_group(
        "options of every method (default: the model's settings, else the method's)"
    )
    groups = {
        m.name: parser.add_argument_group(f"{m.name} options (--method {m.name})", m.title)
        for m in methods.METHODS.values()
    }
    for name, owners in found.items():
        method, f, kind = owners[0]
        if len(owners) > 1:
            values = ", ".join(
                f"{m.name} {shown(_value_at(defaults[m.name], name), quote=False)}" for m, _, _ in owners
            )
            helps = dict.fromkeys(g.metadata.get("help") for _, g, _ in owners)
            text = helps.popitem()[0] if len(helps) == 1 else "; ".join(
                f"{m.name}: {g.metadata.get('help')}" for m, g, _ in owners
            )  # fmt: skip
            _argument(shared, method.options_class, name, f, kind, values, "", text)
        else:
            _argument(groups[method.name], method.options_class, name, f, kind,
                      shown(_value_at(defaults[method.name], name), quote=False), "")  # fmt: skip
    return groups


def option_values(cls, args, dest_prefix: str = "") -> dict:
    """The fields of ``cls`` set on the command line, as a (nested) mapping."""
    values: dict = {}
    for name, _, _ in leaf_fields(cls):
        v = getattr(args, _dest(name, dest_prefix), None)
        if v is None:
            continue
        *parents, leaf = name.split(".")
        target = values
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = v
    return values


def foreign_flags(method, args) -> dict[str, list[str]]:
    """Flags set on the command line that are options of other methods only -> those methods."""
    own = {name for name, _, _ in leaf_fields(method.options_class)}
    out: dict[str, list[str]] = {}
    for other in methods.METHODS.values():
        for name, _, _ in leaf_fields(other.options_class):
            if name not in own and getattr(args, _dest(name, ""), None) is not None:
                out.setdefault(flag_name(other.options_class, name), []).append(other.name)
    return out


def in_flag_words(message: str, cls, values: dict) -> str:
    """``message`` with the names of the options set on the command line (``values``, as
    :func:`option_values` gives them) written as the flags the user typed."""

    def leaves(v, prefix=""):
        for k, x in v.items():
            yield from leaves(x, f"{prefix}{k}.") if isinstance(x, dict) else [f"{prefix}{k}"]

    for dotted in leaves(values):
        for name in dict.fromkeys(
            [dotted, dotted.rsplit(".", 1)[-1]]
        ):  # "mask_estimate.num_maps", "num_maps"
            message = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", flag_name(cls, dotted), message)
    return message
