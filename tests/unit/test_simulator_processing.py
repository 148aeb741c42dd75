"""Opening, checking and reading a delivered claim, then sealing the decision
(the pure core of the insurer adapter, with real keys and envelopes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from iclaim.crypto.envelope import generate_encryption_key, open_envelope, seal
from iclaim.crypto.signing import b64url, b64url_decode
from iclaim.fhir import PatientInfo, build_claim, parse_claim_response
from services.insurer_adapter.model import Delivery
from services.insurer_adapter.processing import assess, seal_decisions
from services.insurer_adapter.simulator import Timing

INSURER_PRIV, INSURER_PUB = generate_encryption_key("AIA-20261125-aa")
HOSPITAL_PRIV, HOSPITAL_PUB = generate_encryption_key("10670-k1")
T = Timing(review_s=2.0, slow_s=10.0)


def _claim_doc(policy: str = "POL-1", amount: int = 250_000, claim_ref: str = "C-1") -> bytes:
    return build_claim(
        claim_ref=claim_ref,
        hospital_code="10670",
        insurer_code="AIA",
        policy_number=policy,
        amount_satang=amount,
        patient=PatientInfo("Test Patient", "1101700203450"),
        diagnoses=["A09"],
    )


def _delivery(envelope: str, amount: int = 250_000, claim_ref: str = "C-1") -> Delivery:
    return Delivery("tx-1", "AIA", "10670", claim_ref, amount, envelope, datetime.now(UTC), 1)


def _seal(doc: bytes, **overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "sender": "10670",
        "recipient": "AIA",
        "claim_ref": "C-1",
        "amount_satang": 250_000,
    }
    kwargs.update(overrides)
    return seal(doc, INSURER_PUB, **kwargs)


def test_a_good_claim_is_decided_by_its_policy_number() -> None:
    result = assess(_delivery(_seal(_claim_doc("LIMIT-100000-x"))), INSURER_PRIV, T)
    assert result.problem == ""
    assert [(s.state, s.approved_satang) for s in result.steps] == [("PARTIALLY_APPROVED", 100_000)]


def _flip_ciphertext_bit(envelope: str) -> str:
    parts = envelope.split(".")
    ct = bytearray(b64url_decode(parts[3]))
    ct[0] ^= 0x01
    parts[3] = b64url(bytes(ct))
    return ".".join(parts)


@pytest.mark.parametrize(
    ("envelope", "private", "problem"),
    [
        ("garbage", INSURER_PRIV, "ENVELOPE_MALFORMED"),
        (_flip_ciphertext_bit(_seal(_claim_doc())), INSURER_PRIV, "ENVELOPE_DECRYPT_FAILED"),
        (_seal(_claim_doc()), None, "ENVELOPE_KID_UNKNOWN"),
        (_seal(_claim_doc()), generate_encryption_key("AIA-20261125-aa")[0], "ENVELOPE_DECRYPT_FAILED"),
        (_seal(_claim_doc(), sender="10671"), INSURER_PRIV, "ENVELOPE_PARTY_MISMATCH"),
        (_seal(_claim_doc(), recipient="MTL"), INSURER_PRIV, "ENVELOPE_PARTY_MISMATCH"),
        (_seal(_claim_doc(), claim_ref="C-2"), INSURER_PRIV, "ENVELOPE_CLAIM_REF_MISMATCH"),
        (_seal(_claim_doc(), amount_satang=1), INSURER_PRIV, "ENVELOPE_AMOUNT_MISMATCH"),
        (_seal(b"hello"), INSURER_PRIV, "FHIR_NOT_JSON"),
        (_seal(b'{"resourceType":"Patient"}'), INSURER_PRIV, "FHIR_NOT_A_CLAIM"),
        (_seal(_claim_doc(amount=250_001)), INSURER_PRIV, "CLAIM_TOTAL_MISMATCH"),
        (_seal(_claim_doc(claim_ref="OTHER")), INSURER_PRIV, "CLAIM_REF_MISMATCH"),
    ],
)
def test_unusable_envelopes_are_denied_invalid_claim_document(
    envelope: str, private: dict[str, Any] | None, problem: str
) -> None:
    result = assess(_delivery(envelope), private, T)
    assert result.problem == problem
    assert [(s.state, s.reason_code) for s in result.steps] == [("DENIED", "INVALID_CLAIM_DOCUMENT")]


def test_sealed_decisions_open_for_the_hospital_with_matching_headers() -> None:
    delivery = _delivery(_seal(_claim_doc("REVIEW-1")))
    steps = assess(delivery, INSURER_PRIV, T).steps
    sealed = seal_decisions(delivery, steps, HOSPITAL_PUB)
    assert [(d.seq, d.state, d.final, d.delay_s) for d in sealed] == [
        (1, "PENDING_REVIEW", False, 0.0),
        (2, "APPROVED", True, 2.0),
    ]
    for decision in sealed:
        header, plaintext = open_envelope(decision.envelope, HOSPITAL_PRIV)
        assert (header.sender, header.recipient, header.claim_ref) == ("AIA", "10670", "C-1")
        assert header.amount_satang == decision.approved_satang
        response = parse_claim_response(plaintext)
        assert response.state == decision.state
        assert response.approved_satang == decision.approved_satang
        assert response.billed_satang == 250_000
