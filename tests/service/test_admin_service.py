"""AdminService (docs/protocol.md §11) on port 0 over a real RegistryStore on a
scratch PostgreSQL database, with a recording fake of the delivery layer.

Every command; every refusal is INVALID_ARGUMENT/NOT_FOUND/… with its stable
reason AND leaves every registry row as it was; the bearer token."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from iclaim.crypto.signing import b64url_decode
from iclaim_hub.common.server import REASON_TRAILER
from iclaim_hub.internal.v1 import admin_pb2 as pb
from iclaim_hub.registry.model import Principal
from tests.support.databases import create_db, drop_db
from tests.support.admin import (
    HOSPITAL,
    PULL,
    PUSH,
    TOKEN,
    AdminEnv,
    Row,
    ca_pem,
    private_jwk,
    public_jwk,
    running_admin,
)

TXN_A = "txn_" + "a" * 28
TXN_B = "txn_" + "b" * 28


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[AdminEnv]:
    async with running_admin(database_url) as e:
        yield e


@pytest.fixture(scope="module")
async def shared_env() -> AsyncIterator[AdminEnv]:
    """One server for the refusal tests: each shows it changed nothing, so they
    cannot disturb one another (and a leak would show up in the next one)."""
    name, url = await create_db()
    try:
        async with running_admin(url) as e:
            yield e
    finally:
        await drop_db(name)


@pytest.fixture
def refusals(shared_env: AdminEnv) -> AdminEnv:
    shared_env.deliveries.list_calls.clear()
    shared_env.deliveries.redrive_calls.clear()
    return shared_env


def _reason(err: grpc.aio.AioRpcError) -> str:
    return dict(err.trailing_metadata() or ()).get(REASON_TRAILER, "")


async def _refused(env: AdminEnv, method: str, request: Any, code: grpc.StatusCode, reason: str) -> None:
    """The call is refused with `code`/`reason` and no registry row changed."""
    before = await env.snapshot()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.call(method, request)
    assert (info.value.code(), _reason(info.value)) == (code, reason)
    assert await env.snapshot() == before


def _add(code: str = "NEWCO", **kw: Any) -> pb.AddInsurerRequest:
    values: dict[str, Any] = {
        "code": code,
        "display_name": "New Co Insurance",
        "line": "non-life",
        "delivery": "grpc",
        "endpoint": "claims.newco.example:443",
        "encryption_public_jwk": json.dumps(public_jwk(f"{code}-enc-1")),
    }
    values.update(kw)
    return pb.AddInsurerRequest(**values)


# --- AddInsurer -----------------------------------------------------------------------
async def test_add_grpc_insurer_issues_signing_and_endpoint_keys(env: AdminEnv) -> None:
    jwk = public_jwk("NEWCO-enc-1")
    r = await env.call("AddInsurer", _add(encryption_public_jwk=json.dumps(jwk)))
    assert r.code == "NEWCO" and r.key_id.startswith("k-") and r.endpoint_key_id.startswith("ep-")
    secret, endpoint_secret = b64url_decode(r.secret), b64url_decode(r.endpoint_secret)
    assert len(secret) == 32 and len(endpoint_secret) == 32 and secret != endpoint_secret

    key = await env.registry.signing_key("NEWCO", r.key_id)
    assert key is not None and key.secret == secret and key.role == "insurer"
    ek = await env.registry.endpoint_key("NEWCO")
    assert ek is not None and (ek.key_id, ek.secret) == (r.endpoint_key_id, endpoint_secret)
    p = await env.registry.principal("NEWCO")
    assert p is not None
    assert (p.role, p.display_name, p.line, p.delivery_mode, p.endpoint, p.available) == (
        "insurer",
        "New Co Insurance",
        2,
        "grpc",
        "claims.newco.example:443",
        True,
    )
    current = p.current_key()
    assert current is not None and current.public_jwk == jwk
    # What ListInsurers shows of it: the registry holds the PUBLIC key only.
    assert "d" not in current.public_jwk


async def test_add_webhook_insurer_with_ca_and_mtls(env: AdminEnv) -> None:
    pem = ca_pem()
    r = await env.call(
        "AddInsurer",
        _add(
            "HOOKCO",
            line="life",
            delivery="webhook",
            endpoint="https://hooks.hookco.example/iclaim/claims",
            endpoint_ca_pem=pem,
            endpoint_mtls=True,
        ),
    )
    assert r.endpoint_key_id
    p = await env.registry.principal("HOOKCO")
    assert p is not None and (p.delivery_mode, p.endpoint_ca_pem, p.endpoint_mtls, p.line) == (
        "webhook",
        pem,
        True,
        1,
    )
    entry = await env.call("GetRegistryEntry", pb.GetRegistryEntryRequest(code="HOOKCO"))
    assert entry.endpoint_ca_set and entry.endpoint_mtls and entry.line == "life"


async def test_add_pull_insurer_has_no_endpoint_key(env: AdminEnv) -> None:
    r = await env.call("AddInsurer", _add("PULL2", delivery="pull", endpoint=""))
    assert r.key_id and r.secret and not r.endpoint_key_id and not r.endpoint_secret
    assert await env.registry.endpoint_key("PULL2") is None


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


BAD_ADDS = [
    ("http_webhook", {"delivery": "webhook", "endpoint": "http://hooks.example/claims"}, "ENDPOINT_INVALID"),
    ("webhook_no_host", {"delivery": "webhook", "endpoint": "https:///claims"}, "ENDPOINT_INVALID"),
    ("grpc_url", {"endpoint": "https://claims.example:443"}, "ENDPOINT_INVALID"),
    ("grpc_no_port", {"endpoint": "claims.example"}, "ENDPOINT_INVALID"),
    ("grpc_bad_port", {"endpoint": "claims.example:99999"}, "ENDPOINT_INVALID"),
    ("push_without_endpoint", {"endpoint": ""}, "ENDPOINT_INVALID"),
    ("pull_with_endpoint", {"delivery": "pull"}, "ENDPOINT_INVALID"),
    ("pull_with_mtls", {"delivery": "pull", "endpoint": "", "endpoint_mtls": True}, "ENDPOINT_INVALID"),
    (
        "jwk_without_kid",
        {"encryption_public_jwk": json.dumps(_without(public_jwk("x"), "kid"))},
        "JWK_INVALID",
    ),
    ("jwk_private", {"encryption_public_jwk": json.dumps(private_jwk("NEWCO-enc-1"))}, "JWK_PRIVATE"),
    ("jwk_symmetric", {"encryption_public_jwk": '{"kty":"oct","k":"AAAA","kid":"s"}'}, "JWK_PRIVATE"),
    ("jwk_not_json", {"encryption_public_jwk": "{not json"}, "JWK_INVALID"),
    (
        "jwk_two_keys",
        {"encryption_public_jwk": json.dumps([public_jwk("a"), public_jwk("b")])},
        "JWK_INVALID",
    ),
    (
        "ca_not_pem",
        {"endpoint_ca_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
        "ENDPOINT_CA_INVALID",
    ),
    ("code_lower", {"code": "newco"}, "INSURER_CODE_INVALID"),
    ("code_long", {"code": "A" * 17}, "INSURER_CODE_INVALID"),
    ("line", {"line": "health"}, "LINE_INVALID"),
    ("delivery", {"delivery": "simulated"}, "DELIVERY_MODE_INVALID"),
    ("name_empty", {"display_name": "  "}, "NAME_INVALID"),
    ("name_long", {"display_name": "N" * 201}, "NAME_INVALID"),
    ("name_control", {"display_name": "New\nCo"}, "NAME_INVALID"),
]


@pytest.mark.parametrize(("overrides", "reason"), [b[1:] for b in BAD_ADDS], ids=[b[0] for b in BAD_ADDS])
async def test_add_insurer_refusals_change_nothing(
    refusals: AdminEnv, overrides: dict[str, Any], reason: str
) -> None:
    await _refused(refusals, "AddInsurer", _add(**overrides), grpc.StatusCode.INVALID_ARGUMENT, reason)


@pytest.mark.parametrize("code", [PULL, PUSH, HOSPITAL])
async def test_add_insurer_over_an_existing_code_is_refused(refusals: AdminEnv, code: str) -> None:
    await _refused(refusals, "AddInsurer", _add(code), grpc.StatusCode.ALREADY_EXISTS, "PRINCIPAL_EXISTS")


async def test_add_completes_an_enrolment_that_stopped_half_way(env: AdminEnv) -> None:
    """A principal row without any signing key (a crash mid-enrolment) is not
    'taken': adding it again completes it and opens it."""
    await env.registry.upsert_principal(
        Principal(
            "HALF", "insurer", "Half", line=2, delivery_mode="grpc", available=False, endpoint="h.example:1"
        )
    )
    r = await env.call("AddInsurer", _add("HALF"))
    assert await env.registry.signing_key("HALF", r.key_id) is not None
    p = await env.registry.principal("HALF")
    assert p is not None and p.available and p.endpoint == "claims.newco.example:443"


# --- SetInsurer -----------------------------------------------------------------------
async def test_set_available_false_then_true(env: AdminEnv) -> None:
    entry = await env.call("SetInsurer", pb.SetInsurerRequest(code=PUSH, available=False))
    assert entry.code == PUSH and not entry.available and entry.delivery == "grpc"
    p = await env.registry.principal(PUSH)
    assert p is not None and not p.available
    entry = await env.call("SetInsurer", pb.SetInsurerRequest(code=PUSH, available=True))
    assert entry.available


async def test_set_endpoint_ca_and_mtls(env: AdminEnv) -> None:
    pem = ca_pem()
    entry = await env.call(
        "SetInsurer",
        pb.SetInsurerRequest(
            code=PUSH, endpoint="push2.example:8443", endpoint_ca_pem=pem, endpoint_mtls=True
        ),
    )
    assert (entry.endpoint, entry.endpoint_ca_set, entry.endpoint_mtls) == ("push2.example:8443", True, True)
    assert not entry.endpoint_secret  # it had an endpoint key already
    p = await env.registry.principal(PUSH)
    assert p is not None and (p.endpoint, p.endpoint_ca_pem, p.endpoint_mtls) == (
        "push2.example:8443",
        pem,
        True,
    )
    # "" clears the CA: system roots.
    entry = await env.call("SetInsurer", pb.SetInsurerRequest(code=PUSH, endpoint_ca_pem=""))
    assert not entry.endpoint_ca_set


async def test_switching_pull_to_push_issues_the_first_endpoint_key(env: AdminEnv) -> None:
    assert await env.registry.endpoint_key(PULL) is None
    entry = await env.call(
        "SetInsurer",
        pb.SetInsurerRequest(code=PULL, delivery="webhook", endpoint="https://pullco.example/iclaim/claims"),
    )
    assert entry.delivery == "webhook" and entry.endpoint_key_id.startswith("ep-")
    ek = await env.registry.endpoint_key(PULL)
    assert ek is not None and (ek.key_id, ek.secret) == (
        entry.endpoint_key_id,
        b64url_decode(entry.endpoint_secret),
    )
    # A second change issues nothing new.
    again = await env.call("SetInsurer", pb.SetInsurerRequest(code=PULL, available=True))
    assert again.endpoint_key_id == entry.endpoint_key_id and not again.endpoint_secret


async def test_switching_push_to_pull_drops_endpoint_ca_and_mtls(env: AdminEnv) -> None:
    await env.call(
        "SetInsurer", pb.SetInsurerRequest(code=PUSH, endpoint_ca_pem=ca_pem(), endpoint_mtls=True)
    )
    entry = await env.call("SetInsurer", pb.SetInsurerRequest(code=PUSH, delivery="pull"))
    assert (entry.delivery, entry.endpoint, entry.endpoint_ca_set, entry.endpoint_mtls) == (
        "pull",
        "",
        False,
        False,
    )


BAD_SETS = [
    ("push_without_endpoint", pb.SetInsurerRequest(code=PULL, delivery="grpc"), "ENDPOINT_INVALID"),
    ("grpc_endpoint_as_webhook", pb.SetInsurerRequest(code=PUSH, delivery="webhook"), "ENDPOINT_INVALID"),
    (
        "http_webhook",
        pb.SetInsurerRequest(code=PULL, delivery="webhook", endpoint="http://x.example/c"),
        "ENDPOINT_INVALID",
    ),
    ("grpc_no_port", pb.SetInsurerRequest(code=PUSH, endpoint="push.example"), "ENDPOINT_INVALID"),
    ("pull_with_endpoint", pb.SetInsurerRequest(code=PULL, endpoint="pull.example:443"), "ENDPOINT_INVALID"),
    ("pull_with_ca", pb.SetInsurerRequest(code=PULL, endpoint_ca_pem=ca_pem()), "ENDPOINT_CA_INVALID"),
    ("ca_garbage", pb.SetInsurerRequest(code=PUSH, endpoint_ca_pem="not a pem"), "ENDPOINT_CA_INVALID"),
    ("delivery", pb.SetInsurerRequest(code=PUSH, delivery="carrier-pigeon"), "DELIVERY_MODE_INVALID"),
    ("code_format", pb.SetInsurerRequest(code="bad code", available=False), "INSURER_CODE_INVALID"),
]


@pytest.mark.parametrize(("request_", "reason"), [b[1:] for b in BAD_SETS], ids=[b[0] for b in BAD_SETS])
async def test_set_insurer_refusals_change_nothing(refusals: AdminEnv, request_: Any, reason: str) -> None:
    # Also: a refused switch to a push mode issues no endpoint key.
    await _refused(refusals, "SetInsurer", request_, grpc.StatusCode.INVALID_ARGUMENT, reason)


@pytest.mark.parametrize("code", ["NOSUCH", HOSPITAL])
async def test_set_unknown_insurer_is_not_found(refusals: AdminEnv, code: str) -> None:
    await _refused(
        refusals,
        "SetInsurer",
        pb.SetInsurerRequest(code=code, available=False),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_PRINCIPAL",
    )


# --- RotateEndpointKey ----------------------------------------------------------------
async def test_rotate_endpoint_key_replaces_it_at_once(env: AdminEnv) -> None:
    old = await env.registry.endpoint_key(PUSH)
    assert old is not None
    r = await env.call("RotateEndpointKey", pb.RotateEndpointKeyRequest(code=PUSH))
    new = await env.registry.endpoint_key(PUSH)
    assert new is not None and (new.key_id, new.secret) == (
        r.endpoint_key_id,
        b64url_decode(r.endpoint_secret),
    )
    assert new.key_id != old.key_id and new.secret != old.secret
    revoked = await env.pool.fetchval(
        "SELECT revoked_at FROM registry.endpoint_keys WHERE key_id = $1", old.key_id
    )
    assert revoked is not None


async def test_rotate_refusals_change_nothing(refusals: AdminEnv) -> None:
    await _refused(
        refusals,
        "RotateEndpointKey",
        pb.RotateEndpointKeyRequest(code="NOSUCH"),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_PRINCIPAL",
    )
    await _refused(
        refusals,
        "RotateEndpointKey",
        pb.RotateEndpointKeyRequest(code=PULL),
        grpc.StatusCode.FAILED_PRECONDITION,
        "DELIVERY_NOT_PUSH",
    )


# --- AddHospital ----------------------------------------------------------------------
async def test_add_hospital(env: AdminEnv) -> None:
    jwk = public_jwk("11002-enc-1")
    r = await env.call(
        "AddHospital",
        pb.AddHospitalRequest(code="11002", display_name="Udon Demo", encryption_public_jwk=json.dumps(jwk)),
    )
    assert r.code == "11002" and r.key_id.startswith("k-")
    key = await env.registry.signing_key("11002", r.key_id)
    assert key is not None and key.secret == b64url_decode(r.secret) and key.role == "hospital"
    entry = await env.call("GetRegistryEntry", pb.GetRegistryEntryRequest(code="11002"))
    assert (entry.role, entry.current_kid, list(entry.encryption_kids), entry.delivery, entry.health) == (
        "hospital",
        "11002-enc-1",
        ["11002-enc-1"],
        "",
        "",
    )


BAD_HOSPITALS = [
    ("code_short", {"code": "1100"}, grpc.StatusCode.INVALID_ARGUMENT, "HOSPITAL_CODE_INVALID"),
    ("code_letters", {"code": "AIA"}, grpc.StatusCode.INVALID_ARGUMENT, "HOSPITAL_CODE_INVALID"),
    (
        "jwk_private",
        {"encryption_public_jwk": json.dumps(private_jwk("h-1"))},
        grpc.StatusCode.INVALID_ARGUMENT,
        "JWK_PRIVATE",
    ),
    (
        "jwk_no_kid",
        {"encryption_public_jwk": json.dumps(_without(public_jwk("h"), "kid"))},
        grpc.StatusCode.INVALID_ARGUMENT,
        "JWK_INVALID",
    ),
    ("name", {"display_name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "NAME_INVALID"),
    ("exists", {"code": HOSPITAL}, grpc.StatusCode.ALREADY_EXISTS, "PRINCIPAL_EXISTS"),
]


@pytest.mark.parametrize(
    ("overrides", "code", "reason"), [b[1:] for b in BAD_HOSPITALS], ids=[b[0] for b in BAD_HOSPITALS]
)
async def test_add_hospital_refusals_change_nothing(
    refusals: AdminEnv, overrides: dict[str, Any], code: grpc.StatusCode, reason: str
) -> None:
    values = {
        "code": "11002",
        "display_name": "Udon Demo",
        "encryption_public_jwk": json.dumps(public_jwk("h-1")),
    }
    await _refused(refusals, "AddHospital", pb.AddHospitalRequest(**{**values, **overrides}), code, reason)


# --- GetRegistryEntry -----------------------------------------------------------------
async def test_registry_entry_of_an_insurer_with_health(env: AdminEnv) -> None:
    await env.registry.set_push_health(PUSH, "degraded", 2)
    entry = await env.call("GetRegistryEntry", pb.GetRegistryEntryRequest(code=PUSH))
    ek = await env.registry.endpoint_key(PUSH)
    assert ek is not None
    assert (entry.role, entry.line, entry.delivery, entry.endpoint, entry.health, entry.endpoint_key_id) == (
        "insurer",
        "life",
        "grpc",
        "push.example:443",
        "degraded",
        ek.key_id,
    )
    assert entry.current_kid == f"{PUSH}-seed" and not entry.endpoint_secret
    pull = await env.call("GetRegistryEntry", pb.GetRegistryEntryRequest(code=PULL))
    assert (pull.health, pull.endpoint_key_id, pull.line) == ("unknown", "", "non-life")


async def test_registry_entry_refusals(refusals: AdminEnv) -> None:
    await _refused(
        refusals,
        "GetRegistryEntry",
        pb.GetRegistryEntryRequest(code="NOSUCH"),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_PRINCIPAL",
    )
    await _refused(
        refusals,
        "GetRegistryEntry",
        pb.GetRegistryEntryRequest(code="no such"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CODE_INVALID",
    )


# --- deliveries -----------------------------------------------------------------------
async def test_list_deliveries_passes_the_filter_and_maps_rows(env: AdminEnv) -> None:
    at = dt.datetime(2026, 11, 26, 10, 0, 5, 250000, tzinfo=dt.UTC)
    env.deliveries.rows = [
        Row(TXN_A, PUSH, 3, "UNAVAILABLE", at, "waiting"),
        Row(TXN_B, PUSH, 40, "DEADLINE_EXCEEDED", None, "failed"),
    ]
    r = await env.call("ListDeliveries", pb.ListDeliveriesRequest(insurer_code=PUSH, state="waiting"))
    assert env.deliveries.list_calls == [(PUSH, "waiting", 100)]  # 0 = the default limit
    (d,) = r.deliveries
    assert (d.transaction_id, d.insurer_code, d.attempts, d.last_error, d.state) == (
        TXN_A,
        PUSH,
        3,
        "UNAVAILABLE",
        "waiting",
    )
    assert d.next_attempt_at.ToDatetime(tzinfo=dt.UTC) == at
    r = await env.call("ListDeliveries", pb.ListDeliveriesRequest(limit=1000))
    assert env.deliveries.list_calls[-1] == ("", "", 1000) and len(r.deliveries) == 2
    assert not r.deliveries[1].HasField("next_attempt_at")


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (pb.ListDeliveriesRequest(state="taken"), "STATE_INVALID"),
        (pb.ListDeliveriesRequest(limit=1001), "LIMIT_INVALID"),
        (pb.ListDeliveriesRequest(limit=-1), "LIMIT_INVALID"),
        (pb.ListDeliveriesRequest(insurer_code="bad code"), "INSURER_CODE_INVALID"),
    ],
    ids=["state", "limit_high", "limit_negative", "insurer"],
)
async def test_list_deliveries_refusals_never_reach_the_delivery_layer(
    refusals: AdminEnv, request_: Any, reason: str
) -> None:
    await _refused(refusals, "ListDeliveries", request_, grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert refusals.deliveries.list_calls == []


async def test_redrive_passes_unique_ids_and_returns_the_redriven(env: AdminEnv) -> None:
    env.deliveries.failed = {TXN_A}
    r = await env.call(
        "RedriveDeliveries", pb.RedriveDeliveriesRequest(transaction_ids=[TXN_A, TXN_B, TXN_A])
    )
    assert list(r.redriven) == [TXN_A]
    assert env.deliveries.redrive_calls == [[TXN_A, TXN_B]]


@pytest.mark.parametrize(
    ("ids", "reason"),
    [
        ([], "TRANSACTION_ID_INVALID"),
        (["txn_xyz"], "TRANSACTION_ID_INVALID"),
        ([TXN_A] * 1001, "TOO_MANY_TRANSACTION_IDS"),
    ],
    ids=["none", "malformed", "too_many"],
)
async def test_redrive_refusals_never_reach_the_delivery_layer(
    refusals: AdminEnv, ids: list[str], reason: str
) -> None:
    await _refused(
        refusals,
        "RedriveDeliveries",
        pb.RedriveDeliveriesRequest(transaction_ids=ids),
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
    )
    assert refusals.deliveries.redrive_calls == []


# --- the bearer token -----------------------------------------------------------------
VALID_CALLS = [
    ("AddInsurer", _add()),
    ("SetInsurer", pb.SetInsurerRequest(code=PUSH, available=False)),
    ("RotateEndpointKey", pb.RotateEndpointKeyRequest(code=PUSH)),
    (
        "AddHospital",
        pb.AddHospitalRequest(
            code="11002", display_name="H", encryption_public_jwk=json.dumps(public_jwk("h"))
        ),
    ),
    ("GetRegistryEntry", pb.GetRegistryEntryRequest(code=PUSH)),
    ("ListDeliveries", pb.ListDeliveriesRequest()),
    ("RedriveDeliveries", pb.RedriveDeliveriesRequest(transaction_ids=[TXN_A])),
]
BAD_TOKENS = [None, "", "wrong-" + TOKEN, TOKEN[:-1], TOKEN + " "]


@pytest.mark.parametrize(("method", "request_"), VALID_CALLS, ids=[c[0] for c in VALID_CALLS])
async def test_every_rpc_needs_the_token(env: AdminEnv, method: str, request_: Any) -> None:
    before = await env.snapshot()
    with capture_logs() as logs:
        for token in BAD_TOKENS:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await env.call(method, request_, token=token)
            assert (info.value.code(), _reason(info.value)) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "ADMIN_TOKEN_INVALID",
            )
        # Another scheme with the right token is no bearer token.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await getattr(env.stub, method)(
                request_, metadata=(("authorization", f"Basic {TOKEN}"),), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await env.snapshot() == before
    assert env.deliveries.list_calls == [] and env.deliveries.redrive_calls == []
    assert TOKEN not in repr(logs) and "wrong-" not in repr(logs)
    # …and with the token the same call goes through.
    await env.call(method, request_)


async def test_the_token_never_reaches_a_log_line(env: AdminEnv) -> None:
    with capture_logs() as logs:
        await env.call("GetRegistryEntry", pb.GetRegistryEntryRequest(code=PUSH))
        with pytest.raises(grpc.aio.AioRpcError):
            await env.call("GetRegistryEntry", pb.GetRegistryEntryRequest(code="NOSUCH"))
    assert logs and TOKEN not in repr(logs)
