"""Tampering with a sealed envelope: any changed bit in any of the five parts,
a rewritten protected header, a swapped ephemeral key or a downgraded alg is a
typed EnvelopeError at the recipient, never plaintext."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from iclaim.errors import InvalidArgument
from iclaim.crypto.envelope import (
    EnvelopeError,
    decrypt_compact_policy,
    generate_encryption_key,
    open_envelope,
    parse_protected_header,
    seal,
)
from iclaim_hub.registry.model import DEFAULT_KEY_GRACE_S, EncryptionKeyRecord, Principal
from services.claim_router.domain import check_envelope_routing

PLAINTEXT = b'{"resourceType":"Claim","id":"T-1"}'
PARTS = ("header", "encrypted_key", "iv", "ciphertext", "tag")


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _x25519() -> tuple[dict[str, Any], dict[str, Any]]:
    return generate_encryption_key("INS-k1")


def _rsa() -> tuple[dict[str, Any], dict[str, Any]]:
    key = RSAKey.generate_key(2048, parameters={"kid": "INS-rsa1", "use": "enc"}, private=True)
    return dict(key.as_dict(private=True)), dict(key.as_dict(private=False))


def _seal(public: dict[str, Any], **over: Any) -> str:
    args: dict[str, Any] = {
        "sender": "10001",
        "recipient": "AIA",
        "claim_ref": "CR-1",
        "amount_satang": 12_345,
    }
    args.update(over)
    return seal(PLAINTEXT, public, **args)


def _flip(envelope: str, part: int, bit: int) -> str:
    parts = envelope.split(".")
    raw = bytearray(_b64d(parts[part]))
    raw[bit // 8] ^= 1 << (bit % 8)
    parts[part] = _b64e(bytes(raw))
    return ".".join(parts)


def _rewrite_header(envelope: str, **changes: Any) -> str:
    parts = envelope.split(".")
    header = json.loads(_b64d(parts[0]))
    header.update(changes)
    parts[0] = _b64e(json.dumps(header, separators=(",", ":")).encode())
    return ".".join(parts)


def _refused(envelope: str, private: Any) -> str:
    with pytest.raises(EnvelopeError) as err:
        open_envelope(envelope, private)
    return err.value.reason


@pytest.mark.parametrize("kind", ["x25519", "rsa"])
def test_every_flipped_bit_in_every_part_is_refused(kind: str) -> None:
    private, public = _x25519() if kind == "x25519" else _rsa()
    envelope = _seal(public)
    assert open_envelope(envelope, private)[1] == PLAINTEXT
    # RSA decryption is slow: sample its bits (key imported once); X25519 gets every bit.
    step = 1 if kind == "x25519" else 17
    if kind == "rsa":
        private = RSAKey.import_key(private)  # type: ignore[assignment]
    tried = 0
    for index, _name in enumerate(PARTS):
        nbits = len(_b64d(envelope.split(".")[index])) * 8
        for bit in range(0, nbits, step):
            reason = _refused(_flip(envelope, index, bit), private)
            assert reason.isupper()
            tried += 1
    assert tried > 100


def test_ciphertext_tag_iv_key_flips_fail_decryption_not_policy() -> None:
    private, public = _x25519()
    envelope = _seal(public)
    for index in (1, 2, 3, 4):
        assert _refused(_flip(envelope, index, 0), private) == "ENVELOPE_DECRYPT_FAILED"


@pytest.mark.parametrize(
    "changes",
    [
        {"x-iclaim-recipient": "BKI"},
        {"x-iclaim-amount-satang": 99_999_999},
        {"x-iclaim-sender": "10002"},
        {"x-iclaim-claim-ref": "CR-2"},
        {"x-iclaim-iat": 1},
        {"kid": "INS-k0"},
    ],
)
def test_rewritten_header_is_readable_but_never_opens(changes: dict[str, Any]) -> None:
    """A man in the middle can re-encode the header (it is only base64url), so
    the router sees the new values; the header is AES-GCM AAD, so the insurer
    cannot open it."""
    private, public = _x25519()
    forged = _rewrite_header(_seal(public), **changes)
    header = parse_protected_header(forged)
    for name, value in changes.items():
        attr = {
            "x-iclaim-recipient": "recipient",
            "x-iclaim-amount-satang": "amount_satang",
            "x-iclaim-sender": "sender",
            "x-iclaim-claim-ref": "claim_ref",
            "x-iclaim-iat": "iat",
            "kid": "kid",
        }[name]
        assert getattr(header, attr) == value
    reason = _refused(forged, private)
    expected = "ENVELOPE_KID_UNKNOWN" if "kid" in changes else "ENVELOPE_DECRYPT_FAILED"
    assert reason == expected


def test_reencoded_identical_header_with_other_key_order_still_fails() -> None:
    """Even the same values, re-serialized, change the AAD bytes."""
    private, public = _x25519()
    envelope = _seal(public)
    parts = envelope.split(".")
    header = json.loads(_b64d(parts[0]))
    reordered = dict(reversed(list(header.items())))
    parts[0] = _b64e(json.dumps(reordered).encode())
    assert _refused(".".join(parts), private) == "ENVELOPE_DECRYPT_FAILED"


@pytest.mark.parametrize(
    "alg", ["dir", "A256KW", "ECDH-ES", "RSA1_5", "RSA-OAEP", "none", None, ["ECDH-ES+A256KW"], {}]
)
def test_alg_downgrade_is_refused_before_decryption(alg: Any) -> None:
    private, public = _x25519()
    forged = _rewrite_header(_seal(public), alg=alg)
    assert _refused(forged, private) == "ENVELOPE_ALG_FORBIDDEN"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"enc": "A128GCM"}, "ENVELOPE_ALG_FORBIDDEN"),
        ({"enc": ["A256GCM"]}, "ENVELOPE_ALG_FORBIDDEN"),
        ({"x-iclaim-amount-satang": "12345"}, "ENVELOPE_HEADER_MISSING"),
        ({"x-iclaim-amount-satang": True}, "ENVELOPE_HEADER_MISSING"),
        ({"x-iclaim-recipient": ["AIA"]}, "ENVELOPE_HEADER_MISSING"),
        ({"cty": "application/json"}, "ENVELOPE_MALFORMED"),
        ({"enc": "A256CBC-HS512"}, "ENVELOPE_ALG_FORBIDDEN"),
        ({"zip": "DEF"}, "ENVELOPE_ZIP_FORBIDDEN"),
        ({"crit": ["x-iclaim-sender"]}, "ENVELOPE_MALFORMED"),
    ],
)
def test_enc_zip_crit_and_bad_iclaim_headers_are_refused(changes: dict[str, Any], reason: str) -> None:
    private, public = _x25519()
    assert _refused(_rewrite_header(_seal(public), **changes), private) == reason


@pytest.mark.parametrize(
    "x",
    [
        bytes(32),  # zero: order 1/2
        b"\x01" + bytes(31),  # order 4
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
    ],
)
def test_low_order_epk_is_refused_not_used(x: bytes) -> None:
    private, public = _x25519()
    envelope = _seal(public)
    header = json.loads(_b64d(envelope.split(".")[0]))
    forged = _rewrite_header(envelope, epk={**header["epk"], "x": _b64e(x)})
    assert _refused(forged, private) == "ENVELOPE_EPK_INVALID"


def test_epk_on_another_curve_is_refused() -> None:
    private, public = _x25519()
    other = generate_encryption_key("x")[1]
    forged = _rewrite_header(_seal(public), epk={"kty": "EC", "crv": "P-256", "x": other["x"]})
    assert _refused(forged, private) == "ENVELOPE_EPK_INVALID"


def test_cut_and_paste_between_envelopes_is_refused() -> None:
    private, public = _x25519()
    a = _seal(public).split(".")
    b = _seal(public, claim_ref="CR-2").split(".")
    for index in range(1, 5):
        mixed = list(a)
        mixed[index] = b[index]
        assert _refused(".".join(mixed), private) == "ENVELOPE_DECRYPT_FAILED"


def test_wrong_key_type_or_wrong_key() -> None:
    x_priv, x_pub = _x25519()
    r_priv, _ = _rsa()
    assert _refused(_seal(x_pub), r_priv) == "ENVELOPE_KEY_MISMATCH"
    other_priv, _ = generate_encryption_key("INS-k1")  # same kid, other key
    assert _refused(_seal(x_pub), other_priv) == "ENVELOPE_DECRYPT_FAILED"
    assert _refused(_seal(x_pub), {"kty": "oct", "k": "AAAA"}) == "KEY_UNSUPPORTED"
    assert _refused(_seal(x_pub), x_pub) == "KEY_UNSUPPORTED"  # public half cannot open


@pytest.mark.parametrize(
    "envelope",
    [
        "",
        "a.b.c.d",
        "a.b.c.d.e.f",
        "....",
        "!!!!.a.b.c.d",
        "e30.a.b.c.d",
        "W10.a.b.c.d",
        "x" * (1024 * 1024 + 1),
    ],
)
def test_malformed_shapes_are_typed(envelope: str) -> None:
    private, _ = _x25519()
    with pytest.raises(EnvelopeError) as err:
        decrypt_compact_policy(envelope, private)
    assert err.value.reason in {"ENVELOPE_MALFORMED", "ENVELOPE_TOO_LARGE", "ENVELOPE_ALG_FORBIDDEN"}


def _insurer(code: str, kid: str) -> Principal:
    return Principal(code, "insurer", code, keys=(EncryptionKeyRecord(kid, {}, "current"),))


def test_router_check_refuses_readdressed_header() -> None:
    """Header recipient changed to another insurer while the request names the
    original one (or the other way round): the router refuses both."""
    _, public = _x25519()
    forged = _rewrite_header(_seal(public), **{"x-iclaim-recipient": "BKI"})
    header = parse_protected_header(forged)
    with pytest.raises(InvalidArgument) as err:
        check_envelope_routing(
            header,
            sender="10001",
            recipient=_insurer("AIA", "INS-k1"),
            claim_ref="CR-1",
            amount_satang=12_345,
        )
    assert err.value.reason == "ENVELOPE_HEADER_MISMATCH"
    original = parse_protected_header(_seal(public))
    with pytest.raises(InvalidArgument) as err:
        check_envelope_routing(
            original,
            sender="10001",
            recipient=_insurer("BKI", "BKI-k"),
            claim_ref="CR-1",
            amount_satang=12_345,
        )
    assert err.value.reason == "ENVELOPE_HEADER_MISMATCH"
    # Recipient forged to match BKI, but the kid is AIA's: unknown to BKI.
    with pytest.raises(InvalidArgument) as err:
        check_envelope_routing(
            header, sender="10001", recipient=_insurer("BKI", "BKI-k"), claim_ref="CR-1", amount_satang=12_345
        )
    assert err.value.reason == "ENVELOPE_KID_UNKNOWN"


def test_duplicate_header_member_is_malformed() -> None:
    private, public = _x25519()
    parts = _seal(public).split(".")
    raw = _b64d(parts[0]).decode()
    parts[0] = _b64e(raw.replace("{", '{"x-iclaim-recipient":"BKI",', 1).encode())
    assert _refused(".".join(parts), private) == "ENVELOPE_MALFORMED"


@pytest.mark.filterwarnings("ignore:Key size should be")
def test_short_rsa_key_is_refused() -> None:
    weak = RSAKey.generate_key(1024, parameters={"kid": "INS-rsa1"}, private=True)
    _, public = _rsa()
    assert _refused(_seal(public), dict(weak.as_dict(private=True))) == "KEY_UNSUPPORTED"


def test_previous_key_is_accepted_only_within_the_grace() -> None:
    now = datetime(2026, 11, 25, tzinfo=UTC)
    grace = 3600.0

    def rotated(ago_s: float | None) -> Principal:
        since = None if ago_s is None else now - timedelta(seconds=ago_s)
        return Principal(
            "AIA",
            "insurer",
            "AIA",
            keys=(
                EncryptionKeyRecord("k-old", {}, "previous", since),
                EncryptionKeyRecord("k-new", {}, "current"),
                EncryptionKeyRecord("k-gone", {}, "retired"),
            ),
        )

    assert rotated(10).accepted_kids(grace, now) == {"k-old", "k-new"}
    assert rotated(grace).accepted_kids(grace, now) == {"k-old", "k-new"}
    assert rotated(grace + 1).accepted_kids(grace, now) == {"k-new"}
    assert [k.kid for k in rotated(grace + 1).accepted_keys(grace, now)] == ["k-new"]
    # A record read without its age (older readers): as before, accepted.
    assert rotated(None).accepted_kids(grace, now) == {"k-old", "k-new"}
    assert DEFAULT_KEY_GRACE_S == 7 * 24 * 3600
    _, public = _x25519()  # kid INS-k1
    header = parse_protected_header(_seal(public))
    late = Principal(
        "AIA",
        "insurer",
        "AIA",
        keys=(
            EncryptionKeyRecord("INS-k1", {}, "previous", datetime.now(UTC) - timedelta(days=8)),
            EncryptionKeyRecord("INS-k2", {}, "current"),
        ),
    )
    with pytest.raises(InvalidArgument) as err:
        check_envelope_routing(header, sender="10001", recipient=late, claim_ref="CR-1", amount_satang=12_345)
    assert err.value.reason == "ENVELOPE_KID_UNKNOWN"
    check_envelope_routing(
        header,
        sender="10001",
        recipient=late,
        claim_ref="CR-1",
        amount_satang=12_345,
        key_grace_s=9 * 24 * 3600,
    )


@pytest.mark.parametrize("cut", [1, 4, 8, 15, 16])
def test_truncated_tag_is_refused(cut: int) -> None:
    """Wycheproof's tagTruncatedBy* cases, on our own allowed-alg envelopes."""
    private, public = _x25519()
    parts = _seal(public).split(".")
    parts[4] = _b64e(_b64d(parts[4])[:-cut])
    assert _refused(".".join(parts), private) in {"ENVELOPE_DECRYPT_FAILED", "ENVELOPE_MALFORMED"}


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_missing_part_is_refused(index: int) -> None:
    """Wycheproof's rejectsMissing* cases: the part emptied, or dropped with its dot."""
    private, public = _x25519()
    parts = _seal(public).split(".")
    emptied = list(parts)
    emptied[index] = ""
    assert _refused(".".join(emptied), private).startswith("ENVELOPE_")
    dropped = parts[:index] + parts[index + 1 :]
    assert _refused(".".join(dropped), private) == "ENVELOPE_MALFORMED"
