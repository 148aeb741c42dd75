"""The repository stands alone: a fresh clone in an empty directory (nothing
beside it, no shared/ folder) generates its stubs, collects every test and passes
the unit tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# The clone's unit tests alone take minutes: well past the suite's 300 s default.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
# The workplace folder beside the checkout, spelt so that this file does not match itself.
SHARED = "/".join(["..", "shared"])


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    # Its own process group: if this test is stopped, nothing of the inner run lives on
    # (an orphaned inner pytest would flush the Redis databases the outer run uses).
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{out[-4000:]}\n{err[-4000:]}"
    return out


FILE_READING_TESTS = (
    "tests/unit/test_protocol_doc.py",
    "tests/unit/test_image_recipe.py",
    "tests/unit/test_wycheproof_jwe.py",
    "tests/unit/test_merkle.py",
    "tests/unit/test_checkpoint.py",
    "tests/unit/test_sandbox_process.py",
    "tests/portal/test_vendored.py",
)


def test_fresh_clone_collects_every_test_and_passes_the_file_reading_ones(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    clone = empty / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    assert sorted(p.name for p in empty.iterdir()) == ["repo"]

    tracked = subprocess.run(
        ["git", "grep", "-l", "-e", SHARED, "--", "."], cwd=clone, capture_output=True, text=True
    ).stdout.split()
    assert tracked == [], f"tracked files refer to {SHARED}: {tracked}"

    # This interpreter's packages, but the clone's code first on the path.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (clone / "sdk", clone / "portal", clone))
    # Redis databases of its own, apart from the ones this (outer) run uses.
    env["ICLAIM_TEST_REDIS_DB"], env["ICLAIM_TEST_STACK_REDIS_DB"] = "6", "7"
    _run([sys.executable, "tools/gen_protos.py"], clone, env, 300)
    where = _run(
        [
            sys.executable,
            "-c",
            "import iclaim.v1, iclaim_hub, iclaim_portal, services, tests; "
            "print(iclaim.v1.__file__, iclaim_hub.__file__, iclaim_portal.__file__, services.__file__,"
            " tests.__file__)",
        ],
        clone,
        env,
        60,
    )
    assert all(path.startswith(str(clone)) for path in where.split()), where

    collected = _run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], clone, env, 300
    )
    assert "error" not in collected.lower().splitlines()[-1], collected[-2000:]
    # The outer run executes every test on this tree; here, the ones that read the
    # repository's own files (vectors, the protocol, the image recipe, vendored
    # assets) show that the clone holds all they need.
    unit = _run(
        [sys.executable, "-m", "pytest", *FILE_READING_TESTS, "-q", "-p", "no:cacheprovider"], clone, env, 900
    )
    last = unit.strip().splitlines()[-1]
    assert " passed" in last and "failed" not in last and "error" not in last, last
