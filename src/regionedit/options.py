"""Options that explain themselves, and options from plain mappings.

Every options dataclass (a method's, the inversion's, execution's) declares its fields with
:func:`option`: the default, one line of help, the allowed values and, where the command line
names it differently, its flag. Everything a user reads is generated from those fields: the
class docstring (``help(LoMOEOptions)``, by :func:`documented`), ``--help`` (``regionedit.flags``)
and the option tables in the docs (:func:`options_table`).

:func:`build` puts a set of options together: the class's defaults, then a model's recommended
settings, then the user's values (``steps`` is accepted for ``num_inference_steps``).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterator, Mapping

from .errors import InvalidOptionError

ALIASES = {"steps": "num_inference_steps"}


def option(default=dataclasses.MISSING, *, help: str, choices=None, flag: str | None = None,
           origin: str | None = None, default_factory=dataclasses.MISSING):  # fmt: skip
    """A dataclass field that documents itself.

    Args:
        default / default_factory: as for :func:`dataclasses.field`.
        help: what the option does, one or two short sentences (``--help`` and docs).
        choices: the allowed values of a text option.
        flag: the command-line name when it is not the field's (``lambda`` for
            ``preservation_weight``); nested options prefix their parent's.
        origin: where the default comes from ("paper", "official code", "diffusers", "ours").
    """
    meta = {"help": help, "choices": tuple(choices) if choices else None, "flag": flag, "origin": origin}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def field_types(cls) -> dict[str, object]:
    """Field name -> resolved type annotation of an options dataclass."""
    return typing.get_type_hints(cls)


def is_options(kind) -> bool:
    return dataclasses.is_dataclass(kind) and isinstance(kind, type)


def default_of(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def leaf_fields(cls, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, object]]:
    """``(dotted name, field, type)`` of every field, nested options flattened."""
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        if is_options(types[f.name]):
            yield from leaf_fields(types[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, types[f.name]


def flag_name(cls, dotted: str) -> str:
    """The command-line flag of a (dotted) field: ``--steps``, ``--mask-estimate-num-maps``."""
    parts, kind, names = [], cls, dotted.split(".")
    for name in names:
        f = next(f for f in dataclasses.fields(kind) if f.name == name)
        parts.append(f.metadata.get("flag") or name)
        kind = field_types(kind)[name]
    return "--" + "-".join(parts).replace("_", "-")


def type_name(kind) -> str:
    """``int | None`` -> ``"int or None"``."""
    names = [getattr(k, "__name__", str(k)) for k in (typing.get_args(kind) or (kind,))]
    return " or ".join("None" if n == "NoneType" else n for n in names)


def shown(value, quote: bool = True) -> str:
    """A default as users write it: ``true``, ``None``, ``"average"`` (unquoted unless ``quote`` or empty)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value) if quote or not value else value
    return "None" if value is None else repr(value)


def documented(cls):
    """Class decorator: append an "Attributes" section built from the fields' help to ``__doc__``."""
    lines = []
    for name, f, kind in leaf_fields(cls):
        meta = f.metadata
        extra = f"; one of {', '.join(map(shown, meta['choices']))}" if meta.get("choices") else ""
        origin = f" [{meta['origin']}]" if meta.get("origin") else ""
        lines.append(f"    {name} ({type_name(kind)}, default {shown(default_of(f))}): "
                     f"{meta.get('help', '')}{extra}{origin}")  # fmt: skip
    cls.__doc__ = (cls.__doc__ or cls.__name__).rstrip() + "\n\nAttributes:\n" + "\n".join(lines) + "\n"
    return cls


def options_table(cls) -> str:
    """The Markdown table of ``cls``'s options, as the docs show it (a test keeps them equal)."""
    rows = ["| option | flag | default | what it does |", "|---|---|---|---|"]
    for name, f, _ in leaf_fields(cls):
        meta = f.metadata
        text = meta.get("help", "")
        if meta.get("choices"):
            text += f"; one of {', '.join(f'`{shown(c)}`' for c in meta['choices'])}"
        if meta.get("origin"):
            text += f" *({meta['origin']})*"
        rows.append(
            f"| `{name}` | `{flag_name(cls, name)}` | `{shown(default_of(f))}` | {text.replace('|', '/')} |"
        )
    return "\n".join(rows)


def _fits(kind, value) -> bool:
    """Does a JSON value fit a field type such as ``int | None`` or ``float``?"""
    for t in typing.get_args(kind) or (kind,):
        if (
            (t is type(None) and value is None)
            or (t is bool and isinstance(value, bool))
            or (t is int and isinstance(value, int) and not isinstance(value, bool))
            or (t is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (t is str and isinstance(value, str))
        ):
            return True
    return False


def typed_changes(cls, base, values: Mapping, where: str = "") -> dict:
    """Typed field changes of ``base`` (a ``cls``) from ``values``; nested options merge."""
    if not isinstance(values, Mapping):
        raise InvalidOptionError(f"{where or 'options'} must be a mapping of option names, got {values!r}")
    types = field_types(cls)
    out = {}
    for key, value in values.items():
        name = ALIASES.get(key, key)
        if name not in types:
            raise InvalidOptionError(f"unknown option {where}{key!r}; known: {sorted(types)}")
        kind = types[name]
        if is_options(kind):
            inner = value if not isinstance(value, kind) else dataclasses.asdict(value)
            sub = getattr(base, name)
            out[name] = dataclasses.replace(sub, **typed_changes(kind, sub, inner, f"{where}{name}."))
            continue
        if not _fits(kind, value):
            raise InvalidOptionError(
                f"option {where}{name} must be {type_name(kind)}, got {json.dumps(value)[:60]}"
            )
        out[name] = value
    return out


def build(cls, values=None, settings: Mapping | None = None, what: str | None = None):
    """Options of class ``cls``: its defaults, then ``settings``, then ``values``.

    Args:
        values: what the user gave (field names; ``steps`` for ``num_inference_steps``; nested
            options as mappings). An object of ``cls`` is taken as it is.
        settings: a model's recommended settings for these options.
        what: how errors name these options (default: the class name).

    A class may derive further changes from the user's (``cls.derived_changes(base, given)``:
    the multi-modal editor keeps its optimised steps' share of the steps).
    """
    what = what or cls.__name__
    if isinstance(values, cls):
        return values
    if dataclasses.is_dataclass(values):
        raise InvalidOptionError(f"{what} takes {cls.__name__}, got {type(values).__name__}")
    try:
        base = cls()
        base = dataclasses.replace(base, **typed_changes(cls, base, settings or {}, "(model settings) "))
        given = typed_changes(cls, base, values or {}, "")
        if hasattr(cls, "derived_changes"):
            given = cls.derived_changes(base, given)
        return dataclasses.replace(base, **given)
    except TypeError as exc:  # e.g. a value of the wrong kind compared inside __post_init__
        raise InvalidOptionError(f"invalid {what} options {dict(values or {})}: {exc}") from None
