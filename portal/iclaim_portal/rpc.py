"""What the clearinghouse said when it refused a call: the ErrorInfo reason
(UPPER_SNAKE, docs/protocol.md's error model) or else the gRPC code name.
Never the message text, which may echo caller input."""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
from google.rpc import error_details_pb2, status_pb2

_REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
# A lookup by an id taken from the URL: missing, or not even of an id's form;
# either way a 404 page, not an error.
ABSENT = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT})


def _error_infos(err: grpc.aio.AioRpcError) -> Iterator[error_details_pb2.ErrorInfo]:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    yield info


def refusal_reason(err: grpc.aio.AioRpcError) -> str:
    for info in _error_infos(err):
        if _REASON.match(info.reason):
            return str(info.reason)
    return err.code().name


def refusal_metadata(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """The ErrorInfo metadata of a refusal ({} when there is none)."""
    return next((dict(info.metadata) for info in _error_infos(err)), {})


def is_reason(text: str) -> bool:
    """Only a reason code is shown when it comes back through a URL."""
    return bool(_REASON.match(text))
