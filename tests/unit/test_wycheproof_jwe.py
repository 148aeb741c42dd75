"""Wycheproof vectors (tests/vectors/wycheproof, see tests/vectors/README.md)
against our envelope policy and primitives.

JWE: every case either opens to its `pt` under an allowed alg/enc, or is
refused with EnvelopeError; an `invalid` case or a disallowed alg/enc never
yields plaintext. X25519: low-order peers are a typed error, never a zero
secret. AES-GCM: the AEAD the envelopes rely on verifies every tag.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from iclaim.crypto.envelope import (
    ALLOWED_ALGS,
    ALLOWED_ENCS,
    EnvelopeError,
    decrypt_compact_policy,
    ecdh_shared_secret,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "wycheproof"


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _header(token: Any) -> dict[str, Any]:
    try:
        head = token.split(".")[0]
        value = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except Exception:  # noqa: BLE001 - a vector's header may be anything
        return {}
    return value if isinstance(value, dict) else {}


def _jwe_cases() -> list[tuple[str, Any, dict[str, Any], str, str]]:
    cases = []
    for group in _load("json_web_encryption_test.json")["testGroups"]:
        for t in group["tests"]:
            cases.append((t["tcId"], t["jwe"], group["private"], t.get("pt", ""), t["result"]))
    return cases


JWE_CASES = _jwe_cases()


def _open(jwe: Any, private: dict[str, Any]) -> tuple[bytes | None, str]:
    # JSON-serialized vectors reach us as the string a caller would send.
    token = jwe if isinstance(jwe, str) else json.dumps(jwe)
    try:
        return decrypt_compact_policy(token, private), "OPENED"
    except EnvelopeError as err:
        return None, err.reason


@pytest.mark.parametrize(
    ("tc_id", "jwe", "private", "pt", "result"), JWE_CASES, ids=[c[0] for c in JWE_CASES]
)
def test_jwe_vector_opens_only_under_policy(
    tc_id: str, jwe: Any, private: dict[str, Any], pt: str, result: str
) -> None:
    plaintext, outcome = _open(jwe, private)
    header = _header(jwe)
    allowed = header.get("alg") in ALLOWED_ALGS and header.get("enc") in ALLOWED_ENCS and "zip" not in header
    if plaintext is None:
        assert outcome.isupper()
        # A valid vector under our policy must open.
        assert not (allowed and result == "valid"), f"tc {tc_id} refused: {outcome}"
        if "zip" in header:
            assert outcome == "ENVELOPE_ZIP_FORBIDDEN"
        return
    assert result == "valid", f"invalid tc {tc_id} opened"
    assert allowed, f"tc {tc_id} opened under a disallowed alg/enc"
    assert plaintext == bytes.fromhex(pt)


def test_jwe_vector_counts() -> None:
    """The headline numbers: which vectors open and why the rest are refused."""
    outcomes = Counter(_open(jwe, private)[1] for _, jwe, private, _, _ in JWE_CASES)
    assert sum(outcomes.values()) == len(JWE_CASES) == 139
    # Exactly the two valid vectors in our policy: ECDH-ES+A256KW (P-256) and RSA-OAEP-256.
    assert outcomes["OPENED"] == 2
    print(dict(outcomes))


def test_zip_is_refused_before_decryption() -> None:
    tc = next(c for c in JWE_CASES if "zip" in _header(c[1]))
    header = _header(tc[1])
    header.update(alg="ECDH-ES+A256KW", enc="A256GCM")
    token = ".".join([_b64(json.dumps(header).encode()), *tc[1].split(".")[1:]])
    with pytest.raises(EnvelopeError) as err:
        decrypt_compact_policy(token, tc[2])
    assert err.value.reason == "ENVELOPE_ZIP_FORBIDDEN"


def _x25519_cases() -> list[dict[str, Any]]:
    return [t for g in _load("x25519_test.json")["testGroups"] for t in g["tests"]]


X25519_CASES = _x25519_cases()


def _x25519_jwks(t: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    d = bytes.fromhex(t["private"])
    x = X25519PrivateKey.from_private_bytes(d).public_key().public_bytes_raw()
    private = {"kty": "OKP", "crv": "X25519", "d": _b64(d), "x": _b64(x)}
    return private, {"kty": "OKP", "crv": "X25519", "x": _b64(bytes.fromhex(t["public"]))}


def test_x25519_vectors_through_our_ecdh() -> None:
    outcomes: Counter[str] = Counter()
    for t in X25519_CASES:
        private, public = _x25519_jwks(t)
        try:
            shared = ecdh_shared_secret(private, public)
        except EnvelopeError as err:
            assert err.reason == "ENVELOPE_EPK_INVALID"
            # Only keys the vectors allow us to refuse; a valid exchange must work.
            assert t["result"] == "acceptable", t["tcId"]
            outcomes[f"rejected:{','.join(sorted(t['flags']))}"] += 1
            continue
        assert any(shared), f"tc {t['tcId']}: zero shared secret escaped"
        assert shared.hex() == t["shared"], t["tcId"]
        outcomes["agreed"] += 1
    zero = [t for t in X25519_CASES if "ZeroSharedSecret" in t["flags"]]
    assert zero and all(int(t["shared"], 16) == 0 for t in zero)
    assert sum(v for k, v in outcomes.items() if "ZeroSharedSecret" in k) == len(zero)
    print(dict(outcomes))


def test_aes_gcm_vectors() -> None:
    """AES-GCM as cryptography gives it to joserfc: tags fully checked, no
    zero-length IV, every valid vector with a supported IV size decrypts."""
    seen: Counter[str] = Counter()
    for group in _load("aes_gcm_test.json")["testGroups"]:
        for t in group["tests"]:
            key, iv = bytes.fromhex(t["key"]), bytes.fromhex(t["iv"])
            data = bytes.fromhex(t["ct"] + t["tag"])
            try:
                out = AESGCM(key).decrypt(iv, data, bytes.fromhex(t["aad"]))
            except InvalidTag:
                assert t["result"] != "valid", t["tcId"]
                seen["rejected"] += 1
                continue
            except ValueError:
                # The library refuses IVs outside 8..128 bytes (incl. empty):
                # a refusal, never a bypass. Our envelopes use 12-byte IVs.
                assert not 8 <= len(iv) <= 128, t["tcId"]
                seen["iv_size_refused"] += 1
                continue
            assert t["result"] != "invalid", f"tc {t['tcId']} accepted"
            assert out == bytes.fromhex(t["msg"])
            seen["opened"] += 1
    assert seen["opened"] > 0 and seen["rejected"] > 0
    print(dict(seen))


def test_jwe_vector_ephemeral_keys_through_our_ecdh() -> None:
    """The ECDH-ES vectors' `epk` against our ECDH checks, whatever their alg:
    the invalid-curve point is a typed refusal, every other epk agrees."""
    outcomes: Counter[str] = Counter()
    for _, jwe, private, _, _ in JWE_CASES:
        epk = _header(jwe).get("epk")
        if epk is None:
            continue
        comment = next(
            t["comment"]
            for g in _load("json_web_encryption_test.json")["testGroups"]
            for t in g["tests"]
            if t["jwe"] == jwe
        )
        try:
            assert any(ecdh_shared_secret(private, epk))
            outcomes["agreed"] += 1
        except EnvelopeError as err:
            assert err.reason == "ENVELOPE_EPK_INVALID"
            assert comment == "rejectsInvalidCurvePoint", comment
            outcomes["rejected"] += 1
    assert outcomes["rejected"] == 1 and outcomes["agreed"] > 30
    print(dict(outcomes))
