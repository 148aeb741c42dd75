"""One error tree for every service and pure module (docs/protocol.md §7, AIP-193).

Codes are named here (the canonical google.rpc.Code numbers), so pure modules
raise them without importing grpc; the hub's one server interceptor maps them
to gRPC statuses with google.rpc.Status{ErrorInfo{reason, domain="iclaim.v1"}}.
Handlers never call context.set_code themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import enum

from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "iclaim.v1"


class Code(enum.IntEnum):
    """Canonical status codes (google.rpc.Code), by the names gRPC uses."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class IclaimError(Exception):
    code: Code = Code.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def to_status(self) -> status_pb2.Status:
        return build_status(self.code, self.message, self.reason, self.metadata)


class InvalidArgument(IclaimError):
    code = Code.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(IclaimError):
    code = Code.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(IclaimError):
    code = Code.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(IclaimError):
    code = Code.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class PermissionDenied(IclaimError):
    code = Code.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(IclaimError):
    code = Code.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class Unavailable(IclaimError):
    code = Code.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class ResourceExhausted(IclaimError):
    code = Code.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(IclaimError):
    code = Code.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unimplemented(IclaimError):
    code = Code.UNIMPLEMENTED
    default_reason = "NOT_IMPLEMENTED"


class Internal(IclaimError):
    code = Code.INTERNAL
    default_reason = "INTERNAL"


def build_status(
    code: Code,
    message: str,
    reason: str,
    metadata: Mapping[str, str] | None = None,
) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata or {}))
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=int(code), message=message, details=[detail])


def error_info_of(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def reason_in_trailers(trailing: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The ErrorInfo reason of a call's grpc-status-details-bin trailer; "" when
    there is none or it is garbled (a peer's bad trailer is just no reason)."""
    for key, value in trailing or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                info = error_info_of(status_pb2.Status.FromString(value))
            except Exception:  # noqa: BLE001
                return ""
            return str(info.reason) if info is not None else ""
    return ""


__all__ = [
    "DOMAIN",
    "AlreadyExists",
    "Code",
    "DeadlineExceeded",
    "FailedPrecondition",
    "IclaimError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unimplemented",
    "Unavailable",
    "build_status",
    "error_info_of",
    "reason_in_trailers",
]
