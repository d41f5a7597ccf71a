"""The `segpipe` command: one subcommand per job, each registered by the package that owns it.

User errors (SegpipeError) print one line and exit non-zero, with no traceback;
Ctrl-C exits 130. Set SEGPIPE_DEBUG=1 to see tracebacks.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from train.errors import SegpipeError

EPILOG = """examples:
  segpipe run assets/sample.mp4 --out seg.mp4        segment a video with the shipped model
  segpipe live 0 --show                              webcam demo in a window
  segpipe bench --model-only                         inference speed of each backend
  segpipe train --config configs/unet_carla.yaml --data ../shared/carla
  segpipe eval --data ../shared/carla                accuracy of the shipped model
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written; "(default: X)" added only where there is a default the help does not state."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or isinstance(action.default, bool) \
                or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option value is one line on stderr and exit 2, as for other user errors."""

    def error(self, message):
        self.exit(2, f"segpipe {self.prog.split()[-1]}: error: {message} (see --help)\n"
                  if " " in self.prog else f"segpipe: error: {message} (see --help)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("segpipe")
    except PackageNotFoundError:                 # run from a checkout that was not installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    from engine import commands as engine_commands
    from pipeline import commands as pipeline_commands
    from pipeline import live as pipeline_live
    from train import commands as train_commands

    parser = Parser(prog="segpipe", description="Real-time semantic segmentation of driving video.",
                    epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"segpipe {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in (pipeline_commands, pipeline_live, engine_commands, train_commands):
        module.register(sub, HelpFormatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname).1s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SegpipeError as e:
        if os.environ.get("SEGPIPE_DEBUG"):
            raise
        print(f"segpipe {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"segpipe {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:               # the reader went away (segpipe engines | head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:                  # a file the OS refused late (disk full, permissions changed)
        if e.filename is None or os.environ.get("SEGPIPE_DEBUG"):
            raise
        print(f"segpipe {args.command}: error: cannot use {e.filename}: {e.strerror}; check the path, its "
              f"permissions and the free space", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
