"""structlog, configured once per process: JSON lines, or console on a TTY."""

from __future__ import annotations

import logging
import sys

import structlog

from iclaim_hub.common.tracing import add_trace_ids

_configured = False

# Every line: the bound context (rpc, client, transaction_id, request_id), the
# current trace and span ids (tracing on), level and time.
PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    add_trace_ids,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
]


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    """Once per process; the level comes from the process's config (ServeConfig)."""
    global _configured
    if _configured:
        return
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*PROCESSORS, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _configured = True
