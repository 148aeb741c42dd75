"""A launcher killed outright (SIGKILL: no teardown runs) takes its children
with it: the dev stack starts its services and portals, and the test gateway
its runner, through `iclaim_ops.devstack.tied`; the Envoy runner starts Envoy
with `die_with_parent()`. The control shows the child outliving its launcher
without either."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LAUNCHER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from iclaim_hub.common.parent_death import die_with_parent
    from iclaim_ops.devstack import tied
    serve = ["--bind", "127.0.0.1", "0"]  # http.server: a module that runs until stopped
    mode = sys.argv[1]
    if mode == "tied":
        cmd, preexec = [*tied.command(os.getpid(), "http.server"), *serve], None
    else:
        cmd = [sys.executable, "-m", "http.server", *serve]
        preexec = die_with_parent() if mode == "preexec" else None
    child = subprocess.Popen(
        cmd,
        start_new_session=True,  # like the stack's services: out of reach of a process-group kill
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=preexec,
    )
    print(child.pid, flush=True)
    time.sleep(120)
    """
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def _child_of_killed_launcher(mode: str) -> int:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, mode],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "sdk")])},
    )
    assert launcher.stdout is not None
    pid = int(launcher.stdout.readline())
    time.sleep(0.5)  # the tied child asks for the signal as it starts
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    return pid


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


@linux_only
@pytest.mark.parametrize("mode", ["tied", "preexec"])
def test_a_child_stops_when_its_launcher_is_killed(mode: str) -> None:
    assert _gone_within(_child_of_killed_launcher(mode), 10)


@linux_only
def test_without_it_the_child_is_orphaned() -> None:
    loose = _child_of_killed_launcher("loose")
    try:
        assert not _gone_within(loose, 1)
    finally:
        os.kill(loose, signal.SIGKILL)
