"""A launcher killed outright (SIGKILL: no teardown runs) takes its children
with it: the dev stack's services, the portals, the Envoy runner's Envoy and
the test gateway are started with `die_with_parent()`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from iclaim_hub.common.parent_death import die_with_parent

ROOT = Path(__file__).resolve().parents[2]

LAUNCHER = textwrap.dedent(
    """
    import subprocess, sys, time
    from iclaim_hub.common.parent_death import die_with_parent
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        start_new_session=True,  # like the stack's services: out of reach of a process-group kill
        preexec_fn=die_with_parent() if sys.argv[1] == "tied" else None,
    )
    print(child.pid, flush=True)
    time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def _grandchild_after_launcher_killed(mode: str) -> int:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, mode],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "sdk")])},
    )
    assert launcher.stdout is not None
    pid = int(launcher.stdout.readline())
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    return pid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_child_dies_when_its_launcher_is_killed() -> None:
    assert die_with_parent() is not None
    tied = _grandchild_after_launcher_killed("tied")
    deadline = time.monotonic() + 10
    while _alive(tied) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(tied)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_without_it_the_child_is_orphaned() -> None:
    """The control: the same launcher without the hook leaves its child running."""
    loose = _grandchild_after_launcher_killed("loose")
    try:
        time.sleep(0.5)
        assert _alive(loose)
    finally:
        os.kill(loose, signal.SIGKILL)
