"""``regionedit serve``: start the web UI on this machine (127.0.0.1 unless asked otherwise)."""

from __future__ import annotations

import logging

from ..flags import add_model_flags, load_arguments
from .engine import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "serve",
        help="start the web UI (paint masks, a prompt per mask, edit in the browser)",
        description="Start a local Gradio app. Example: regionedit serve --model mini --port 7860",
    )
    add_model_flags(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger images (default {DEFAULT_MAX_PIXELS})",
    )
    p.add_argument("--output-dir", default=None, help="where edited PNGs go (default: a temporary folder)")
    return "serve", run_serve


def run_serve(args) -> int:
    from ..errors import InvalidInputError
    from .app import build_app, import_gradio, launch

    import_gradio()  # fail with the install hint before spending time on the model
    if not 1 <= args.port <= 65535:
        raise InvalidInputError(f"--port must be in 1..65535, got {args.port}")
    if args.max_pixels < 1:
        raise InvalidInputError(f"--max-pixels must be positive, got {args.max_pixels}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the app", args.host)
    check_port(args.host, args.port)  # before the model loads: a busy port is said at once
    from .. import edit_api

    model = edit_api.load(args.model, **load_arguments(args))
    # the page starts from the model's recommended settings (the method's defaults without them)
    app = build_app(model, model_name=args.model, max_pixels=args.max_pixels, output_dir=args.output_dir)
    print(f"regionedit web UI on http://{args.host}:{args.port} (Ctrl+C stops it)")
    try:
        launch(app, args.host, args.port, quiet=True)  # quiet: no advice about share links
    except OSError as exc:  # taken between the check and the launch
        raise InvalidInputError(
            f"cannot serve on {args.host}:{args.port}: {exc}; pass another --port"
        ) from None
    return 0


def check_port(host: str, port: int) -> None:
    """One line, before anything loads, when ``host:port`` cannot be bound."""
    import socket

    from ..errors import InvalidInputError

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's port is free
            s.bind((host, port))
    except OSError as exc:
        raise InvalidInputError(
            f"cannot serve on {host}:{port} ({exc.strerror or exc}); pass another --port"
        ) from None
