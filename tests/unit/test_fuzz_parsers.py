"""Bounded fuzzing of everything the gateway parses before it trusts a caller:
the §3 auth metadata, the §4 envelope's protected header, the gRPC frame and
the request message decoding. Each must either succeed or raise its typed
error — never crash — and stay within a memory bound on 1 MiB inputs."""

from __future__ import annotations

import base64
import contextlib
import json
import tracemalloc

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.authz import frame, messages
from iclaim.errors import IclaimError
from iclaim.crypto import envelope, signing

EXAMPLES = 1500
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
COUNTS: dict[str, int] = {}
MIB = 1024 * 1024


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


# --- §3 auth metadata --------------------------------------------------------------------
_near_valid = {
    signing.H_CLIENT: st.one_of(st.sampled_from(["10670", "AIA", "TESTPULL"]), st.text(max_size=40)),
    signing.H_KEY_ID: st.one_of(st.just("k1"), st.text(max_size=80)),
    signing.H_TIMESTAMP: st.one_of(
        st.integers(-10, 10**13).map(str), st.text(alphabet="0123456789+- \n", max_size=20)
    ),
    signing.H_NONCE: st.one_of(
        st.text(alphabet="abcXYZ019_-", min_size=14, max_size=130),
        st.text(max_size=140),
    ),
    signing.H_SIGNATURE: st.one_of(
        st.binary(min_size=30, max_size=34).map(signing.b64url), st.text(max_size=60)
    ),
}
_headers = st.fixed_dictionaries({}, optional={k: v for k, v in _near_valid.items()}).flatmap(
    lambda d: st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=3).map(
        lambda extra: {**extra, **d}
    )
)


@FUZZ
@given(_headers)
def _fuzz_auth_metadata(headers: dict[str, str]) -> None:
    _count("auth_metadata")
    try:
        meta = signing.parse_auth_metadata(headers)
    except signing.MalformedMetadata as exc:
        assert exc.header in signing.AUTH_HEADERS
        return
    # Whatever parses is within the documented limits.
    assert signing.NONCE_RE.fullmatch(meta.nonce) and 16 <= len(meta.nonce) <= 128
    assert len(meta.signature) == 32 and 0 <= meta.timestamp < 10**12
    assert "\n" not in meta.client + meta.key_id + meta.nonce


# --- §4 protected header ----------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_header_obj = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["ECDH-ES+A256KW", "RSA-OAEP-256", "none", "dir"]) | st.text(max_size=5),
        "enc": st.sampled_from(["A256GCM", "A128CBC-HS256"]) | _json_value,
        "kid": _json_value,
        "cty": st.sampled_from([envelope.CONTENT_TYPE]) | _json_value,
        envelope.H_SENDER: _json_value,
        envelope.H_RECIPIENT: _json_value,
        envelope.H_CLAIM_REF: _json_value,
        envelope.H_AMOUNT: _json_value,
        envelope.H_IAT: _json_value,
        "epk": _json_value,
        "crit": _json_value,
    },
)
_envelopes = st.one_of(
    st.text(max_size=300),
    st.tuples(_header_obj, st.lists(st.text(alphabet="AbC_-09", max_size=30), min_size=0, max_size=6)).map(
        lambda t: ".".join([_b64(json.dumps(t[0]).encode()), *t[1]])
    ),
    st.binary(max_size=200).map(lambda b: _b64(b) + "...."),
)


# Found by this fuzzer: a JSON array or object as alg/enc made the allow-list
# membership test raise TypeError (unhashable) instead of EnvelopeError.
@example(_b64(b'{"alg": ["ECDH-ES+A256KW"], "enc": "A256GCM"}') + ".AAAA.AAAA.AAAA.AAAA")
@example(_b64(b'{"alg": "ECDH-ES+A256KW", "enc": {"x": 1}}') + ".AAAA.AAAA.AAAA.AAAA")
@FUZZ
@given(_envelopes)
def _fuzz_protected_header(text: str) -> None:
    _count("protected_header")
    try:
        header = envelope.parse_protected_header(text)
    except envelope.EnvelopeError as exc:
        assert exc.reason.isupper() and exc.reason.replace("_", "").isalpha()
        return
    assert header.cty == envelope.CONTENT_TYPE


# --- gRPC frame + request decoding ----------------------------------------------------
_frames = st.one_of(
    st.binary(max_size=64),
    st.tuples(st.sampled_from([0, 1, 2, 255]), st.integers(0, 2**32 - 1), st.binary(max_size=64)).map(
        lambda t: bytes([t[0]]) + t[1].to_bytes(4, "big") + t[2]
    ),
    st.binary(max_size=64).map(lambda b: b"\x00" + len(b).to_bytes(4, "big") + b),
)


@FUZZ
@given(_frames, st.sampled_from(sorted(messages.REQUEST_CLASSES)), st.booleans())
def _fuzz_request_decoding(raw: bytes, method: str, partial: bool) -> None:
    _count("request_decoding")
    try:
        body = frame.message_bytes(raw, partial=partial)
        derived = messages.derive(method, body)
    except IclaimError as exc:
        assert exc.reason in {"MALFORMED_REQUEST", "REQUEST_TOO_LARGE"}
        return
    assert derived.transaction_id is None or isinstance(derived.transaction_id, str)


# --- memory bound on 1 MiB inputs --------------------------------------------------------
def _peak(fn) -> int:
    tracemalloc.start()
    try:
        with contextlib.suppress(IclaimError, signing.MalformedMetadata, envelope.EnvelopeError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_one_mebibyte_inputs_stay_within_a_memory_bound() -> None:
    big = "A" * MIB
    headers = {h: big for h in signing.AUTH_HEADERS}
    assert _peak(lambda: signing.parse_auth_metadata(headers)) < 1 * MIB
    garbage_header = _b64(b"{" * (3 * MIB // 4))
    parts = ".AAAA.AAAA.AAAA.AAAA"
    assert _peak(lambda: envelope.parse_protected_header(garbage_header + parts)) < 8 * MIB
    assert _peak(lambda: envelope.parse_protected_header(big)) < 8 * MIB
    # A frame claiming 4 GiB is refused from its prefix, before any copy.
    huge_prefix = b"\x00" + (2**32 - 1).to_bytes(4, "big") + b"x" * MIB
    assert _peak(lambda: frame.message_bytes(huge_prefix, partial=False)) < 64 * 1024
    # A 1 MiB well-framed message of nested garbage decodes or fails in bounded memory.
    nested = b"\x0a\x80\x80\x40" * (MIB // 4)
    framed = b"\x00" + len(nested).to_bytes(4, "big") + nested
    for method in messages.REQUEST_CLASSES:
        assert (
            _peak(lambda m=method: messages.derive(m, frame.message_bytes(framed, partial=False))) < 16 * MIB
        )


def _ran(name: str, fuzz: object) -> None:
    before = COUNTS.get(name, 0)
    fuzz()  # type: ignore[operator]
    assert COUNTS.get(name, 0) - before >= EXAMPLES, COUNTS  # the whole budget ran


def test_auth_metadata_parser_only_raises_malformed_metadata() -> None:
    _ran("auth_metadata", _fuzz_auth_metadata)


def test_protected_header_parser_only_raises_envelope_error() -> None:
    _ran("protected_header", _fuzz_protected_header)


def test_frame_and_message_decoding_only_raise_typed_errors() -> None:
    _ran("request_decoding", _fuzz_request_decoding)
