"""Pure rules of the delivery layer (docs/protocol.md §10.4, §10.5): the request
check, the error vocabulary, backoff with full jitter and the circuit per
insurer. No I/O here."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from iclaim.crypto.envelope import CLAIM_REF_MAX, MAX_ENVELOPE_BYTES, sha256_hex
from iclaim.errors import InvalidArgument
from iclaim_hub.common.fields import copy_fields
from services.insurer_adapter.model import DeliveryRequest, NewDelivery

TXID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
INSURER_RE = re.compile(r"^[A-Z0-9_]{2,16}$")
# MOPH hcodes are 5 digits; the router has authenticated the hospital, so stay lenient.
_HOSPITAL = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

FAILURE_THRESHOLD = 5  # §10.5: consecutive failed pushes before DOWN
# §10.6: a webhook push says the hub takes a decision in the answer (gRPC: a request field).
ACCEPTS_DECISION_HEADER = "x-iclaim-accepts-decision"
MAX_ANSWER_BYTES = 64 * 1024  # §10 / issue: read at most this much of any answer
# The reserved client code of the clearinghouse's push signatures (§10.1).
PUSH_CLIENT = "ICLAIM"
GRPC_METHOD = "/iclaim.v1.InsurerEndpoint/ReceiveClaim"


def checked(r: DeliveryRequest) -> NewDelivery:
    if not TXID_RE.match(r.transaction_id):
        raise InvalidArgument("transaction_id is missing or malformed", reason="TRANSACTION_ID_INVALID")
    if not INSURER_RE.match(r.insurer_code):
        raise InvalidArgument("insurer_code is malformed", reason="INSURER_CODE_INVALID")
    if not _HOSPITAL.match(r.hospital_code):
        raise InvalidArgument("hospital_code is malformed", reason="HOSPITAL_CODE_INVALID")
    if not r.claim_ref or len(r.claim_ref) > CLAIM_REF_MAX:
        raise InvalidArgument("claim_ref is missing or too long", reason="CLAIM_REF_INVALID")
    if r.billed_amount_satang < 0:
        raise InvalidArgument("billed_amount_satang is negative", reason="AMOUNT_INVALID")
    if not r.envelope:
        raise InvalidArgument("envelope is empty", reason="ENVELOPE_MISSING")
    if len(r.envelope.encode("utf-8")) > MAX_ENVELOPE_BYTES:
        raise InvalidArgument("envelope exceeds 1 MiB", reason="ENVELOPE_TOO_LARGE")
    # Field by field: asdict would deep-copy the request, envelope and all.
    return copy_fields(NewDelivery, r, envelope_sha256=sha256_hex(r.envelope))


class PushError(StrEnum):
    """Why a push was not taken: a fixed vocabulary (stored as last_error, shown
    by `iclaim admin deliveries list`); never text the insurer sent."""

    # gRPC: the status code the endpoint (or the channel) ended the call with.
    GRPC_CANCELLED = "GRPC_CANCELLED"
    GRPC_UNKNOWN = "GRPC_UNKNOWN"
    GRPC_INVALID_ARGUMENT = "GRPC_INVALID_ARGUMENT"
    GRPC_DEADLINE_EXCEEDED = "GRPC_DEADLINE_EXCEEDED"
    GRPC_NOT_FOUND = "GRPC_NOT_FOUND"
    GRPC_PERMISSION_DENIED = "GRPC_PERMISSION_DENIED"
    GRPC_RESOURCE_EXHAUSTED = "GRPC_RESOURCE_EXHAUSTED"
    GRPC_FAILED_PRECONDITION = "GRPC_FAILED_PRECONDITION"
    GRPC_ABORTED = "GRPC_ABORTED"
    GRPC_OUT_OF_RANGE = "GRPC_OUT_OF_RANGE"
    GRPC_UNIMPLEMENTED = "GRPC_UNIMPLEMENTED"
    GRPC_INTERNAL = "GRPC_INTERNAL"
    GRPC_UNAVAILABLE = "GRPC_UNAVAILABLE"
    GRPC_DATA_LOSS = "GRPC_DATA_LOSS"
    GRPC_UNAUTHENTICATED = "GRPC_UNAUTHENTICATED"
    # Webhook: the answer's status class, or what went wrong before one came.
    HTTP_1XX = "HTTP_1XX"
    HTTP_3XX = "HTTP_3XX"  # redirects are not followed: a claim goes only where registered
    HTTP_4XX = "HTTP_4XX"
    HTTP_5XX = "HTTP_5XX"
    HTTP_OTHER = "HTTP_OTHER"
    ANSWER_TOO_LARGE = "ANSWER_TOO_LARGE"  # more than MAX_ANSWER_BYTES (or endless)
    ANSWER_CONTENT_TYPE = "ANSWER_CONTENT_TYPE"  # a body that is not an API answer
    ANSWER_MALFORMED = "ANSWER_MALFORMED"  # not HTTP
    TIMEOUT = "TIMEOUT"  # no complete answer within the attempt timeout
    CONNECT_FAILED = "CONNECT_FAILED"
    TLS_FAILED = "TLS_FAILED"
    # §10.6: the answer carried a decision the router did not record, so the
    # push is not counted as taken (the insurer then posts it with PostDecision).
    ANSWER_DECISION_MALFORMED = "ANSWER_DECISION_MALFORMED"  # not a PostDecisionRequest for this claim
    ANSWER_DECISION_REFUSED = "ANSWER_DECISION_REFUSED"  # PostDecision's rules refused it
    ANSWER_DECISION_UNRECORDED = "ANSWER_DECISION_UNRECORDED"  # the router could not be reached
    # Ours: the push could not be made as registered.
    ENDPOINT_INVALID = "ENDPOINT_INVALID"
    CLIENT_CERT_UNCONFIGURED = "CLIENT_CERT_UNCONFIGURED"  # mTLS asked, no hub client cert
    INTERNAL = "INTERNAL"


def grpc_error(status_name: str) -> PushError:
    """PushError for a gRPC status code name (e.g. "UNAVAILABLE")."""
    try:
        return PushError[f"GRPC_{status_name}"]
    except KeyError:
        return PushError.GRPC_UNKNOWN


def http_error(status: int) -> PushError:
    for low, error in ((100, PushError.HTTP_1XX), (300, PushError.HTTP_3XX), (400, PushError.HTTP_4XX)):
        if low <= status < low + 100:
            return error
    return PushError.HTTP_5XX if 500 <= status < 600 else PushError.HTTP_OTHER


def http_taken(status: int) -> bool:
    """§10.3: a 2xx or 409 answer means taken."""
    return 200 <= status < 300 or status == 409


# Bodies a success answer may carry. A 2xx of another type with a body (an HTML
# page from a catch-all route, a captive portal) is not an insurer's API
# answering, so the claim is not counted as taken.
def answer_type_ok(content_type: str, body_len: int) -> bool:
    return body_len == 0 or answer_is_json(content_type) or _mime(content_type) == "text/plain"


def answer_is_json(content_type: str) -> bool:
    mime = _mime(content_type)
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def _mime(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class Backoff:
    """§10.4: exponential from base to a cap, with full jitter."""

    base_s: float = 1.0
    max_s: float = 60.0

    def delay(self, attempts: int, rand: float | None = None) -> float:
        """Seconds before the next attempt after `attempts` failed ones (>= 1)."""
        exponent = max(0, min(attempts - 1, 30))
        ceiling = min(self.max_s, self.base_s * float(2**exponent))
        return ceiling * (random.random() if rand is None else rand)


class Health(IntEnum):
    """§10.5 InsurerHealth; the numbers are the proto's and the circuit gauge's."""

    UNKNOWN = 0
    HEALTHY = 1
    DEGRADED = 2
    DOWN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class Circuit:
    """One insurer's push circuit on this replica (§10.5): 1..4 consecutive
    failures DEGRADED, 5 DOWN; while DOWN only one probe at a time, one every
    `probe_s`, until a push is taken (HEALTHY)."""

    def __init__(self, probe_s: float, threshold: int = FAILURE_THRESHOLD) -> None:
        self.probe_s = probe_s
        self.threshold = threshold
        self.failures = 0
        self.seen = False
        self.probing = False
        self.next_probe_at = 0.0

    @property
    def health(self) -> Health:
        if not self.seen:
            return Health.UNKNOWN
        if self.failures == 0:
            return Health.HEALTHY
        return Health.DEGRADED if self.failures < self.threshold else Health.DOWN

    def slots(self, now: float, free: int) -> int:
        """How many pushes may start now, given `free` in-flight slots."""
        if self.health is not Health.DOWN:
            return max(0, free)
        if self.probing or now < self.next_probe_at or free <= 0:
            return 0
        return 1

    def started(self) -> bool:
        """A push is starting; True when it is the probe of a DOWN circuit."""
        if self.health is Health.DOWN:
            self.probing = True
            return True
        return False

    def record(self, taken: bool, now: float, probe: bool = False) -> bool:
        """One push's outcome; True when it closed a DOWN circuit."""
        was_down = self.health is Health.DOWN
        self.seen = True
        if probe:
            self.probing = False
        if taken:
            self.failures = 0
            return was_down
        self.failures += 1
        if self.health is Health.DOWN and (probe or not was_down):
            self.next_probe_at = now + self.probe_s
        return False

    def wait_s(self, now: float) -> float | None:
        """While DOWN: seconds until the next probe may start."""
        if self.health is not Health.DOWN or self.probing:
            return None
        return max(0.0, self.next_probe_at - now)


@dataclass(frozen=True)
class DeliverySettings:
    """§10.4's numbers (env ICLAIM_DELIVERY_*; tests shrink them)."""

    max_inflight: int = 16  # per insurer, per replica
    probe_s: float = 30.0
    backoff: Backoff = Backoff()
    expiry_s: float = 24 * 3600.0
    timeout_s: float = 10.0  # one attempt, connection to answer
    lease_s: float = 30.0  # > timeout_s + 1 + report_deadline_s: a live attempt never loses its row
    poll_s: float = 1.0  # how often due work is looked for besides wake-ups
    report_deadline_s: float = 5.0
