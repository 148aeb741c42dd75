"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519, and
tlog checkpoints (https://c2sp.org/tlog-checkpoint) carried in them.

Checkpoint body: origin, tree size, base64 root hash, then one extension line
`time <RFC 3339 UTC, milliseconds>` with the signing time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from iclaim.audit.merkle import HASH_SIZE

ALG_ED25519 = 0x01
_SIG_PREFIX = "\u2014 "  # em dash + space
_NAME_RE = re.compile(r"^[^\s+]+$")
_TIME_RE = re.compile(r"^time (\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z)$")


class NoteError(ValueError):
    """A note or checkpoint that is malformed or not signed by the expected key."""


def _b64d(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise NoteError("bad base64") from exc


def _check_name(name: str) -> None:
    if not name or not _NAME_RE.match(name):
        raise NoteError("key name must be non-empty without spaces or '+'")


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


@dataclass(frozen=True)
class NoteSigner:
    name: str
    private_key: Ed25519PrivateKey = field(repr=False)  # never in a repr or a log

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        _check_name(name)
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def verifier_key(self) -> str:
        return encode_verifier_key(self.name, self.public_key)

    def sign(self, text: str) -> str:
        """Returns the signed note: text, blank line, one signature line."""
        _check_text(text)
        sig = self.private_key.sign(text.encode())
        blob = base64.b64encode(key_id(self.name, self.public_key) + sig).decode()
        return f"{text}\n{_SIG_PREFIX}{self.name} {blob}\n"


@dataclass(frozen=True)
class NoteVerifier:
    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    def verify(self, note: str) -> str:
        """Returns the note text if a signature by this key verifies."""
        text, sigs = _split_note(note)
        pub = Ed25519PublicKey.from_public_bytes(self.public_key)
        for name, blob in sigs:
            if name != self.name or blob[:4] != self.key_id:
                continue
            try:
                pub.verify(blob[4:], text.encode())
            except InvalidSignature as exc:
                raise NoteError("note signature does not verify") from exc
            return text
        raise NoteError("note has no signature by the expected key")


def encode_verifier_key(name: str, public_key: bytes) -> str:
    _check_name(name)
    kid = key_id(name, public_key).hex()
    return f"{name}+{kid}+{base64.b64encode(bytes([ALG_ED25519]) + public_key).decode()}"


def parse_verifier_key(vkey: str) -> NoteVerifier:
    name, sep1, rest = vkey.strip().partition("+")
    kid_hex, sep2, b64 = rest.partition("+")
    if not sep1 or not sep2:
        raise NoteError("verifier key must be name+keyid+key")
    _check_name(name)
    raw = _b64d(b64)
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError("verifier key is not an Ed25519 key")
    verifier = NoteVerifier(name, raw[1:])
    if verifier.key_id.hex() != kid_hex.lower() or len(kid_hex) != 8:
        raise NoteError("verifier key id does not match the key")
    return verifier


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("note text has control characters")


def _split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise NoteError("note has no signature block")
    text, block = note[: cut + 1], note[cut + 2 :]
    _check_text(text)
    sigs: list[tuple[str, bytes]] = []
    for line in block.splitlines():
        if not line.startswith(_SIG_PREFIX):
            raise NoteError("malformed signature line")
        name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep:
            raise NoteError("malformed signature line")
        blob = _b64d(b64)
        if len(blob) < 5:
            raise NoteError("signature too short")
        sigs.append((name, blob))
    if not sigs:
        raise NoteError("note has no signatures")
    return text, sigs


# --- checkpoints ----------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    tree_size: int
    root_hash: bytes
    time: datetime

    def body(self) -> str:
        if not self.origin or "\n" in self.origin:
            raise NoteError("origin must be one non-empty line")
        if self.tree_size < 0 or len(self.root_hash) != HASH_SIZE:
            raise NoteError("bad tree size or root hash")
        return (
            f"{self.origin}\n{self.tree_size}\n"
            f"{base64.b64encode(self.root_hash).decode()}\n"
            f"time {format_time(self.time)}\n"
        )


def format_time(t: datetime) -> str:
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_checkpoint_body(text: str, origin: str | None = None) -> Checkpoint:
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("checkpoint body too short")
    org, size_s, root_s = lines[0], lines[1], lines[2]
    if not org or (origin is not None and org != origin):
        raise NoteError(f"checkpoint origin {org!r} is not the expected log")
    if not size_s.isdigit() or (len(size_s) > 1 and size_s[0] == "0"):
        raise NoteError("checkpoint tree size malformed")
    root = _b64d(root_s)
    if len(root) != HASH_SIZE:
        raise NoteError("checkpoint root hash malformed")
    when: datetime | None = None
    for ext in lines[3:-1]:
        m = _TIME_RE.match(ext)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    if when is None:
        raise NoteError("checkpoint has no time line")
    return Checkpoint(org, int(size_s), root, when)


def sign_checkpoint(signer: NoteSigner, checkpoint: Checkpoint) -> str:
    return signer.sign(checkpoint.body())


def open_checkpoint(note: str, verifier: NoteVerifier, origin: str | None = None) -> Checkpoint:
    """Verifies the signature, then parses the body."""
    return parse_checkpoint_body(verifier.verify(note), origin)
