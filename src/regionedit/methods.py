"""The registry of editing methods: the one place that knows which methods exist.

>>> from regionedit import methods
>>> methods.get("lomoe").options({"steps": 10}).num_inference_steps
10
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import InvalidInputError, InvalidOptionError
from .lomoe.method import LoMOE
from .method import Method
from .multimodal.method import Multimodal
from .options import typed_changes

METHODS: dict[str, Method] = {}
DEFAULT = "lomoe"  # what a request without a method runs


def register(method: Method) -> Method:
    """Add ``method`` (an instance of a :class:`~regionedit.method.Method` subclass) under its name."""
    if not method.name or method.name in METHODS:
        raise ValueError(f"a method needs a new name, got {method.name!r}")
    METHODS[method.name] = method
    return method


register(LoMOE())
register(Multimodal())


def names() -> tuple[str, ...]:
    return tuple(METHODS)


def get(name: str | None) -> Method:
    """The method called ``name`` (None: the default), or a one-line error naming the methods."""
    name = DEFAULT if name is None else name
    if name not in METHODS:
        raise InvalidOptionError(f"unknown method {name!r}; choose one of {names()}")
    return METHODS[name]


def optional_fields() -> frozenset[str]:
    """Request fields some method takes and another may not."""
    return frozenset().union(*(m.request_fields for m in METHODS.values()))


def takers(field: str) -> list[str]:
    """The methods that take request field ``field``."""
    return [m.name for m in METHODS.values() if field in m.request_fields]


def check_fields(method: Method, given, name_of=lambda field: field) -> None:
    """Refuse ``given`` request fields that ``method`` does not take, naming who takes them.

    ``name_of`` turns a field into what the user typed (a flag, a spec key)."""
    foreign = [f for f in given if f in optional_fields() and f not in method.request_fields]
    if foreign:
        who = sorted({m for f in foreign for m in takers(f)})
        raise InvalidInputError(
            f"{', '.join(name_of(f) for f in foreign)}: need the {' or '.join(who)} method, not {method.name}"
        )


def make_options(method: str, values=None, settings: Mapping | None = None):
    """The options of ``method``: its defaults, then ``settings``, then ``values``.

    Args:
        method: a registered method's name (``"lomoe"``, ``"multimodal"``).
        values: what the user gave (field names; ``steps`` for ``num_inference_steps``; nested
            options as mappings). An options object is taken as it is.
        settings: the model's recommended settings of this method (``model.settings[method]``).
    """
    return get(method).options(values, settings)


def check_option_names(method: str, values: Mapping) -> None:
    """Refuse unknown option names and values of the wrong type (ranges are checked against the
    model's settings when the options are made)."""
    cls = get(method).options_class
    typed_changes(cls, cls(), values)
