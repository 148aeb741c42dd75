"""Envelope tampering and key rotation through the real gateway (PROTOCOL.md §4).

Header tampering that the router can see (the header disagrees with the request,
the caller, or the recipient's keys) is INVALID_ARGUMENT with a reason and stores
nothing. Tampering the router cannot see (ciphertext, tag, IV, encrypted key, or
a rewritten header that still matches the request: it is AES-GCM AAD) is caught
by the insurer and comes back as DENIED / INVALID_CLAIM_DOCUMENT, never APPROVED.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from iclaim.client.hospital import HospitalClient
from iclaim.crypto.envelope import generate_encryption_key, open_envelope, seal
from iclaim_hub.crypto.secretbox import SecretBox
from iclaim.crypto.signing import b64url_decode
from iclaim.fhir.claim import PatientInfo, build_claim
from iclaim_hub.registry.model import Principal
from iclaim_hub.registry.store import RegistryStore
from iclaim.v1 import claim_service_pb2 as pb
from tests.support.stack import RunningStack
from tests.support.wire import reason_of

pytestmark = pytest.mark.integration
S = pb.ClaimState
INSURER, OTHER = "AIA", "MTL"
AMOUNT = 45_600


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def ref() -> str:
    return f"TAMP-{secrets.token_hex(5)}"


def fhir(hospital: str, insurer: str, claim_ref: str, amount: int) -> bytes:
    return build_claim(
        claim_ref=claim_ref,
        hospital_code=hospital,
        insurer_code=insurer,
        policy_number="POL-OK-1",
        amount_satang=amount,
        patient=PatientInfo(name="Test Patient", citizen_id="1101700203451"),
        diagnoses=["K35.8"],
    )


def flip(envelope: str, part: int, byte: int = 0) -> str:
    parts = envelope.split(".")
    raw = bytearray(_b64d(parts[part]))
    raw[byte % len(raw)] ^= 0x01
    parts[part] = _b64e(bytes(raw))
    return ".".join(parts)


def rewrite_header(envelope: str, **changes: Any) -> str:
    parts = envelope.split(".")
    header = json.loads(_b64d(parts[0]))
    header.update(changes)
    parts[0] = _b64e(json.dumps(header, separators=(",", ":")).encode())
    return ".".join(parts)


async def sealed(client: HospitalClient, insurer: str = INSURER, amount: int = AMOUNT) -> tuple[str, str]:
    r = ref()
    body = fhir(client.creds.code, insurer, r, amount)
    return r, await client.seal_claim(body, insurer_code=insurer, claim_ref=r, amount_satang=amount)


async def submit(
    client: HospitalClient,
    envelope: str,
    claim_ref: str,
    *,
    insurer: str = INSURER,
    amount: int = AMOUNT,
    wait_s: float = 0,
) -> pb.Claim:
    return await client.submit_claim(
        b"",
        insurer_code=insurer,
        claim_ref=claim_ref,
        amount_satang=amount,
        envelope=envelope,
        decision_timeout_s=wait_s,
    )


async def stored_rows(stack: RunningStack, claim_ref: str) -> int:
    conn = await stack.db()
    try:
        return int(await conn.fetchval("SELECT count(*) FROM router.claims WHERE claim_ref = $1", claim_ref))
    finally:
        await conn.close()


async def refused(
    client: HospitalClient, stack: RunningStack, envelope: str, claim_ref: str, **kw: Any
) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(client, envelope, claim_ref, **kw)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert await stored_rows(stack, claim_ref) == 0
    return reason_of(err.value)


# --- seen by the router: INVALID_ARGUMENT ---------------------------------------


async def test_readdressed_or_rewritten_headers_are_refused_at_the_router(
    running_stack: RunningStack,
) -> None:
    async with HospitalClient(running_stack.creds()) as client:
        r, env = await sealed(client)
        # MITM changes the recipient or the amount; the request still says the original.
        for changes in (
            {"x-iclaim-recipient": OTHER},
            {"x-iclaim-amount-satang": AMOUNT * 10},
            {"x-iclaim-sender": "10671"},
            {"x-iclaim-claim-ref": r + "-X"},
        ):
            reason = await refused(client, running_stack, rewrite_header(env, **changes), r)
            assert reason == "ENVELOPE_HEADER_MISMATCH", changes
        # The untouched envelope submitted to another insurer.
        assert await refused(client, running_stack, env, r, insurer=OTHER) == ("ENVELOPE_HEADER_MISMATCH")
        # Re-addressed consistently to the other insurer: the kid is not one of its keys.
        forged = rewrite_header(env, **{"x-iclaim-recipient": OTHER})
        assert await refused(client, running_stack, forged, r, insurer=OTHER) == ("ENVELOPE_KID_UNKNOWN")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: rewrite_header(e, alg="dir"), "ENVELOPE_ALG_FORBIDDEN"),
        (lambda e: rewrite_header(e, alg="RSA1_5"), "ENVELOPE_ALG_FORBIDDEN"),
        (lambda e: rewrite_header(e, alg=["ECDH-ES+A256KW"]), "ENVELOPE_ALG_FORBIDDEN"),
        (lambda e: rewrite_header(e, enc="A128CBC-HS256"), "ENVELOPE_ALG_FORBIDDEN"),
        (lambda e: rewrite_header(e, zip="DEF"), "ENVELOPE_ZIP_FORBIDDEN"),
        (lambda e: rewrite_header(e, kid="AIA-unknown"), "ENVELOPE_KID_UNKNOWN"),
        (lambda e: flip(e, 0, 0), "ENVELOPE_MALFORMED"),  # '{' -> 'z': not JSON
        (lambda e: ".".join(e.split(".")[:4]), "ENVELOPE_MALFORMED"),
        (lambda e: e + ".x", "ENVELOPE_MALFORMED"),
        (lambda e: e.replace(".", ".!", 1), "ENVELOPE_MALFORMED"),
    ],
    ids=[
        "alg-dir",
        "alg-rsa1_5",
        "alg-list",
        "enc-cbc",
        "zip",
        "kid",
        "header-bit",
        "four-parts",
        "six-parts",
        "not-base64url",
    ],
)
async def test_policy_violations_are_refused_at_the_router(
    running_stack: RunningStack, mutate: Any, reason: str
) -> None:
    async with HospitalClient(running_stack.creds()) as client:
        r, env = await sealed(client)
        assert await refused(client, running_stack, mutate(env), r) == reason


# --- not visible to the router: the insurer denies it ----------------------------


async def test_tampered_body_is_denied_by_the_insurer_never_approved(
    running_stack: RunningStack,
) -> None:
    async with HospitalClient(running_stack.creds()) as client:
        cases: list[tuple[str, str, str, int]] = []
        for part, name in ((1, "encrypted_key"), (2, "iv"), (3, "ciphertext"), (4, "tag")):
            for byte in (0, -1):
                r, env = await sealed(client)
                cases.append((f"{name}[{byte}]", r, flip(env, part, byte), AMOUNT))
        # Header rewritten consistently with the request: passes the router, fails the AAD.
        r, env = await sealed(client)
        cases.append(
            ("header-amount", r, rewrite_header(env, **{"x-iclaim-amount-satang": AMOUNT + 1}), AMOUNT + 1)
        )
        r, env = await sealed(client)
        cases.append(("header-iat", r, rewrite_header(env, **{"x-iclaim-iat": 1}), AMOUNT))
        # A control: the untouched envelope is approved.
        r, env = await sealed(client)
        cases.append(("control", r, env, AMOUNT))
        claims = await asyncio.gather(
            *(submit(client, env, r, amount=amount, wait_s=20) for _, r, env, amount in cases)
        )
        for (name, _, _, _), claim in zip(cases, claims, strict=True):
            if name == "control":
                assert claim.state == S.CLAIM_STATE_APPROVED, S.Name(claim.state)
                continue
            assert claim.state == S.CLAIM_STATE_DENIED, (name, S.Name(claim.state))
            assert claim.status_reason == "INVALID_CLAIM_DOCUMENT", name
            assert claim.approved_amount_satang == 0
            # The hospital can still open the decision and learns why.
            opened = client.open_decision(claim)
            assert opened.header.amount_satang == 0
        # Each was pushed and taken exactly once: the insurer, not the hub, decided.
        # (The adapter writes "taken" for acknowledged pushes in batches, within
        # about 100 ms, and stores a push taken at once only then: wait for every
        # row rather than read at once.)
        conn = await running_stack.db()
        try:
            for _ in range(100):
                rows = await conn.fetch(
                    "SELECT claim_ref, state FROM adapter.deliveries WHERE claim_ref = ANY($1::text[])",
                    [r for _, r, _, _ in cases],
                )
                if len(rows) == len(cases) and all(row["state"] == "taken" for row in rows):
                    break
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
        by_ref = {row["claim_ref"]: row for row in rows}
        assert len(rows) == len(by_ref) == len(cases)
        for name, r, _, _ in cases:
            assert by_ref[r]["state"] == "taken", name


# --- encryption key rotation with a grace period ----------------------------------

ROT = "ZZROTATE"  # sorts after every sample insurer; removed again afterwards


@pytest.fixture
async def rotating_insurer(running_stack: RunningStack) -> AsyncIterator[RegistryStore]:
    import asyncpg

    pool = await asyncpg.create_pool(running_stack.database_url, min_size=1, max_size=2)
    store = RegistryStore(pool, SecretBox(b64url_decode(running_stack.stack.master_key)))
    await store.upsert_principal(
        Principal(ROT, "insurer", "Rotation Test Insurer", line=2, delivery_mode="pull")
    )
    try:
        yield store
    finally:
        await pool.execute("DELETE FROM registry.encryption_keys WHERE principal_code = $1", ROT)
        await pool.execute("DELETE FROM registry.principals WHERE code = $1", ROT)
        await pool.close()


async def _listed_kids(client: HospitalClient) -> list[str]:
    for insurer in await client.list_insurers():
        if insurer.code == ROT:
            return [k.kid for k in insurer.keys]
    return []


async def _until(predicate: Any, timeout_s: float = 8.0) -> None:
    """The router's directory cache refreshes every 2 s."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "directory did not catch up"
        await asyncio.sleep(0.25)


async def test_rotated_key_is_accepted_during_grace_then_refused(
    running_stack: RunningStack, rotating_insurer: RegistryStore
) -> None:
    store = rotating_insurer
    old_private, old_public = generate_encryption_key(f"{ROT}-old")
    new_private, new_public = generate_encryption_key(f"{ROT}-new")
    await store.add_encryption_key(ROT, old_public["kid"], old_public)
    async with HospitalClient(running_stack.creds()) as client:

        async def listed(kids: list[str]) -> bool:
            return await _listed_kids(client) == kids

        await _until(lambda: listed([old_public["kid"]]))

        def to(public: dict[str, Any], claim_ref: str) -> str:
            return seal(
                fhir(client.creds.code, ROT, claim_ref, AMOUNT),
                public,
                sender=client.creds.code,
                recipient=ROT,
                claim_ref=claim_ref,
                amount_satang=AMOUNT,
            )

        r0 = ref()
        assert (await submit(client, to(old_public, r0), r0, insurer=ROT)).state == (S.CLAIM_STATE_RECEIVED)

        await store.add_encryption_key(ROT, new_public["kid"], new_public)  # old -> previous
        principal = await store.principal(ROT)
        assert principal is not None
        previous = [k for k in principal.keys if k.status == "previous"]
        assert [k.kid for k in previous] == [old_public["kid"]]
        stamped = previous[0].previous_since
        assert stamped is not None  # the registry trigger records when it stopped being current
        assert abs((datetime.now(UTC) - stamped).total_seconds()) < 60
        await _until(lambda: listed([old_public["kid"], new_public["kid"]]))
        # During the grace: both kids accepted, and the old one still opens.
        r1, r2 = ref(), ref()
        old_env = to(old_public, r1)
        assert (await submit(client, old_env, r1, insurer=ROT)).state == S.CLAIM_STATE_RECEIVED
        assert (await submit(client, to(new_public, r2), r2, insurer=ROT)).state == (S.CLAIM_STATE_RECEIVED)
        assert open_envelope(old_env, old_private)[0].kid == old_public["kid"]
        assert open_envelope(to(new_public, r2), new_private)[0].kid == new_public["kid"]

        # Time passes beyond the grace (default 7 days): the old key is refused and unlisted.
        conn = await running_stack.db()
        try:
            await conn.execute(
                "UPDATE registry.encryption_keys SET previous_since = now() - interval '8 days'"
                " WHERE principal_code = $1 AND kid = $2",
                ROT,
                old_public["kid"],
            )
        finally:
            await conn.close()
        # Replicas see the change within the registry cache's TTL (seconds).
        await _until(lambda: listed([new_public["kid"]]))
        r3 = ref()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await submit(client, to(old_public, r3), r3, insurer=ROT)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(err.value) == "ENVELOPE_KID_UNKNOWN"
        assert await stored_rows(running_stack, r3) == 0
        r4 = ref()
        assert (await submit(client, to(new_public, r4), r4, insurer=ROT)).state == (S.CLAIM_STATE_RECEIVED)
