"""Children that do not outlive the process that started them.

A launcher (the dev stack, a test fixture, the Envoy runner) that is killed
with SIGKILL cannot stop its children, and they keep running in their own
sessions: ports stay taken and, in tests, leftovers share a Redis database
with the next run. On Linux the kernel can send them SIGTERM instead
(prctl PR_SET_PDEATHSIG); elsewhere this does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    # Looked up now, in the parent: the child between fork and exec must not
    # load libraries (another thread may hold the loader's lock at fork time).
    prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


_prctl = _load_prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess/asyncio: the child gets SIGTERM when the
    calling process dies. None where the platform cannot do it."""
    if _prctl is None:
        return None
    prctl, parent = _prctl, os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return preexec
