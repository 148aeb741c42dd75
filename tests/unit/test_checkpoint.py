"""C2SP signed notes and tlog checkpoints with Ed25519."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iclaim.audit.merkle import EMPTY_ROOT, leaf_hash
from iclaim.audit.note import (
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    key_id,
    open_checkpoint,
    parse_checkpoint_body,
    parse_verifier_key,
    sign_checkpoint,
)

ORIGIN = "iclaim.dev/audit"
WHEN = datetime(2026, 11, 25, 10, 0, 0, 123000, tzinfo=UTC)


def _signer() -> NoteSigner:
    return NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


def test_checkpoint_note_layout() -> None:
    root = leaf_hash(b"x")
    note = sign_checkpoint(_signer(), Checkpoint(ORIGIN, 42, root, WHEN))
    text, _, sig = note.partition("\n\n")
    assert text.split("\n") == [
        ORIGIN,
        "42",
        base64.b64encode(root).decode(),
        "time 2026-11-25T10:00:00.123Z",
    ]
    assert sig.startswith(f"\u2014 {ORIGIN} ") and sig.endswith("\n")
    blob = base64.b64decode(sig.split(" ")[-1])
    assert blob[:4] == key_id(ORIGIN, _signer().public_key) and len(blob) == 68


def test_key_id_follows_signed_note_spec() -> None:
    # key hash = SHA-256(name || "\n" || 0x01 || public key)[:4]
    import hashlib

    pub = _signer().public_key
    assert key_id(ORIGIN, pub) == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + pub).digest()[:4]
    vkey = _signer().verifier_key()
    name, kid, b64 = vkey.split("+", 2)
    assert (name, kid) == (ORIGIN, key_id(ORIGIN, pub).hex())
    assert base64.b64decode(b64) == b"\x01" + pub
    assert parse_verifier_key(vkey) == NoteVerifier(ORIGIN, pub)


def test_round_trip() -> None:
    cp = Checkpoint(ORIGIN, 7, EMPTY_ROOT, WHEN)
    note = sign_checkpoint(_signer(), cp)
    assert open_checkpoint(note, parse_verifier_key(_signer().verifier_key()), ORIGIN) == cp


@pytest.mark.parametrize(
    "mutate",
    [
        lambda n: n.replace("\n7\n", "\n8\n"),  # tree size
        lambda n: n.replace("47DEQ", "47DER"),  # root hash
        lambda n: n.replace(".123Z", ".124Z"),  # time
        lambda n: n.replace(ORIGIN + "\n", "other.log/audit\n", 1),  # origin (and text)
        lambda n: n[:-6] + "AAAAA\n",  # signature bytes
        lambda n: n.split("\n\n")[0] + "\n",  # no signature
        lambda n: n.replace("\u2014", "-"),  # not an em dash
        lambda n: n.replace("\n\n", "\nextra\n\n"),  # appended body line
    ],
)
def test_any_change_breaks_the_checkpoint(mutate: object) -> None:
    note = sign_checkpoint(_signer(), Checkpoint(ORIGIN, 7, EMPTY_ROOT, WHEN))
    bad = mutate(note)  # type: ignore[operator]
    assert bad != note
    with pytest.raises(NoteError):
        open_checkpoint(bad, parse_verifier_key(_signer().verifier_key()), ORIGIN)


def test_other_key_and_wrong_origin_are_rejected() -> None:
    note = sign_checkpoint(_signer(), Checkpoint(ORIGIN, 7, EMPTY_ROOT, WHEN))
    other = NoteSigner.generate(ORIGIN)
    with pytest.raises(NoteError):
        open_checkpoint(note, parse_verifier_key(other.verifier_key()), ORIGIN)
    with pytest.raises(NoteError):
        open_checkpoint(note, parse_verifier_key(_signer().verifier_key()), "someone.else/log")


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "name",
        "name+00000000",
        "na me+00000000+AQ==",
        "x+00000000+" + "A" * 44,
        ORIGIN + "+deadbeef+" + base64.b64encode(b"\x01" + bytes(32)).decode(),
    ],
)
def test_malformed_verifier_keys(vkey: str) -> None:
    with pytest.raises(NoteError):
        parse_verifier_key(vkey)


@pytest.mark.parametrize(
    "body",
    [
        "",
        f"{ORIGIN}\n",
        f"{ORIGIN}\n07\n{base64.b64encode(EMPTY_ROOT).decode()}\ntime 2026-11-25T10:00:00.123Z\n",
        f"{ORIGIN}\n7\nAAAA\ntime 2026-11-25T10:00:00.123Z\n",
        f"{ORIGIN}\n7\n{base64.b64encode(EMPTY_ROOT).decode()}\n",
    ],
)
def test_malformed_bodies(body: str) -> None:
    with pytest.raises(NoteError):
        parse_checkpoint_body(body, ORIGIN)
