"""Quiet by default: the libraries regionedit drives print nothing unless asked."""

from __future__ import annotations

import contextlib
import logging
import warnings


@contextlib.contextmanager
def quiet_libraries():
    """Hide diffusers/transformers loading bars and their warnings unless regionedit logs at INFO.

    regionedit is quiet by default, from Python as from the command line (which promises one line
    on error: chatter before it would bury that line). ``logging.getLogger("regionedit").setLevel(
    logging.INFO)`` (CLI: ``-v``) brings the libraries' own logs and bars back.
    """
    if logging.getLogger("regionedit").getEffectiveLevel() <= logging.INFO:
        yield
        return
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    bars = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    # torchao, where installed, is imported by transformers' loaders and warns of its missing kernels
    chatty = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    chatty_levels = [c.level for c in chatty]
    for c in chatty:
        c.setLevel(logging.ERROR)
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        for c, level in zip(chatty, chatty_levels, strict=True):
            c.setLevel(level)
        if bars[0]:
            dlog.enable_progress_bar()
        if bars[1]:
            tlog.enable_progress_bar()
