"""A hospital (or insurer) that rotated its encryption key still opens what was
sealed to its previous key while that key was published (§5): the SDK's
Credentials carry the previous private keys and opening picks the one the
envelope names by kid. Without them, such a decision cannot be read."""

from __future__ import annotations

import json

import pytest

from iclaim.client.credentials import Credentials, load_dev_credentials
from iclaim.client.hospital import HospitalClient
from iclaim.client.insurer import InsurerClient
from iclaim.crypto.envelope import EnvelopeError, generate_encryption_key, seal
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2 as ipb

OLD_PRIVATE, OLD_PUBLIC = generate_encryption_key("10670-k1")
NEW_PRIVATE, NEW_PUBLIC = generate_encryption_key("10670-k2")


def _creds(*previous: dict[str, object]) -> Credentials:
    return Credentials("127.0.0.1:9", None, "10670", "k1", b"\x01" * 32, NEW_PRIVATE, tuple(previous))


def _decided(public: dict[str, object]) -> pb.Claim:
    envelope = seal(
        json.dumps({"resourceType": "ClaimResponse"}).encode(), public,
        sender="AIA", recipient="10670", claim_ref="REF-1", amount_satang=500,
    )  # fmt: skip
    return pb.Claim(
        insurer_code="AIA", claim_ref="REF-1", approved_amount_satang=500, decision_envelope=envelope
    )


async def test_a_decision_sealed_to_the_previous_key_opens() -> None:
    async with HospitalClient(_creds(OLD_PRIVATE)) as client:
        assert client.open_decision(_decided(OLD_PUBLIC)).claim_response == {"resourceType": "ClaimResponse"}
        assert client.open_decision(_decided(NEW_PUBLIC)).header.kid == "10670-k2"


async def test_without_the_previous_key_it_does_not() -> None:
    async with HospitalClient(_creds()) as client:
        with pytest.raises(EnvelopeError):
            client.open_decision(_decided(OLD_PUBLIC))


async def test_an_insurer_client_opens_a_claim_sealed_to_its_previous_key() -> None:
    envelope = seal(b"{}", OLD_PUBLIC, sender="10670", recipient="10670", claim_ref="REF-1", amount_satang=1)
    async with InsurerClient(_creds(OLD_PRIVATE)) as client:
        header, plaintext = client.open_claim(ipb.ClaimDelivery(envelope=envelope))
        assert (header.kid, plaintext) == ("10670-k1", b"{}")


def test_previous_keys_load_from_the_credentials_file_and_never_print(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "credentials.json"
    entry = {
        "code": "10670", "key_id": "k1", "secret": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE",
        "encryption_private_jwk": NEW_PRIVATE, "previous_encryption_private_jwks": [OLD_PRIVATE],
    }  # fmt: skip
    path.write_text(json.dumps({"gateway": "127.0.0.1:9", "hospitals": [entry]}))
    creds = load_dev_credentials("10670", path)
    assert creds.previous_encryption_private_jwks == (OLD_PRIVATE,)
    assert str(OLD_PRIVATE["d"]) not in repr(creds)
