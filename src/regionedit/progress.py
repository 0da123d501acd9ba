"""Progress of the long loops: a tqdm bar on stderr, or a function the caller gives.

Every ``progress`` argument of the library takes ``True`` (bars), ``False`` (silence) or a
function ``report(stage, done, total)`` called before the first step and after each one, with
``stage`` the loop's name ("invert", "reference", "edit", "multimodal"); the web page uses that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tqdm.auto import tqdm

Report = Callable[[str, int, int], None]


class _Reported:
    """A bar that tells ``report`` instead of drawing (the part of tqdm's interface the loops use)."""

    def __init__(self, report: Report, total: int, desc: str):
        self.report, self.total, self.desc, self.n = report, total, desc, 0
        report(desc, 0, total)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.report(self.desc, self.n, self.total)

    def close(self) -> None:
        pass


def bar(progress: bool | Report, total: int, desc: str):
    """A progress bar of ``total`` steps: ``update(n)``, ``close()``."""
    if callable(progress):
        return _Reported(progress, total, desc)
    return tqdm(total=total, desc=desc, disable=not progress, leave=False, unit="steps")


def steps(items: Iterable, progress: bool | Report, desc: str):
    """``items`` one by one, with progress after each."""
    items = list(items)
    b = bar(progress, len(items), desc)
    try:
        for item in items:
            yield item
            b.update()
    finally:
        b.close()
