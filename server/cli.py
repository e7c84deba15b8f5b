"""`trtserve` command line: a dispatcher over subcommand modules.

Each subcommand module exposes `add_parser(subparsers) -> None` (registering its parser with
`set_defaults(run=...)`) where `run(args: argparse.Namespace) -> int` returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

logger = logging.getLogger(__name__)

# subcommand -> module that implements it
SUBCOMMANDS: dict[str, str] = {
    "serve": "server.cmd_serve",
    "build": "server.cmd_build",
    "prepare": "server.cmd_prepare",
    "generate": "server.cmd_generate",
    "bench": "server.bench.cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            logger.debug("subcommand %s not available (%s)", name, module_name)
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
