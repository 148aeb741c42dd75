"""The WebAuthn ceremonies (server side, the `webauthn` library unmocked)
against a software P-256 authenticator, on the portal's real schema."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest

from iclaim_portal import db
from iclaim_portal.passkeys import PasskeyRefused, Passkeys, RelyingParty
from iclaim_portal.staff import Staff, StaffStore
from tests.portal.authenticator import SoftAuthenticator, b64u, unb64u
from tests.portal.conftest import csrf_of, sign_in
from tests.portal.support import RunningPortal

ORIGIN = "https://portal.hospital.example"
RP = RelyingParty("portal.hospital.example", "iClaim portal", ORIGIN)


@pytest.fixture
async def pool(make_database: Callable[[], Awaitable[str]]) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.connect(await make_database())
    yield pool
    await pool.close()


@pytest.fixture
async def nurse(pool: asyncpg.Pool) -> Staff:
    return await StaffStore(pool).create("nurse", "Nurse Somsri", "clerk", None)


async def registered(passkeys: Passkeys, staff: Staff) -> SoftAuthenticator:
    authenticator = SoftAuthenticator()
    options, challenge = await passkeys.registration_options(staff)
    await passkeys.register(staff, authenticator.create(options, ORIGIN), challenge)
    return authenticator


async def test_registration_then_sign_in_finds_the_staff_member(pool: asyncpg.Pool, nurse: Staff) -> None:
    passkeys = Passkeys(pool, RP)
    authenticator = await registered(passkeys, nurse)
    assert await passkeys.count(nurse) == 1
    options, challenge = passkeys.authentication_options()
    assert json.loads(options)["rpId"] == RP.rp_id
    assert await passkeys.authenticate(authenticator.get(options, ORIGIN), challenge) == nurse.id
    stored = await pool.fetchval("SELECT sign_count FROM passkeys")
    assert stored == 1


async def test_registration_options_exclude_existing_passkeys(pool: asyncpg.Pool, nurse: Staff) -> None:
    passkeys = Passkeys(pool, RP)
    authenticator = await registered(passkeys, nurse)
    options, _ = await passkeys.registration_options(nurse)
    excluded = [unb64u(c["id"]) for c in json.loads(options)["excludeCredentials"]]
    assert excluded == [authenticator.credential_id]


async def test_registration_with_another_challenge_or_origin_is_refused(
    pool: asyncpg.Pool, nurse: Staff
) -> None:
    passkeys = Passkeys(pool, RP)
    options, challenge = await passkeys.registration_options(nurse)
    with pytest.raises(PasskeyRefused):
        await passkeys.register(nurse, SoftAuthenticator().create(options, "https://evil.example"), challenge)
    with pytest.raises(PasskeyRefused):
        await passkeys.register(nurse, SoftAuthenticator().create(options, ORIGIN), b"another challenge")
    with pytest.raises(PasskeyRefused):
        await passkeys.register(nurse, SoftAuthenticator().create(options, ORIGIN), None)
    assert await passkeys.count(nurse) == 0


async def test_assertions_that_do_not_verify_are_refused(pool: asyncpg.Pool, nurse: Staff) -> None:
    passkeys = Passkeys(pool, RP)
    authenticator = await registered(passkeys, nurse)
    options, challenge = passkeys.authentication_options()

    wrong_origin = authenticator.get(options, "https://evil.example")
    wrong_rp = authenticator.get(options, ORIGIN, rp_id="evil.example")
    tampered = authenticator.get(options, ORIGIN)
    signature = bytearray(unb64u(tampered["response"]["signature"]))
    signature[-1] ^= 1
    tampered["response"]["signature"] = b64u(bytes(signature))
    stranger = SoftAuthenticator().get(options, ORIGIN)
    for assertion in (wrong_origin, wrong_rp, tampered, stranger):
        with pytest.raises(PasskeyRefused):
            await passkeys.authenticate(assertion, challenge)
    with pytest.raises(PasskeyRefused):
        await passkeys.authenticate(authenticator.get(options, ORIGIN), b"not the challenge")


async def test_a_cloned_authenticator_replaying_an_old_counter_is_refused(
    pool: asyncpg.Pool, nurse: Staff
) -> None:
    passkeys = Passkeys(pool, RP)
    authenticator = await registered(passkeys, nurse)
    options, challenge = passkeys.authentication_options()
    await passkeys.authenticate(authenticator.get(options, ORIGIN), challenge)
    await passkeys.authenticate(authenticator.get(options, ORIGIN), challenge)
    authenticator.sign_count = 0  # the clone's counter is behind
    with pytest.raises(PasskeyRefused):
        await passkeys.authenticate(authenticator.get(options, ORIGIN), challenge)


async def test_passkey_sign_in_over_http_uses_the_challenge_once(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    """Registration and sign-in through the portal's endpoints, as portal.js does them."""
    await sign_in(browser_like, portal.password)
    token = await csrf_of(browser_like, "/passkeys")
    headers = {"X-CSRF-Token": token, "Content-Type": "application/json"}
    authenticator = SoftAuthenticator()
    options = (await browser_like.post("/passkeys/options", headers=headers)).text
    created = await browser_like.post(
        "/passkeys", headers=headers, content=json.dumps(authenticator.create(options, portal.url))
    )
    assert created.status_code == 200, created.text
    await browser_like.post("/signout", headers=headers)

    browser_like.cookies.clear()
    token = await csrf_of(browser_like)
    headers["X-CSRF-Token"] = token
    options = (await browser_like.post("/signin/passkey/options", headers=headers)).text
    assertion = json.dumps(authenticator.get(options, portal.url))
    ok = await browser_like.post("/signin/passkey", headers=headers, content=assertion)
    assert ok.status_code == 200, ok.text
    assert (await browser_like.get("/actions")).status_code == 200

    # the same assertion again: its challenge was used up (and the session rotated)
    browser_like.cookies.clear()
    headers["X-CSRF-Token"] = await csrf_of(browser_like)
    again = await browser_like.post("/signin/passkey", headers=headers, content=assertion)
    assert again.status_code == 401
