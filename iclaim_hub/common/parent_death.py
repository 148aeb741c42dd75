"""Processes that do not outlive the process that started them.

A launcher (the dev stack, a test fixture, the Envoy runner) killed with
SIGKILL cannot stop its children, and they keep running in their own sessions:
ports stay taken and, in tests, leftovers share a Redis database with the next
run. On Linux the kernel can send them SIGTERM instead (prctl
PR_SET_PDEATHSIG); elsewhere nothing is done.

The child asks for it itself (`die_with(parent)`, first thing at start):
setting it between fork and exec (`preexec_fn`) would make Python fork
instead of spawn, and a parent holding gRPC channels may abort the child in
gRPC's fork handlers.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


@functools.cache
def _load_prctl() -> Callable[[int, int], int] | None:
    """Looked up once; a fork inherits it, so a preexec hook loads nothing
    between fork and exec (another thread may hold the loader's lock then)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def die_with(parent: int) -> None:
    """This process gets SIGTERM when process `parent` (which must be its
    parent) dies; if it has died already, exit now."""
    prctl = _load_prctl()
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for a launcher that holds no gRPC state (the Envoy
    runner): the child gets SIGTERM when the launcher dies."""
    if _load_prctl() is None:
        return None
    return functools.partial(die_with, os.getpid())
