"""Passkeys (WebAuthn): the registration and authentication ceremonies, server
side, with the `webauthn` library; the challenge travels in the session row,
never in the page, and is used once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import parse_authentication_credential_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from iclaim_portal.staff import Staff


class PasskeyRefused(ValueError):
    """A ceremony that did not verify: wrong challenge, origin, signature, unknown key."""


@contextmanager
def _refused_as(message: str) -> Iterator[None]:
    """What the webauthn library rejects becomes a PasskeyRefused saying `message`."""
    try:
        yield
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise PasskeyRefused(message) from exc


@dataclass(frozen=True)
class RelyingParty:
    rp_id: str  # the portal's host name
    name: str
    origin: str  # scheme://host[:port], exactly as the browser reports it


class Passkeys:
    def __init__(self, pool: asyncpg.Pool, rp: RelyingParty) -> None:
        self.pool = pool
        self.rp = rp

    async def registration_options(self, staff: Staff) -> tuple[str, bytes]:
        """(options JSON for navigator.credentials.create, the challenge to keep)."""
        existing = await self.pool.fetch("SELECT credential_id FROM passkeys WHERE staff_id = $1", staff.id)
        options = generate_registration_options(
            rp_id=self.rp.rp_id,
            rp_name=self.rp.name,
            user_name=staff.username,
            user_id=staff.webauthn_user_id,
            user_display_name=staff.display_name,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
            exclude_credentials=[PublicKeyCredentialDescriptor(id=bytes(r[0])) for r in existing],
        )
        return options_to_json(options), options.challenge

    async def register(
        self, staff: Staff, credential: str | dict[str, Any], challenge: bytes | None
    ) -> bytes:
        if challenge is None:
            raise PasskeyRefused("no registration in progress")
        with _refused_as("registration did not verify"):
            verified = verify_registration_response(
                credential=credential,
                expected_challenge=challenge,
                expected_rp_id=self.rp.rp_id,
                expected_origin=self.rp.origin,
            )
        await self.pool.execute(
            "INSERT INTO passkeys (credential_id, staff_id, public_key, sign_count) VALUES ($1, $2, $3, $4)",
            verified.credential_id,
            staff.id,
            verified.credential_public_key,
            verified.sign_count,
        )
        return verified.credential_id

    def authentication_options(self) -> tuple[str, bytes]:
        """Discoverable credentials: the browser offers the staff member's passkeys
        for this site without a username typed first."""
        options = generate_authentication_options(
            rp_id=self.rp.rp_id, user_verification=UserVerificationRequirement.PREFERRED
        )
        return options_to_json(options), options.challenge

    async def authenticate(self, credential: str | dict[str, Any], challenge: bytes | None) -> int:
        """The staff id the passkey belongs to."""
        if challenge is None:
            raise PasskeyRefused("no sign-in in progress")
        with _refused_as("not a WebAuthn assertion"):
            parsed = parse_authentication_credential_json(
                json.dumps(credential) if isinstance(credential, dict) else credential
            )
        row = await self.pool.fetchrow(
            "SELECT p.staff_id, p.public_key, p.sign_count FROM passkeys p JOIN staff s ON s.id = p.staff_id"
            " WHERE p.credential_id = $1 AND s.disabled_at IS NULL",
            parsed.raw_id,
        )
        if row is None:
            raise PasskeyRefused("unknown passkey")
        with _refused_as("sign-in did not verify"):
            verified = verify_authentication_response(
                credential=parsed,
                expected_challenge=challenge,
                expected_rp_id=self.rp.rp_id,
                expected_origin=self.rp.origin,
                credential_public_key=bytes(row["public_key"]),
                credential_current_sign_count=row["sign_count"],
            )
        await self.pool.execute(
            "UPDATE passkeys SET sign_count = $2, last_used_at = now() WHERE credential_id = $1",
            parsed.raw_id,
            verified.new_sign_count,
        )
        return int(row["staff_id"])

    async def count(self, staff: Staff) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM passkeys WHERE staff_id = $1", staff.id))
