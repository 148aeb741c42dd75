"""The soak's knobs, read once from the environment."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from iclaim_ops.devstack.stack import layout_from_env


def _int(name: str, default: int, lo: int = 0) -> int:
    value = int(os.environ.get(name, "") or default)
    if value < lo:
        raise ValueError(f"{name} must be at least {lo}")
    return value


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, "") or default)


@dataclass(frozen=True)
class SoakConfig:
    claims: int = 10_000
    kills: int = 30  # SIGKILLs of hub processes (each restarted after a short pause)
    flushes: int = 5  # FLUSHALL of the soak's own Redis
    pg_restarts: int = 3  # stop/start of the soak's own PostgreSQL
    insurer_kills: int = 3  # SIGKILLs of the sandbox insurers' process
    concurrency: int = 24  # claims being submitted at once (the HIS side)
    bill_share: float = 0.2  # share of approved claims invoiced and paid during the run
    settle_s: float = 240.0  # after the chaos: how long the system may take to settle
    seed: int = 0
    log_level: str = "WARNING"
    keep: bool = False  # keep the state folder (logs) even when every check passed
    layout: str = "split"  # the hub's processes (ICLAIM_HUB_LAYOUT: split or cohost)

    @classmethod
    def from_env(cls) -> SoakConfig:
        return cls(
            claims=_int("SOAK_CLAIMS", cls.claims, lo=1),
            kills=_int("SOAK_KILLS", cls.kills),
            flushes=_int("SOAK_FLUSHES", cls.flushes),
            pg_restarts=_int("SOAK_PG_RESTARTS", cls.pg_restarts),
            insurer_kills=_int("SOAK_INSURER_KILLS", cls.insurer_kills),
            concurrency=_int("SOAK_CONCURRENCY", cls.concurrency, lo=1),
            bill_share=_float("SOAK_BILL_SHARE", cls.bill_share),
            settle_s=_float("SOAK_SETTLE_S", cls.settle_s),
            seed=_int("SOAK_SEED", secrets.randbelow(2**31)),
            log_level=os.environ.get("SOAK_LOG_LEVEL", cls.log_level),
            keep=os.environ.get("SOAK_KEEP", "") not in ("", "0"),
            layout=layout_from_env(),
        )
