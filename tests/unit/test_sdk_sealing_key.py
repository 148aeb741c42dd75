"""Issue 10, item 6: the SDK seals to the key the directory marks `current`
(§5), not to a key chosen by its position in the list. Fake directory answers;
no server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from iclaim.client.credentials import Credentials
from iclaim.client.hospital import DIRECTORY_TTL_S, HospitalClient
from iclaim.client.insurer import InsurerClient
from iclaim.client.keys import sealing_jwk
from iclaim.crypto.envelope import generate_encryption_key, open_envelope, parse_protected_header
from iclaim.v1 import claim_service_pb2 as pb
from iclaim.v1 import insurer_service_pb2 as ipb

OLD_PRIVATE, OLD = generate_encryption_key("AIA-2025")
NEW_PRIVATE, NEW = generate_encryption_key("AIA-2026")


def key(public: dict[str, Any], current: bool | None) -> pb.EncryptionKey:
    k = pb.EncryptionKey(kid=public["kid"], jwk=json.dumps(public))
    if current is not None:
        k.current = current
    return k


def creds(code: str) -> Credentials:
    return Credentials("127.0.0.1:9", None, code, "k1", b"\x01" * 32, {})


class FakeClaimStub:
    """ListInsurers as a server answers it during a rotation."""

    def __init__(self, keys: list[pb.EncryptionKey]) -> None:
        self.keys = keys

    async def ListInsurers(self, request: Any, timeout: float) -> pb.ListInsurersResponse:
        return pb.ListInsurersResponse(insurers=[pb.Insurer(code="AIA", available=True, keys=self.keys)])


class FakeInsurerStub:
    def __init__(self, keys: list[pb.EncryptionKey]) -> None:
        self.keys = keys

    async def GetHospital(self, request: Any, timeout: float) -> ipb.Hospital:
        return ipb.Hospital(code=request.hospital_code, keys=self.keys)


ROTATIONS = [
    # The new key listed first (a server that lists newest first): the last listed is the old one.
    [key(NEW, True), key(OLD, False)],
    [key(OLD, False), key(NEW, True)],
]


@pytest.mark.parametrize("listed", ROTATIONS)
async def test_hospital_seals_to_the_current_key_after_a_rotation(listed: list[pb.EncryptionKey]) -> None:
    client = HospitalClient(creds("10670"))
    try:
        client.stub = FakeClaimStub(listed)  # type: ignore[assignment]
        envelope = await client.seal_claim(
            b'{"resourceType":"Claim"}', insurer_code="AIA", claim_ref="R-1", amount_satang=100
        )
    finally:
        await client.close()
    assert parse_protected_header(envelope).kid == "AIA-2026"
    assert open_envelope(envelope, NEW_PRIVATE)[1] == b'{"resourceType":"Claim"}'


@pytest.mark.parametrize("listed", ROTATIONS)
async def test_insurer_seals_decisions_to_the_hospitals_current_key(listed: list[pb.EncryptionKey]) -> None:
    client = InsurerClient(creds("TESTPULL"))
    try:
        client.stub = FakeInsurerStub(listed)  # type: ignore[assignment]
        assert (await client.hospital_key("10670"))["kid"] == "AIA-2026"
    finally:
        await client.channel.close()


def test_a_server_that_marks_no_key_gets_the_last_listed() -> None:
    # Servers before `current` listed a principal's keys oldest first.
    assert sealing_jwk([key(OLD, None), key(NEW, None)], "AIA")["kid"] == "AIA-2026"


def test_no_key_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        sealing_jwk([], "AIA")


async def test_a_long_lived_client_picks_up_a_rotation_within_minutes() -> None:
    now = [1_000.0]
    client = HospitalClient(creds("10670"), clock=lambda: now[0])
    try:
        directory = FakeClaimStub([key(OLD, True)])
        client.stub = directory  # type: ignore[assignment]
        assert (await client.insurer_key("AIA"))["kid"] == "AIA-2025"
        directory.keys = [key(OLD, False), key(NEW, True)]  # the insurer rotates
        now[0] += 60
        assert (await client.insurer_key("AIA"))["kid"] == "AIA-2025"  # the listing is still fresh
        now[0] += DIRECTORY_TTL_S
        assert (await client.insurer_key("AIA"))["kid"] == "AIA-2026"
    finally:
        await client.close()
