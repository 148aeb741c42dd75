"""The chaos driver: SIGKILLs hub processes (each restarted after a short random
pause), flushes Redis, restarts PostgreSQL and kills the sandbox insurers,
spread over the whole run. Events are placed at random points of the claim
sequence; the HIS may not submit past the next event's point until the current
event is over, so every event meets claims in flight, whatever the speed."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.soak.his import His
from bench.soak.infra import RedisServer
from bench.soak.replay import Replayer
from iclaim_ops.devstack.stack import ENVOY, LAYOUTS, ROUTER_ADAPTER, SANDBOX, Stack
from iclaim_ops.devstack.private_postgres import PrivatePostgres

# The processes a claim's acknowledgement and decision pass through: each
# round of kills takes these before the others, so a run with fewer kills
# than hub processes (CI's 5 of 6) still kills every one of them.
_ON_CLAIM_PATH = ("claim_router", "insurer_adapter", ROUTER_ADAPTER.name, "envoy", "authz")


def hub_of(layout: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The hub's processes in `layout` (LAYOUTS), and those of them on the claim path."""
    hub = tuple(s.name for s in (*LAYOUTS[layout], ENVOY))
    return hub, tuple(name for name in _ON_CLAIM_PATH if name in hub)


# The split layout's: claim_router, insurer_adapter, audit_log, billing, authz, envoy.
HUB, CLAIM_PATH = hub_of("split")
FLUSH, PG, INSURERS = "redis-flush", "postgres-restart", "insurer-kill"
PG_MODES = ("fast", "immediate")  # "immediate": as if the server crashed
RESTART_TRIES = 3
REPLAYS_AFTER_EVENT = 4


@dataclass
class Tally:
    kills: Counter[str] = field(default_factory=Counter)
    flushes: int = 0
    pg_restarts: int = 0
    insurer_kills: int = 0
    problems: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())


def schedule(
    claims: int,
    kills: int,
    flushes: int,
    pg_restarts: int,
    insurer_kills: int,
    rng: random.Random,
    layout: str = "split",
) -> list[tuple[int, str]]:
    """(claim index, event), in order. Each hub process of `layout` is killed as
    evenly as `kills` allows (each round: the claim path's processes, then the
    others, each group in a random order); the events themselves are shuffled
    and spread over 3 %..90 % of the claims."""
    hub, claim_path = hub_of(layout)
    rest = tuple(name for name in hub if name not in claim_path)
    victims: list[str] = []
    while len(victims) < kills:
        victims.extend(rng.sample(claim_path, len(claim_path)) + rng.sample(rest, len(rest)))
    events = victims[:kills] + [FLUSH] * flushes + [PG] * pg_restarts + [INSURERS] * insurer_kills
    rng.shuffle(events)
    if not events:
        return []
    lo, hi = 0.03 * claims, 0.90 * claims
    step = (hi - lo) / len(events)
    points = [int(lo + step * (i + rng.random() * 0.5)) for i in range(len(events))]
    return list(zip(points, events, strict=True))


class Chaos:
    def __init__(
        self,
        stack: Stack,
        pg: PrivatePostgres,
        redis: RedisServer,
        his: His,
        replayer: Replayer,
        events: list[tuple[int, str]],
        rng: random.Random,
    ) -> None:
        self._stack, self._pg, self._redis = stack, pg, redis
        self._his, self._replayer = his, replayer
        self.events = events
        self._rng = rng
        self.tally = Tally()
        self._t0 = time.monotonic()

    async def open_gate(self) -> None:
        """Lets the HIS submit up to the first event's point."""
        await self._his.allow(self.events[0][0] + 1 if self.events else len(self._his.planned))

    async def run(self) -> None:
        total = len(self._his.planned)
        for i, (point, event) in enumerate(self.events):
            await self._his.wait_started(point)
            # Claims keep coming while this event happens, up to the next event's point.
            await self._his.allow(self.events[i + 1][0] + 1 if i + 1 < len(self.events) else total)
            started = time.monotonic()
            await self._do(event)
            took = time.monotonic() - started
            self.tally.log.append(f"{started - self._t0:7.1f} s  claim {point:>6}  {event}  ({took:.1f} s)")
            await self._replayer.burst(REPLAYS_AFTER_EVENT)
        await self._his.allow(total)

    async def _do(self, event: str) -> None:
        if event == FLUSH:
            await self._redis.flushall()
            self.tally.flushes += 1
            # Right after the flush the nonces of every captured request are gone.
            await self._replayer.burst(REPLAYS_AFTER_EVENT)
        elif event == PG:
            await self._pg.stop(PG_MODES[self.tally.pg_restarts % len(PG_MODES)])
            await asyncio.sleep(self._rng.uniform(1.0, 4.0))
            await self._pg.start()
            self.tally.pg_restarts += 1
        elif event == INSURERS:
            await self._kill_and_restart(SANDBOX.name)
            self.tally.insurer_kills += 1
        else:
            await self._kill_and_restart(event)
            self.tally.kills[event] += 1

    async def _kill_and_restart(self, name: str) -> None:
        code = self._stack.exited(name)
        if code is not None:
            # Died on its own before the kill: a crash the restart would hide.
            self.tally.problems.append(f"{name} had exited on its own (code {code}) before its kill")
        await self._stack.kill(name, signal.SIGKILL)
        await asyncio.sleep(self._rng.uniform(0.2, 3.0))
        for attempt in range(1, RESTART_TRIES + 1):
            try:
                await self._stack.restart(name)
                return
            except (RuntimeError, TimeoutError) as exc:
                self.tally.problems.append(f"restart of {name} failed (try {attempt}): {exc}")
                if self._stack.procs[name].returncode is None:
                    await self._stack.kill(name, signal.SIGKILL)  # started but never healthy
                await asyncio.sleep(2.0)
        raise RuntimeError(f"{name} could not be restarted; see {self._stack.logs_dir}")
