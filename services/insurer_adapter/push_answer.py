"""§10.6: a decision in the insurer's answer to a push, read from the gRPC
ReceiveClaimResponse or the webhook's JSON answer. Only the answer's shape is
checked here (a PostDecisionRequest for the pushed claim); PostDecision's
rules are the router's, when the dispatcher relays it."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from iclaim.v1 import claim_service_pb2, insurer_endpoint_pb2, insurer_service_pb2
from services.insurer_adapter.domain import PushError
from services.insurer_adapter.model import PushAnswer, PushResult

TAKEN = PushResult(True)
_STATES = claim_service_pb2.ClaimState.DESCRIPTOR
_MALFORMED = PushResult(False, PushError.ANSWER_DECISION_MALFORMED.value)


def _answer(decision: insurer_service_pb2.PostDecisionRequest, transaction_id: str) -> PushResult:
    if decision.transaction_id != transaction_id:
        return _MALFORMED  # an answer about another claim is no answer about this one
    return PushResult(
        True,
        answer=PushAnswer(
            transaction_id=decision.transaction_id,
            state=int(decision.state),
            approved_amount_satang=decision.approved_amount_satang,
            decision_envelope=decision.decision_envelope,
            reason_code=decision.reason_code,
        ),
    )


def from_grpc(body: bytes, transaction_id: str) -> PushResult:
    """An OK ReceiveClaim's outcome from its serialized response."""
    if not body:
        return TAKEN
    try:
        response = insurer_endpoint_pb2.ReceiveClaimResponse.FromString(body)
    except DecodeError:
        return _MALFORMED
    if not response.HasField("decision"):
        return TAKEN
    return _answer(response.decision, transaction_id)


def from_json(body: bytes, transaction_id: str) -> PushResult:
    """A 2xx webhook answer's outcome. A body without a `decision` object
    (empty, plain text, other JSON, `"decision": null` or a string some
    receiver answered before §10.6) is taken, as before §10.6."""
    try:
        document: Any = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        return TAKEN
    member = document.get("decision") if isinstance(document, dict) else None
    if not isinstance(member, dict):
        return TAKEN
    if not _known_state(member.get("state", 0)):
        return _MALFORMED  # the parser below would quietly take an unknown name as 0
    decision = insurer_service_pb2.PostDecisionRequest()
    try:
        json_format.ParseDict(member, decision, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError, RecursionError):
        return _MALFORMED
    return _answer(decision, transaction_id)


def _known_state(value: object) -> bool:
    """A ClaimState as proto3 JSON writes it: its name, or its number."""
    if isinstance(value, str):
        return value in _STATES.values_by_name
    return isinstance(value, int) and not isinstance(value, bool) and value in _STATES.values_by_number
