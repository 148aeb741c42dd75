"""Imported long-lived keys are remembered by their whole JWK, never by kid
alone: a new key under the same kid is imported afresh."""

from __future__ import annotations

from iclaim.crypto import envelope
from iclaim.crypto.envelope import generate_encryption_key, open_envelope, seal


def _seal(pub: dict[str, object]) -> str:
    return seal(b"{}", pub, sender="AIA", recipient="10670", claim_ref="C-1", amount_satang=1)


def test_the_same_jwk_is_imported_once() -> None:
    priv, pub = generate_encryption_key("k-same")
    assert envelope._imported(pub) is envelope._imported(dict(pub))
    assert envelope._imported(priv) is not envelope._imported(pub)
    header, body = open_envelope(_seal(pub), priv)
    assert (header.kid, body) == ("k-same", b"{}")


def test_a_new_key_under_the_same_kid_is_not_mistaken_for_the_old_one() -> None:
    old_priv, old_pub = generate_encryption_key("k-reused")
    new_priv, new_pub = generate_encryption_key("k-reused")
    open_envelope(_seal(old_pub), old_priv)
    sealed = _seal(new_pub)
    assert open_envelope(sealed, new_priv)[1] == b"{}"
    try:
        open_envelope(sealed, old_priv)
    except envelope.EnvelopeError as exc:
        assert exc.reason == "ENVELOPE_DECRYPT_FAILED"
    else:
        raise AssertionError("opened with the old key")


def test_the_cache_stays_bounded() -> None:
    for i in range(envelope._KEY_CACHE_MAX + 10):
        envelope._imported(generate_encryption_key(f"k-{i}")[1])
    assert len(envelope._KEY_CACHE) <= envelope._KEY_CACHE_MAX
