"""Options from plain mappings: the one place where a method's settings are put together.

Every front end (CLI flags, ``--spec`` files, batch lines, the web page, the bench) hands its
values to :func:`make_options`, which starts from the method's defaults, applies the model's
recommended settings, then the user's values, and owns two rules: ``steps`` is an alias of
``num_inference_steps``, and when the steps change without an explicit ``optimize_steps`` the
multi-modal t_u keeps its share of the steps.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping

from .errors import InvalidOptionError
from .execution import ExecutionOptions
from .lomoe.options import LoMOEOptions
from .multimodal.options import MultimodalOptions

METHODS = ("lomoe", "multimodal")
OPTION_CLASSES = {"lomoe": LoMOEOptions, "multimodal": MultimodalOptions}
ALIASES = {"steps": "num_inference_steps"}


def option_class(method: str):
    """The options dataclass of ``method``, or an error naming the methods."""
    if method not in OPTION_CLASSES:
        raise InvalidOptionError(f"unknown method {method!r}; choose one of {METHODS}")
    return OPTION_CLASSES[method]


def field_types(cls) -> dict[str, object]:
    """Field name -> resolved type annotation of an options dataclass."""
    return typing.get_type_hints(cls)


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


def _is_options(kind) -> bool:
    return dataclasses.is_dataclass(kind) and isinstance(kind, type)


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
        if _is_options(kind):
            inner = value if not isinstance(value, kind) else dataclasses.asdict(value)
            sub = getattr(base, name)
            out[name] = dataclasses.replace(sub, **typed_changes(kind, sub, inner, f"{where}{name}."))
            continue
        if not _fits(kind, value):
            shown = str(kind).replace("typing.", "").replace("<class '", "").replace("'>", "")
            raise InvalidOptionError(f"option {where}{name} must be {shown}, got {json.dumps(value)[:60]}")
        out[name] = value
    return out


def check_option_names(method: str, values: Mapping) -> None:
    """Refuse unknown option names and values of the wrong type (ranges are checked against the
    model's settings when the options are made)."""
    cls = option_class(method)
    typed_changes(cls, cls(), values)


def make_options(method: str, values: Mapping | None = None, settings: Mapping | None = None):
    """The options of ``method``: its defaults, then ``settings``, then ``values``.

    Args:
        method: ``"lomoe"`` or ``"multimodal"``.
        values: what the user gave (field names; ``steps`` for ``num_inference_steps``; nested
            options as mappings). An options object is taken as it is.
        settings: the model's recommended settings of this method (``model.settings[method]``).

    When ``values`` set the steps but not ``optimize_steps``, t_u keeps the share of the steps
    it has in the defaults-plus-settings (15 of 20 stays 15 at 20 and becomes 30 at 40).
    """
    cls = option_class(method)
    if isinstance(values, cls):
        return values
    if dataclasses.is_dataclass(values):
        raise InvalidOptionError(f"method {method!r} takes {cls.__name__}, got {type(values).__name__}")
    try:
        base = cls()
        base = dataclasses.replace(base, **typed_changes(cls, base, settings or {}, "(model settings) "))
        given = typed_changes(cls, base, values or {}, "")
        if cls is MultimodalOptions and "num_inference_steps" in given and "optimize_steps" not in given:
            share = base.optimize_steps / base.num_inference_steps
            given["optimize_steps"] = min(
                round(given["num_inference_steps"] * share), given["num_inference_steps"]
            )
        return dataclasses.replace(base, **given)
    except TypeError as exc:  # e.g. a value of the wrong kind compared inside __post_init__
        raise InvalidOptionError(f"invalid {method} options {dict(values or {})}: {exc}") from None


def make_execution(values: Mapping | ExecutionOptions | None = None) -> ExecutionOptions:
    """:class:`ExecutionOptions` from a mapping (or as given)."""
    if isinstance(values, ExecutionOptions):
        return values
    base = ExecutionOptions()
    return dataclasses.replace(base, **typed_changes(ExecutionOptions, base, values or {}, ""))
