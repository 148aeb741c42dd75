"""The dev stack's kill reaches what a process started in a session of its own
(as the gateway's launcher starts Envoy): a SIGKILL of the launcher's group
alone leaves it running, and the soak's "kill" of Envoy would be none."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from iclaim_ops.devstack.stack import Stack, descendants

LAUNCHER = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
    "time.sleep(120)\n"
)


async def _launched() -> tuple[asyncio.subprocess.Process, int]:
    """A launcher and the child it started in a session of its own."""
    launcher = await asyncio.create_subprocess_exec(sys.executable, "-c", LAUNCHER, start_new_session=True)
    for _ in range(250):
        tree = descendants(launcher.pid)
        if tree:
            (child,) = tree
            assert os.getsid(child) != os.getsid(launcher.pid)  # out of the launcher's group
            return launcher, child
        await asyncio.sleep(0.02)
    raise AssertionError("the launcher started nothing")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_group_kill_misses_the_child_and_the_stack_kill_does_not(tmp_path: Path) -> None:
    launcher, child = await _launched()
    try:
        os.killpg(launcher.pid, signal.SIGKILL)  # what the stack did before
        await launcher.wait()
        await asyncio.sleep(0.2)
        assert _alive(child)
    finally:
        os.kill(child, signal.SIGKILL)

    launcher, child = await _launched()
    stack = Stack(tmp_path, "", "", "", procs={"envoy": launcher})
    try:
        await stack.kill("envoy")
        assert stack.exited("envoy") == -signal.SIGKILL
        assert not _alive(child)  # kill() returns only once the whole tree is gone
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_no_such_process_has_no_descendants() -> None:
    assert descendants(2**22 + 12345) == []
