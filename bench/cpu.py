"""CPU time of processes from /proc (Linux; no psutil): user + system seconds
of a process and its live descendants, e.g. Envoy under its Python runner."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int | str) -> float:
    """utime + stime (fields 14, 15) of one process; 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # fields[0] is field 3 (state): utime is fields[11], stime fields[12].
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_of() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process we can see."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _tree(pid: int, tree: Mapping[int, list[int]]) -> list[int]:
    """The process and its live descendants."""
    found, todo, seen = [], [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        found.append(p)
        todo.extend(tree.get(p, ()))
    return found


def tree_cpu_seconds(pid: int, tree: Mapping[int, list[int]] | None = None) -> float:
    """The process and its live descendants."""
    tree = children_of() if tree is None else tree
    return sum(cpu_seconds(p) for p in _tree(pid, tree))


def snapshot(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process tree, plus this process ("self")."""
    tree = children_of()
    out = {name: tree_cpu_seconds(pid, tree) for name, pid in pids.items()}
    out["self"] = cpu_seconds(os.getpid())
    return out


_SWITCH_LINES = ("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")


def status_switches(status_text: str) -> int:
    """Voluntary + involuntary context switches in one /proc/.../status text."""
    lines = status_text.splitlines()
    return sum(int(line.split(":", 1)[1]) for line in lines if line.startswith(_SWITCH_LINES))


def switches(pid: int | str) -> int:
    """Context switches so far of every live thread of one process (0 if it
    is gone). A voluntary one is a thread that went to sleep and was woken
    again: each hop between processes costs a few, whatever it carries, so
    per claim they show what batching saves and what light load costs. A
    thread that has exited takes its count with it."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    total = 0
    for task in tasks:
        try:
            total += status_switches((task / "status").read_text())
        except OSError:  # the thread exited meanwhile
            continue
    return total


def switches_snapshot(pids: Mapping[str, int]) -> dict[str, int]:
    """Context switches so far of each named process tree."""
    tree = children_of()
    return {name: sum(switches(p) for p in _tree(pid, tree)) for name, pid in pids.items()}


def used(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before.get(name, 0.0), 2) for name in after}


# /proc/stat's first line: user nice system idle iowait irq softirq steal (guest
# time is counted in user already).
_BUSY_FIELDS = (0, 1, 2, 5, 6)
_IDLE_FIELDS = (3, 4)
_STEAL_FIELD = 7


def machine_ticks(stat_text: str | None = None) -> dict[str, int]:
    """Clock ticks the whole machine (all CPUs) spent busy, idle and stolen by
    the hypervisor since boot."""
    text = Path("/proc/stat").read_text() if stat_text is None else stat_text
    values = [int(v) for v in text.splitlines()[0].split()[1:]]
    return {
        "busy": sum(values[i] for i in _BUSY_FIELDS),
        "idle": sum(values[i] for i in _IDLE_FIELDS),
        "steal": values[_STEAL_FIELD] if len(values) > _STEAL_FIELD else 0,
    }


def machine_shares(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, float]:
    """How the machine's CPUs spent a window: the busy share (every process and
    the kernel, ours or not) and the share the hypervisor gave to others."""
    spent = {key: after[key] - before[key] for key in ("busy", "idle", "steal")}
    total = max(sum(spent.values()), 1)
    return {"busy": round(spent["busy"] / total, 3), "steal": round(spent["steal"] / total, 3)}
