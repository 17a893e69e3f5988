"""The ``kontrast`` command line: a thin dispatcher over the library.

Each sub-command lives in ``kontrast/commands/<name>.py`` with ``register(subparsers)``; it parses flags
into plain values and calls library functions. User mistakes (``KontrastError``) print one line,
without a traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

# Sub-command modules, in the order ``kontrast --help`` lists them. One line per command.
COMMANDS = [
    "info",
    "train",
    "plot",
    "index",
    "search",
    "serve",
    "classify",
    "locate",
    "embed",
    "demo",
    "generate",
    "eval",
    "export",
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="kontrast", description="CLIP: zero-shot, search, training, evaluation.")
    parser.add_argument("--version", action="version", version=f"kontrast {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (and show tracebacks)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import KontrastError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        warnings.simplefilter("ignore", FutureWarning)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KontrastError as exc:
        if args.verbose:
            raise
        print(f"kontrast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kontrast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
