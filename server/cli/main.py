"""`trtserve` command line: a dispatcher over subcommand modules.

Each subcommand module exposes `add_parser(subparsers) -> None` (registering its parser with
`set_defaults(run=...)`) where `run(args: argparse.Namespace) -> int` returns the exit code.
Only the module of the subcommand being run is imported, each by a plain import inside a small
function (`trtserve --help` stays fast; the arrows stay visible to import checks).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

Adder = Callable[[Any], None]  # registers one subcommand's parser on the subparsers


def _serve(sub: Any) -> None:
    from server.cli import serve as cmd_serve

    cmd_serve.add_parser(sub)


def _build(sub: Any) -> None:
    from server.cli import build as cmd_build

    cmd_build.add_parser(sub)


def _prepare(sub: Any) -> None:
    from server.cli import prepare as cmd_prepare

    cmd_prepare.add_parser(sub)


def _generate(sub: Any) -> None:
    from server.cli import generate as cmd_generate

    cmd_generate.add_parser(sub)


def _bench(sub: Any) -> None:
    """The load generator (its own package, HTTP only); the engine reads model tokenizers."""
    from loadgen import cmd

    cmd.add_parser(sub, model_tokenizer=_model_tokenizer)


def _model_tokenizer(name: str) -> Any:
    from engine.registry import read_tokenizer

    return read_tokenizer(name)


# subcommand -> (what registers its parser, one-line help shown by `trtserve --help`)
SUBCOMMANDS: dict[str, tuple[Adder, str]] = {
    "serve": (_serve, "Run the HTTP inference server."),
    "build": (_build, "build a graph/TensorRT engine into a directory for serve --engine-dir"),
    "prepare": (_prepare, "build and cache the model graph"),
    "generate": (_generate, "greedy generation from a prompt"),
    "bench": (_bench, "benchmark a running server (streaming load)"),
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
    for name, (add, help_text) in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        add(sub)
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
