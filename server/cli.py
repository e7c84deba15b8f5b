"""`trtserve` command line: a dispatcher over subcommand modules.

Each subcommand module exposes `add_parser(subparsers) -> None` (registering its parser with
`set_defaults(run=...)`) where `run(args: argparse.Namespace) -> int` returns the exit code.
Only the module of the subcommand being run is imported (`trtserve --help` stays fast).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

logger = logging.getLogger(__name__)

# subcommand -> (module that implements it, one-line help shown by `trtserve --help`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("server.cmd_serve", "Run the HTTP inference server."),
    "build": ("server.cmd_build", "build a graph/TensorRT engine into a directory for "
                                  "serve --engine-dir"),
    "prepare": ("server.cmd_prepare", "build and cache the model graph"),
    "generate": ("server.cmd_generate", "greedy generation from a prompt"),
    "bench": ("server.bench.cmd", "benchmark a running server (streaming load)"),
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("trtserve")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `only`, the other subcommands are listed but not imported."""
    parser = argparse.ArgumentParser(
        prog="trtserve", description="LLM inference server: Triton generate/KServe v2/OpenAI "
        "HTTP routes, in-flight batching, TensorRT and ONNX Runtime executors.",
        epilog="`trtserve COMMAND --help` lists a command's options.")
    parser.add_argument("--version", action="version", version=f"trtserve {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
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
    words = sys.argv[1:] if argv is None else argv
    command = next((w for w in words if not w.startswith("-")), "")
    args = build_parser(only=command).parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
