"""Whether the audit log may run with the database login it was given.

Its writes must not run with the schema owner's or a superuser's rights: those
can switch the append-only triggers off. It writes as iclaim_audit_writer,
either by logging in as a member of that role or by SET LOCAL ROLE in each
write transaction. A login that can do neither ("owner mode") is refused
unless the dev-only setting allows it. Pure: the facts come from the store."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from iclaim_hub.common.config import ConfigError

log = structlog.get_logger("audit_log.db_login")

ALLOW_OWNER_ENV = "ICLAIM_AUDIT_ALLOW_OWNER"


@dataclass(frozen=True)
class DbLogin:
    privileged: bool  # superuser, CREATEROLE or a member of the schema's owner
    writer: bool  # may SET ROLE iclaim_audit_writer
    pending: tuple[str, ...] = ()  # migrations not applied (the login could not apply them)


def check_login(login: DbLogin, allow_owner: bool) -> None:
    """Raises ConfigError when the service must not start with this login."""
    if login.pending:
        raise ConfigError(
            f"schema audit lacks migrations {', '.join(login.pending)}; this login cannot apply"
            " them: start once with the schema owner's ICLAIM_DATABASE_URL"
        )
    if login.writer:
        if login.privileged:
            # Writes still run as the writer role; the login itself could undo that.
            log.warning("audit_privileged_login", hint="log in as a member of iclaim_audit_writer")
        return
    if not allow_owner:
        raise ConfigError(
            "ICLAIM_DATABASE_URL cannot act as iclaim_audit_writer, so audit_log would write with"
            f" the owner's rights; grant that role to the login ({ALLOW_OWNER_ENV}=true: dev only)"
        )
    log.warning("audit_owner_mode", setting=ALLOW_OWNER_ENV)
