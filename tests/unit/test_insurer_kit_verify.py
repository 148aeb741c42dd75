"""Push verification (docs/protocol.md §10.1) in the insurer kit: the §3 scheme
with client ICLAIM and the insurer's endpoint key; window -300/+60 s; each
nonce once; one stable reason per refusal."""

from __future__ import annotations

import secrets

import pytest

from iclaim.crypto import signing
from iclaim.insurer import verify as v
from iclaim.insurer.verify import PushRejected, PushVerifier, auth_headers

KEY_ID = "ep-0011aabb"
SECRET = bytes(range(32))
NOW = 1_700_000_000
METHOD = v.GRPC_METHOD
BODY = b"\x0a\x05hello"


def _headers(
    *,
    ts: int = NOW,
    nonce: str | None = None,
    secret: bytes = SECRET,
    key_id: str = KEY_ID,
    client: str = "ICLAIM",
    method: str = METHOD,
    body: bytes = BODY,
) -> dict[str, str]:
    n = nonce or secrets.token_urlsafe(24)
    return {
        "x-iclaim-client": client,
        "x-iclaim-key-id": key_id,
        "x-iclaim-timestamp": str(ts),
        "x-iclaim-nonce": n,
        "x-iclaim-signature": signing.sign(secret, client, key_id, method, ts, n, body),
    }


def _verifier(now: float = NOW, **kw: object) -> PushVerifier:
    clock = {"t": now}
    verifier = PushVerifier({KEY_ID: ("AIA", SECRET)}, clock=lambda: clock["t"], **kw)  # type: ignore[arg-type]
    verifier.clock = clock  # type: ignore[attr-defined]
    return verifier


def _reason(verifier: PushVerifier, headers: dict[str, str], **kw: object) -> str:
    with pytest.raises(PushRejected) as info:
        verifier.verify(kw.pop("method", METHOD), kw.pop("body", BODY), headers, **kw)  # type: ignore[arg-type]
    assert info.value.server_time == int(verifier.clock["t"])  # type: ignore[attr-defined]
    return info.value.reason


def test_a_push_signed_with_the_endpoint_key_names_its_insurer() -> None:
    assert _verifier().verify(METHOD, BODY, _headers()) == "AIA"


def test_the_string_to_sign_is_the_one_of_section_3() -> None:
    # The §3 worked example, with the reserved client code swapped in: the kit
    # verifies what signing.sign produces, byte for byte.
    secret = b"\x01" * 32
    ts, nonce = 1700000000, "nnnnnnnnnnnnnnnn"
    sig = signing.sign(secret, "10670", "k1", "/iclaim.v1.ClaimService/SubmitClaim", ts, nonce, b"abc")
    assert sig == "G8gFAcd7_yqmsD_EAUr2Y0GdTJ9IreMVZE0Y5hxIAjs"
    verifier = PushVerifier({"k1": ("AIA", secret)}, clock=lambda: ts)
    headers = {
        "x-iclaim-client": "ICLAIM",
        "x-iclaim-key-id": "k1",
        "x-iclaim-timestamp": str(ts),
        "x-iclaim-nonce": nonce,
        "x-iclaim-signature": signing.sign(secret, "ICLAIM", "k1", METHOD, ts, nonce, b"abc"),
    }
    assert verifier.verify(METHOD, b"abc", headers) == "AIA"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"secret": b"\x02" * 32}, v.BAD_SIGNATURE),
        ({"key_id": "ep-unknown"}, v.UNKNOWN_KEY),
        ({"client": "AIA"}, v.UNKNOWN_CLIENT),
        ({"method": "/iclaim.v1.InsurerEndpoint/Other"}, v.BAD_SIGNATURE),
        ({"body": BODY + b"x"}, v.BAD_SIGNATURE),
    ],
)
def test_a_wrong_key_client_method_or_body_is_refused(change: dict[str, object], reason: str) -> None:
    assert _reason(_verifier(), _headers(**change)) == reason  # type: ignore[arg-type]


def test_a_tampered_body_is_refused() -> None:
    assert _reason(_verifier(), _headers(), body=BODY[:-1] + b"X") == v.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("offset", "ok"),
    [(-300, True), (-301, False), (60, True), (61, False), (0, True)],
)
def test_the_window_is_300_s_behind_and_60_s_ahead(offset: int, ok: bool) -> None:
    verifier = _verifier()
    headers = _headers(ts=NOW + offset)
    if ok:
        assert verifier.verify(METHOD, BODY, headers) == "AIA"
    else:
        assert _reason(verifier, headers) == v.TIMESTAMP_SKEW


def test_each_nonce_is_accepted_once_even_much_later_in_the_window() -> None:
    verifier = _verifier()
    headers = _headers(nonce="n" * 20)
    assert verifier.verify(METHOD, BODY, headers) == "AIA"
    assert _reason(verifier, headers) == v.NONCE_REUSED
    verifier.clock["t"] = NOW + 299  # type: ignore[attr-defined]
    assert _reason(verifier, headers) == v.NONCE_REUSED
    # A fresh signature reusing the nonce is still a reuse.
    assert _reason(verifier, _headers(nonce="n" * 20, ts=NOW + 10)) == v.NONCE_REUSED


def test_a_refused_push_does_not_burn_its_nonce() -> None:
    verifier = _verifier()
    forged = _headers(nonce="m" * 20, secret=b"\x09" * 32)
    assert _reason(verifier, forged) == v.BAD_SIGNATURE
    assert verifier.verify(METHOD, BODY, _headers(nonce="m" * 20)) == "AIA"


@pytest.mark.parametrize(
    "broken",
    [
        {"x-iclaim-nonce": "short"},
        {"x-iclaim-timestamp": "0017"},
        {"x-iclaim-timestamp": "-5"},
        {"x-iclaim-signature": "not base64!"},
        {"x-iclaim-key-id": ""},
    ],
)
def test_malformed_metadata_is_refused(broken: dict[str, str]) -> None:
    headers = _headers() | broken
    assert _reason(_verifier(), headers) == v.MALFORMED_METADATA


def test_a_missing_header_is_malformed_metadata() -> None:
    headers = _headers()
    del headers["x-iclaim-signature"]
    assert _reason(_verifier(), headers) == v.MALFORMED_METADATA


def test_header_names_are_case_insensitive_but_a_repeated_one_is_refused() -> None:
    headers = _headers()
    pairs = [(k.upper(), val) for k, val in headers.items()] + [("content-type", "application/json")]
    assert _verifier().verify(METHOD, BODY, auth_headers(pairs)) == "AIA"
    with pytest.raises(PushRejected) as info:
        auth_headers([*pairs, ("X-Iclaim-Nonce", "another-nonce-1234")])
    assert info.value.reason == v.MALFORMED_METADATA


def test_a_key_of_another_insurer_is_unknown_for_this_one() -> None:
    verifier = _verifier()
    assert _reason(verifier, _headers(), insurer_code="MTL") == v.UNKNOWN_KEY
    assert verifier.verify(METHOD, BODY, _headers(), insurer_code="AIA") == "AIA"


def test_any_of_several_method_lines_may_be_signed() -> None:
    verifier = _verifier()
    signed = _headers(method="POST /hook?token=1")
    assert verifier.verify_any(["POST /hook", "POST /hook?token=1"], BODY, signed) == "AIA"
    assert _reason(verifier, _headers(method="POST /elsewhere"), method="POST /hook") == v.BAD_SIGNATURE


def test_the_nonce_memory_is_bounded_and_refuses_rather_than_forgets() -> None:
    verifier = _verifier(max_nonces=3)
    for i in range(3):
        verifier.verify(METHOD, BODY, _headers(nonce=f"nonce-{i:016d}"))
    # Full with live nonces: refusing is safe (the hub retries); evicting
    # one would let its replay in.
    assert _reason(verifier, _headers()) == v.NONCE_CACHE_FULL
    # Once their timestamps left the window, the room is free again.
    verifier.clock["t"] = NOW + 302  # type: ignore[attr-defined]
    assert verifier.verify(METHOD, BODY, _headers(ts=NOW + 302)) == "AIA"
    assert len(verifier._nonces) == 1


def test_keys_of_refuses_two_insurers_with_one_endpoint_key_id(tmp_path: object) -> None:
    from pathlib import Path

    from tests.support.insurer_kit import write_credentials

    _, parties = write_credentials(Path(str(tmp_path)), ["AIA", "MTL"], None, pull=("MTL",))
    assert set(v.keys_of([p.creds for p in parties.values()]).values()) == {
        ("AIA", parties["AIA"].creds.endpoint_secret)
    }
    clash = [parties["AIA"].creds, parties["AIA"].creds]
    with pytest.raises(ValueError):
        v.keys_of(clash)
