"""A live progress bar on stderr (tqdm): finished requests of one run and how many failed."""

from __future__ import annotations

import sys

from tqdm import tqdm

from loadgen.client import RequestResult


class ProgressBar:
    """Counts finished requests of one run; `update` is the loadgen's on_done callback."""

    def __init__(self, label: str, total: int, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self._bar = tqdm(total=total, desc=label, unit="req", disable=not enabled,
                         file=sys.stderr, mininterval=0.1,
                         bar_format="{desc} |{bar:30}| {n}/{total}{postfix} {elapsed}")
        self._bar.set_postfix_str("failed=0", refresh=False)

    def update(self, result: RequestResult) -> None:
        self.done += 1
        self.failed += 0 if result.ok else 1
        self._bar.set_postfix_str(f"failed={self.failed}", refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
