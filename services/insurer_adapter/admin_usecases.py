"""Operator use cases behind `iclaim admin` (docs/protocol.md §11): enrol
insurers and hospitals, change an insurer's connectivity, rotate its endpoint
key, read a registry entry, list and redrive deliveries.

Every request is validated completely before the first write, so a refused
request changes nothing. The registry is written in an order that never shows
a half-made principal: an insurer is added closed (`available: false`), gets
its keys, and is opened by the last write; an insurer switched to a push mode
gets its endpoint key before the switch. No transport types here: the
registry and the delivery layer are the protocols below.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from iclaim.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from iclaim_hub.common.access_log import HUB_TRANSACTION_RE
from iclaim_hub.registry.codes import HOSPITAL_CODE_RE, INSURER_CODE_RE, check_code
from iclaim_hub.registry.endpoints import check_ca_pem, check_delivery_mode, check_endpoint, check_public_jwk
from iclaim_hub.registry.model import HEALTH_UNKNOWN, PUSH_MODES, Principal

LINES = {"life": 1, "non-life": 2}
LINE_NAMES = {v: k for k, v in LINES.items()}
DELIVERY_STATES = ("", "waiting", "failed")

# Limits on what an operator may send (each refused, not cut); the endpoint,
# CA and JWK limits are the registry's (iclaim_hub.registry.endpoints).
MAX_NAME_CHARS = 200
MAX_REDRIVE = 1000
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000

SIGNING_SECRET_BYTES = 32  # §1


# --- seams -------------------------------------------------------------------------
class IssuedEndpointKey(Protocol):
    @property
    def key_id(self) -> str: ...

    @property
    def secret(self) -> bytes: ...


class HealthView(Protocol):
    @property
    def health(self) -> str: ...


class AdminRegistry(Protocol):
    """The registry operations the admin needs (iclaim_hub.registry.store.RegistryStore)."""

    async def principal(self, code: str, /) -> Principal | None: ...

    async def active_signing_key_ids(self, code: str, /) -> list[str]: ...

    async def upsert_principal(self, p: Principal, /) -> None: ...

    async def rotate_signing_key(self, code: str, new_key_id: str, secret: bytes, /) -> None: ...

    async def add_encryption_key(self, code: str, kid: str, public_jwk: dict[str, object], /) -> None: ...

    async def set_endpoint(
        self,
        code: str,
        /,
        *,
        delivery_mode: str | None = None,
        endpoint: str | None = None,
        endpoint_ca_pem: str | None = None,
        endpoint_mtls: bool | None = None,
        available: bool | None = None,
    ) -> object: ...

    async def issue_endpoint_key(self, code: str, /) -> IssuedEndpointKey: ...

    async def endpoint_key(self, code: str, /) -> IssuedEndpointKey | None: ...

    async def health(self, code: str, /) -> HealthView | None: ...


class DeliveryView(Protocol):
    @property
    def transaction_id(self) -> str: ...

    @property
    def insurer_code(self) -> str: ...

    @property
    def attempts(self) -> int: ...

    @property
    def last_error(self) -> str | None: ...

    @property
    def next_attempt_at(self) -> datetime | None: ...

    @property
    def state(self) -> str: ...


class DeliveryAdmin(Protocol):
    """The delivery layer's operator view (the adapter's delivery use cases)."""

    async def list_deliveries(self, insurer_code: str, state: str, limit: int, /) -> Sequence[DeliveryView]:
        """insurer_code "" = every insurer; state "" = every delivery not taken."""

    async def redrive(self, transaction_ids: Sequence[str], /) -> Sequence[str]:
        """Failed deliveries waiting again; the ids that were redriven."""


# --- requests and results ----------------------------------------------------------
@dataclass(frozen=True)
class NewInsurer:
    code: str
    display_name: str
    line: str
    delivery: str
    endpoint: str
    endpoint_ca_pem: str
    encryption_public_jwk: str
    endpoint_mtls: bool = False


@dataclass(frozen=True)
class InsurerChange:
    """None: leave as it is."""

    code: str
    available: bool | None = None
    endpoint: str | None = None
    endpoint_ca_pem: str | None = None
    delivery: str | None = None
    endpoint_mtls: bool | None = None


@dataclass(frozen=True)
class NewHospital:
    code: str
    display_name: str
    encryption_public_jwk: str


@dataclass(frozen=True)
class Enrolled:
    code: str
    key_id: str
    secret: bytes
    endpoint_key_id: str = ""
    endpoint_secret: bytes = b""


@dataclass(frozen=True)
class RegistryView:
    code: str
    role: str
    display_name: str
    line: str
    available: bool
    suspended: bool
    delivery: str
    endpoint: str
    endpoint_ca_set: bool
    endpoint_mtls: bool
    encryption_kids: tuple[str, ...]
    current_kid: str
    endpoint_key_id: str
    health: str
    # Only when this very call issued the insurer's first endpoint key.
    endpoint_secret: bytes = b""


# --- validation (pure) -------------------------------------------------------------
def _insurer_code(code: str) -> str:
    return check_code(code, "insurer", "insurer code must be 2-16 of A-Z 0-9 _")


def _hospital_code(code: str) -> str:
    return check_code(code, "hospital", "hospital code must be 5 digits (MOPH hcode)")


def _name(name: str) -> str:
    text = name.strip()
    if not text or len(text) > MAX_NAME_CHARS or not text.isprintable():
        raise InvalidArgument(f"name must be 1-{MAX_NAME_CHARS} printable characters", reason="NAME_INVALID")
    return text


def _line(line: str) -> int:
    if line not in LINES:
        raise InvalidArgument("line must be life or non-life", reason="LINE_INVALID")
    return LINES[line]


def parse_public_jwk(text: str) -> dict[str, Any]:
    """One public JWK as JSON: a kid, no private members, a key envelopes can seal to."""
    return check_public_jwk(text)


def _push_extras(mode: str, ca_pem: str, mtls: bool) -> None:
    if mode in PUSH_MODES:
        return
    if ca_pem:
        raise InvalidArgument("a pull insurer has no endpoint CA", reason="ENDPOINT_CA_INVALID")
    if mtls:
        raise InvalidArgument("a pull insurer has no endpoint to use mTLS with", reason="ENDPOINT_INVALID")


def _new_signing_key() -> tuple[str, bytes]:
    return f"k-{secrets.token_hex(6)}", secrets.token_bytes(SIGNING_SECRET_BYTES)


# --- the use cases ------------------------------------------------------------------
class RegistryAdmin:
    """Enrolment and connectivity changes on the registry."""

    def __init__(self, registry: AdminRegistry) -> None:
        self._registry = registry

    async def _unused_code(self, code: str, role: str) -> None:
        """A code is free unless a principal holds it with an active signing key.
        A principal without one is the remains of an enrolment that stopped
        half-way (nothing can use it yet); adding it again completes it."""
        existing = await self._registry.principal(code)
        if existing is None:
            return
        if existing.role != role or await self._registry.active_signing_key_ids(code):
            raise AlreadyExists("a principal with this code exists", reason="PRINCIPAL_EXISTS")

    async def _insurer(self, code: str) -> Principal:
        p = await self._registry.principal(_insurer_code(code))
        if p is None or p.role != "insurer":
            raise NotFound("no insurer with this code", reason="UNKNOWN_PRINCIPAL")
        return p

    async def add_insurer(self, req: NewInsurer) -> Enrolled:
        code = _insurer_code(req.code)
        name = _name(req.display_name)
        line = _line(req.line)
        mode = check_delivery_mode(req.delivery)
        endpoint = check_endpoint(mode, req.endpoint)
        ca_pem = check_ca_pem(req.endpoint_ca_pem)
        _push_extras(mode, ca_pem, req.endpoint_mtls)
        jwk = parse_public_jwk(req.encryption_public_jwk)
        await self._unused_code(code, "insurer")

        # Closed until the last write, so nobody routes to it half-made.
        await self._registry.upsert_principal(
            Principal(
                code,
                "insurer",
                name,
                line=line,
                delivery_mode=mode,
                available=False,
                endpoint=endpoint,
                endpoint_ca_pem=ca_pem,
                endpoint_mtls=req.endpoint_mtls,
            )
        )
        await self._registry.add_encryption_key(code, str(jwk["kid"]), jwk)
        endpoint_key = await self._registry.issue_endpoint_key(code) if mode in PUSH_MODES else None
        key_id, secret = _new_signing_key()
        await self._registry.rotate_signing_key(code, key_id, secret)
        await self._registry.set_endpoint(code, available=True)
        return Enrolled(
            code,
            key_id,
            secret,
            endpoint_key.key_id if endpoint_key else "",
            endpoint_key.secret if endpoint_key else b"",
        )

    async def set_insurer(self, change: InsurerChange) -> RegistryView:
        current = await self._insurer(change.code)
        mode = (
            check_delivery_mode(change.delivery)
            if change.delivery is not None
            else (current.delivery_mode or "pull")
        )
        leaving_push = mode not in PUSH_MODES and current.delivery_mode in PUSH_MODES

        def pick(given: Any, now: Any, cleared: Any) -> Any:
            # Switching to pull drops what only a push needs, unless the request names it.
            return given if given is not None else (cleared if leaving_push else now)

        endpoint: str = pick(change.endpoint, current.endpoint, "")
        ca_pem: str = pick(change.endpoint_ca_pem, current.endpoint_ca_pem, "")
        mtls: bool = pick(change.endpoint_mtls, current.endpoint_mtls, False)
        check_endpoint(mode, endpoint)
        check_ca_pem(ca_pem)
        _push_extras(mode, ca_pem, mtls)

        issued = None
        if mode in PUSH_MODES and await self._registry.endpoint_key(current.code) is None:
            # Before the switch: a push insurer always has a key to be signed with.
            issued = await self._registry.issue_endpoint_key(current.code)
        changes: dict[str, Any] = {
            "delivery_mode": mode if mode != current.delivery_mode else None,
            "endpoint": endpoint if endpoint != current.endpoint else None,
            "endpoint_ca_pem": ca_pem if ca_pem != current.endpoint_ca_pem else None,
            "endpoint_mtls": mtls if mtls != current.endpoint_mtls else None,
            "available": change.available if change.available != current.available else None,
        }
        if any(v is not None for v in changes.values()):
            await self._registry.set_endpoint(current.code, **changes)
        view = await self.entry(current.code)
        return replace(view, endpoint_secret=issued.secret) if issued is not None else view

    async def rotate_endpoint_key(self, code: str) -> IssuedEndpointKey:
        insurer = await self._insurer(code)
        if insurer.delivery_mode not in PUSH_MODES:
            raise FailedPrecondition(
                "endpoint keys sign pushes; this insurer pulls", reason="DELIVERY_NOT_PUSH"
            )
        return await self._registry.issue_endpoint_key(insurer.code)

    async def add_hospital(self, req: NewHospital) -> Enrolled:
        code = _hospital_code(req.code)
        name = _name(req.display_name)
        jwk = parse_public_jwk(req.encryption_public_jwk)
        await self._unused_code(code, "hospital")

        await self._registry.upsert_principal(Principal(code, "hospital", name))
        await self._registry.add_encryption_key(code, str(jwk["kid"]), jwk)
        # Last: a hospital can do nothing before it has a signing key.
        key_id, secret = _new_signing_key()
        await self._registry.rotate_signing_key(code, key_id, secret)
        return Enrolled(code, key_id, secret)

    async def entry(self, code: str) -> RegistryView:
        if not (INSURER_CODE_RE.fullmatch(code) or HOSPITAL_CODE_RE.fullmatch(code)):
            raise InvalidArgument("not a hospital or insurer code", reason="CODE_INVALID")
        p = await self._registry.principal(code)
        if p is None:
            raise NotFound("no principal with this code", reason="UNKNOWN_PRINCIPAL")
        insurer = p.role == "insurer"
        endpoint_key = await self._registry.endpoint_key(code) if insurer else None
        health = await self._registry.health(code) if insurer else None
        current = p.current_key()
        return RegistryView(
            code=p.code,
            role=p.role,
            display_name=p.display_name,
            line=LINE_NAMES.get(p.line, "") if p.line is not None else "",
            available=p.available,
            suspended=p.suspended,
            delivery=p.delivery_mode or "",
            endpoint=p.endpoint,
            endpoint_ca_set=bool(p.endpoint_ca_pem),
            endpoint_mtls=p.endpoint_mtls,
            encryption_kids=tuple(k.kid for k in p.accepted_keys()),
            current_kid=current.kid if current else "",
            endpoint_key_id=endpoint_key.key_id if endpoint_key else "",
            health=(health.health if health else HEALTH_UNKNOWN) if insurer else "",
        )


class DeliveryOps:
    """Listing and redriving deliveries: checked here, done by the delivery layer."""

    def __init__(self, deliveries: DeliveryAdmin) -> None:
        self._deliveries = deliveries

    async def list(self, insurer_code: str, state: str, limit: int) -> Sequence[DeliveryView]:
        if insurer_code:
            _insurer_code(insurer_code)
        if state not in DELIVERY_STATES:
            raise InvalidArgument("state must be waiting or failed", reason="STATE_INVALID")
        if not 0 <= limit <= MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit must be 0..{MAX_LIST_LIMIT}", reason="LIMIT_INVALID")
        return await self._deliveries.list_deliveries(insurer_code, state, limit or DEFAULT_LIST_LIMIT)

    async def redrive(self, transaction_ids: Sequence[str]) -> Sequence[str]:
        if not transaction_ids:
            raise InvalidArgument("name at least one transaction id", reason="TRANSACTION_ID_INVALID")
        if len(transaction_ids) > MAX_REDRIVE:
            raise InvalidArgument(
                f"at most {MAX_REDRIVE} transaction ids at once", reason="TOO_MANY_TRANSACTION_IDS"
            )
        for tid in transaction_ids:
            if not HUB_TRANSACTION_RE.fullmatch(tid):
                raise InvalidArgument("not a transaction id (txn_…)", reason="TRANSACTION_ID_INVALID")
        return await self._deliveries.redrive(list(dict.fromkeys(transaction_ids)))
