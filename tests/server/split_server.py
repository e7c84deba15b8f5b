"""`trtserve serve` with tests/fakes.py's FakeEngine instead of a model: the real CLI options and
env, the real run_serve (one process, or --api-server-count N), the real EngineLoop + Scheduler
over a FakeExecutor speaking a script. Used by test_split_processes.py.

    python tests/server/split_server.py --port P --metrics-port M --api-server-count 2 \
        [--step-s 0.01] [--script TEXT]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]

from fakes import FakeEngine  # noqa: E402

from server.cli.main import build_parser  # noqa: E402
from server.cli.serve import run_serve, settings_from_args  # noqa: E402
from server.cli.log_format import configure_logging  # noqa: E402
from server.cli.preflight import bind_ports  # noqa: E402

SCRIPT = "Hello from the scripted engine."


def main() -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--step-s", type=float, default=0.0)
    extra.add_argument("--script", default=SCRIPT)
    own, rest = extra.parse_known_args()
    args = build_parser(only="serve").parse_args(["serve", "--model", "fake-model", *rest])
    settings = settings_from_args(args)
    configure_logging(settings.log_format, settings.log_level)
    os.environ.pop("TRTSERVE_API_SERVER_COUNT", None)  # read once, above
    return run_serve(settings, FakeEngine(own.script, step_s=own.step_s), bind_ports(settings))


if __name__ == "__main__":
    sys.exit(main())
