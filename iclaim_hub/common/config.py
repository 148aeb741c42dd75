"""Reading service configuration from the environment, validated up front."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar


class ConfigError(ValueError):
    pass


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise ConfigError(f"{name} must be set")
    return value


N = TypeVar("N", int, float)


def _env_number(name: str, default: N, lo: N, hi: N, parse: Callable[[str], N], kind: str) -> N:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from exc
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be within {lo}..{hi}, got {value}")
    return value


def env_int(name: str, default: int, *, lo: int, hi: int) -> int:
    return _env_number(name, default, lo, hi, int, "an integer")


def env_float(name: str, default: float, *, lo: float, hi: float) -> float:
    return _env_number(name, default, lo, hi, float, "a number")


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be a boolean, got {raw!r}")


def env_addr(name: str, default: str) -> str:
    value = env_str(name, default)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} must be host:port, got {value!r}")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (os.environ.get(name) or default).upper()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value
