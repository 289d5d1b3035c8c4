"""The ``tips-eval`` command line.

Each subcommand lives in its own module under ``tips_eval/commands/`` with
``register(subparsers)``; adding a command is adding one module and one name
to :data:`COMMANDS`. Errors print one line plus a hint (a traceback only with
``--debug``) and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import TipsEvalError

#: subcommand modules, in the order ``--help`` lists them
COMMANDS = ("demo", "run", "models", "table", "compare", "plot", "cache")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="tips-eval",
        description="Frozen-feature evaluation of image and image-text encoders on the TIPS paper's "
                    "8 tasks / 16 datasets, side by side with CLIP, SigLIP and DINOv2.",
        epilog="Run `tips-eval <command> --help` for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"tips-eval {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug logs)")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"tips_eval.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"tips_eval.commands.{name}":
                continue  # command not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # our own INFO lines (cache keys and paths) by default; third-party INFO chatter from -vv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tips_eval").setLevel(logging.DEBUG if args.verbose >= 1 else logging.INFO)
    if args.verbose >= 2:
        logging.getLogger().setLevel(logging.DEBUG)
    for noisy in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.INFO if args.verbose >= 2 else logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except TipsEvalError as e:
        if args.debug:
            raise
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; finished records are kept, rerun to resume", file=sys.stderr)
        return 130
    except Exception as e:  # unexpected: still one line unless --debug
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"error: {type(e).__name__}: {msg}", file=sys.stderr)
        print("hint: rerun with --debug for the full traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
