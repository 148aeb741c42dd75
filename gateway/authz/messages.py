"""Decodes a verified request message to derive the trusted headers that
services rely on (transaction id, envelope digest)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message

from iclaim.errors import InvalidArgument
from iclaim.public_api import public_services
from iclaim_hub.common.access_log import HUB_TRANSACTION_RE

SUBMIT_CLAIM = "/iclaim.v1.ClaimService/SubmitClaim"


def _request_classes() -> dict[str, type[Message]]:
    out: dict[str, type[Message]] = {}
    for service in public_services():
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            out[path] = message_factory.GetMessageClass(method.input_type)
    return out


REQUEST_CLASSES = _request_classes()


@dataclass(frozen=True)
class Derived:
    transaction_id: str | None = None
    envelope_sha256: str | None = None


def derive(method: str, body: bytes) -> Derived:
    """Parses `body` as the method's request; raises InvalidArgument if it is not one."""
    cls = REQUEST_CLASSES.get(method)
    if cls is None:
        raise InvalidArgument("no request type for method", reason="MALFORMED_REQUEST")
    msg = cls()
    try:
        msg.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise InvalidArgument("request message does not decode", reason="MALFORMED_REQUEST") from exc
    fields = msg.DESCRIPTOR.fields_by_name
    txn: str | None = None
    tf = fields.get("transaction_id")
    if tf is not None and tf.type == tf.TYPE_STRING and not _repeated(tf):
        value: str = _field(msg, "transaction_id")
        # x-iclaim-transaction-id reaches the access log, hence the audit log:
        # only an id of the form the hub issues, never free text a caller sent
        # (nor CR/LF or a huge value, which would make Envoy fail the call
        # instead of letting the service refuse it with INVALID_ARGUMENT).
        txn = value if HUB_TRANSACTION_RE.fullmatch(value) else None
    env: str | None = None
    if method == SUBMIT_CLAIM:
        envelope: str = _field(msg, "envelope")
        env = hashlib.sha256(envelope.encode("utf-8")).hexdigest()
    return Derived(transaction_id=txn, envelope_sha256=env)


def _field(msg: Message, name: str) -> Any:
    # The request classes are built from descriptors at run time (message_factory),
    # so their fields are read by name rather than through generated attributes.
    return getattr(msg, name)


def _repeated(field: object) -> bool:
    # protobuf 5+ exposes is_repeated; older versions only label.
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return getattr(field, "label", 0) == 3
