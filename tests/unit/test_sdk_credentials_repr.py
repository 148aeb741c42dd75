"""Credentials never print their signing secret or private key: a repr ends up
in logs and tracebacks."""

from __future__ import annotations

from pathlib import Path

from iclaim.audit.note import NoteSigner
from iclaim.client.credentials import Credentials
from iclaim.crypto.envelope import generate_encryption_key
from iclaim.crypto.signing import b64url
from iclaim.insurer.credentials import InsurerCredentials

SECRET = bytes(range(1, 33))
PRIVATE, _ = generate_encryption_key("10670-k1")


def _leaks(text: str) -> list[str]:
    marks = {"secret bytes": repr(SECRET), "secret b64url": b64url(SECRET), "private d": PRIVATE["d"]}
    return [name for name, mark in marks.items() if mark in text]


def test_hospital_credentials_repr_and_str_hold_neither_secret_nor_private_key() -> None:
    creds = Credentials("127.0.0.1:8443", Path("ca.pem"), "10670", "k1", SECRET, PRIVATE)
    for text in (repr(creds), str(creds), f"{creds!r}", repr([creds])):
        assert _leaks(text) == []
    assert "10670" in repr(creds) and "k1" in repr(creds)  # still says whose they are


def test_insurer_credentials_repr_holds_neither() -> None:
    creds = InsurerCredentials("127.0.0.1:8443", None, "AIA", "k1", SECRET, PRIVATE, endpoint_secret=SECRET)
    assert _leaks(repr(creds)) == [] and _leaks(str(creds)) == []


def test_a_note_signer_repr_holds_no_private_key() -> None:
    assert "private_key" not in repr(NoteSigner.generate("iclaim.example/log"))
