"""The ``duplex`` command line. Each command group lives in its own module (``codec``, ``serve``, ``client``,
``mic``, ``offline``, ``voices``, ``data``, ``train``, ``bench``) with its parser (``register``) beside the code it runs; this module only
builds the parser from them and maps the project's own errors to one-line messages."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Optional, Sequence

from codec.errors import CodecError

from .. import __version__
from ..errors import DuplexError
from . import bench, client, codec, data, mic, offline, serve, train, voices
from .common import Parser

COMMANDS = (codec, serve, client, mic, offline, voices, data, train, bench)


def build_parser() -> Parser:
    parser = Parser(prog="duplex", description="Full-duplex speech dialogue engine (Moshi/Mimi).")
    parser.add_argument("--version", action="version", version=f"duplex {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(commands)
    return parser


START_HERE = """
start here:
  duplex serve                      the voice server on the default model: open http://localhost:8998/
  duplex mic                        talk to the default model through this machine's microphone and speakers
  duplex client demos/hello.wav reply.wav
                                    send a file to a running server, write its reply
  duplex COMMAND --help             the options of one command
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        parser.print_help()
        print(START_HERE)
        return 0
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["duplex", *argv])  # recorded in benchmark reports
    try:
        return int(args.run(args) or 0)
    except (CodecError, DuplexError) as e:  # a programming error is not one of these: it shows its traceback
        if os.environ.get("DUPLEX_DEBUG"):
            raise
        print(f"duplex: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
