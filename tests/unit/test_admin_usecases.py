"""The admin use cases' write order, with a recording fake registry: an insurer
is written closed and opened by the last write, so a stop half-way shows no
half-made insurer, and adding it again completes it; a refused request writes
nothing at all."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from iclaim.crypto.envelope import generate_encryption_key
from iclaim.errors import IclaimError
from iclaim_hub.registry.model import Principal
from services.insurer_adapter.admin_usecases import InsurerChange, NewInsurer, RegistryAdmin

WRITES = {
    "upsert_principal",
    "rotate_signing_key",
    "add_encryption_key",
    "set_endpoint",
    "issue_endpoint_key",
}


@dataclass(frozen=True)
class Key:
    key_id: str
    secret: bytes


class Crash(Exception):
    pass


@dataclass
class FakeRegistry:
    principals: dict[str, Principal] = field(default_factory=dict)
    signing: dict[str, list[str]] = field(default_factory=dict)
    endpoint_keys: dict[str, Key] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    crash_on: str = ""

    def _write(self, name: str) -> None:
        self.calls.append(name)
        if name == self.crash_on:
            self.crash_on = ""
            raise Crash(name)

    async def principal(self, code: str, /) -> Principal | None:
        return self.principals.get(code)

    async def active_signing_key_ids(self, code: str, /) -> list[str]:
        return self.signing.get(code, [])

    async def upsert_principal(self, p: Principal, /) -> None:
        self._write("upsert_principal")
        self.principals[p.code] = p

    async def rotate_signing_key(self, code: str, new_key_id: str, secret: bytes, /) -> None:
        self._write("rotate_signing_key")
        self.signing.setdefault(code, []).append(new_key_id)

    async def add_encryption_key(self, code: str, kid: str, public_jwk: dict[str, object], /) -> None:
        self._write("add_encryption_key")

    async def set_endpoint(self, code: str, /, **changes: Any) -> object:
        self._write("set_endpoint")
        fields = {"delivery_mode", "endpoint", "endpoint_ca_pem", "endpoint_mtls", "available"}
        p = replace(
            self.principals[code], **{k: v for k, v in changes.items() if k in fields and v is not None}
        )
        self.principals[code] = p
        return p

    async def issue_endpoint_key(self, code: str, /) -> Key:
        self._write("issue_endpoint_key")
        self.endpoint_keys[code] = Key(f"ep-{len(self.calls)}", b"s" * 32)
        return self.endpoint_keys[code]

    async def endpoint_key(self, code: str, /) -> Key | None:
        return self.endpoint_keys.get(code)

    async def health(self, code: str, /) -> None:
        return None


def _new(**kw: Any) -> NewInsurer:
    values: dict[str, Any] = {
        "code": "NEWCO",
        "display_name": "New Co",
        "line": "life",
        "delivery": "grpc",
        "endpoint": "newco.example:443",
        "endpoint_ca_pem": "",
        "encryption_public_jwk": json.dumps(generate_encryption_key("NEWCO-1")[1]),
    }
    values.update(kw)
    return NewInsurer(**values)


async def test_an_insurer_is_written_closed_and_opened_last() -> None:
    reg = FakeRegistry()
    await RegistryAdmin(reg).add_insurer(_new())
    assert reg.calls == [
        "upsert_principal",
        "add_encryption_key",
        "issue_endpoint_key",
        "rotate_signing_key",
        "set_endpoint",
    ]
    assert reg.principals["NEWCO"].available


@pytest.mark.parametrize("step", ["add_encryption_key", "issue_endpoint_key", "rotate_signing_key"])
async def test_a_stop_half_way_leaves_it_closed_and_adding_again_completes_it(step: str) -> None:
    reg = FakeRegistry(crash_on=step)
    admin = RegistryAdmin(reg)
    with pytest.raises(Crash):
        await admin.add_insurer(_new())
    assert not reg.principals["NEWCO"].available  # nobody routes to it
    enrolled = await admin.add_insurer(_new())
    assert reg.principals["NEWCO"].available and enrolled.endpoint_key_id


async def test_a_switch_to_push_gets_its_key_before_the_switch() -> None:
    reg = FakeRegistry(
        principals={"PULLCO": Principal("PULLCO", "insurer", "P", line=2, delivery_mode="pull")}
    )
    reg.signing["PULLCO"] = ["k-1"]
    view = await RegistryAdmin(reg).set_insurer(
        InsurerChange("PULLCO", delivery="grpc", endpoint="p.example:1")
    )
    assert reg.calls == ["issue_endpoint_key", "set_endpoint"] and view.endpoint_secret == b"s" * 32


@pytest.mark.parametrize(
    "change",
    [
        InsurerChange("PULLCO", delivery="grpc"),
        InsurerChange("PULLCO", delivery="webhook", endpoint="http://p.example/c"),
        InsurerChange("PULLCO", endpoint_ca_pem="junk"),
    ],
)
async def test_a_refused_change_writes_nothing(change: InsurerChange) -> None:
    reg = FakeRegistry(
        principals={"PULLCO": Principal("PULLCO", "insurer", "P", line=2, delivery_mode="pull")}
    )
    with pytest.raises(IclaimError):
        await RegistryAdmin(reg).set_insurer(change)
    assert not WRITES & set(reg.calls)


async def test_a_change_that_changes_nothing_writes_nothing() -> None:
    reg = FakeRegistry(
        principals={"PULLCO": Principal("PULLCO", "insurer", "P", line=2, delivery_mode="pull")}
    )
    await RegistryAdmin(reg).set_insurer(InsurerChange("PULLCO", available=True, delivery="pull"))
    assert reg.calls == []
