"""Child processes that never outlive the process that started them."""

from __future__ import annotations

import ctypes
import logging
import os
import signal

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a child: the kernel SIGKILLs it when `parent` (the pid that spawned it) dies, even by
    SIGKILL; a child whose parent is already gone exits at once."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        logger.warning("PR_SET_PDEATHSIG unavailable: children may outlive the server")
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
