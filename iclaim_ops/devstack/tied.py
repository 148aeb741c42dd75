"""`python -m iclaim_ops.devstack.tied PARENT_PID MODULE [ARGS...]`: runs
`python -m MODULE ARGS...` in this process after asking the kernel to stop it
when PARENT_PID (its launcher) dies, so a SIGKILLed dev stack or test run
leaves no services behind."""

from __future__ import annotations

import runpy
import sys

from iclaim_hub.common.parent_death import die_with


def command(parent: int, module: str) -> list[str]:
    """The argv prefix that starts `module` tied to `parent`."""
    return [sys.executable, "-m", "iclaim_ops.devstack.tied", str(parent), module]


def main() -> None:
    parent, module, *args = sys.argv[1:]
    die_with(int(parent))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
