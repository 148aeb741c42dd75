"""The kit's credentials file: what it holds, and clear errors when it does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iclaim.crypto.envelope import generate_encryption_key
from iclaim.crypto.signing import b64url
from iclaim.insurer.credentials import (
    CredentialsError,
    load_all_insurer_credentials,
    load_insurer_credentials,
)

PRIV, _ = generate_encryption_key("AIA-k1")
OLD_PRIV, _ = generate_encryption_key("AIA-k0")


def _entry(code: str = "AIA", **over: Any) -> dict[str, Any]:
    entry = {
        "code": code,
        "key_id": "aia-k1",
        "secret": b64url(b"\x01" * 32),
        "encryption_private_jwk": PRIV,
        "endpoint_key_id": "ep-0a0b",
        "endpoint_secret": b64url(b"\x02" * 32),
    }
    entry.update(over)
    return {k: v for k, v in entry.items() if v is not None}


def _write(tmp_path: Path, insurers: list[dict[str, Any]], **top: Any) -> Path:
    data = {"gateway": "gw.example:8443", "ca_cert": "ca.pem", "insurers": insurers, **top}
    path = tmp_path / "creds.json"
    path.write_text(json.dumps(data))
    return path


def test_loads_every_field_and_resolves_paths_next_to_the_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [_entry(previous_encryption_private_jwks=[OLD_PRIV])],
        tls_cert="tls/server.pem",
        tls_key="/abs/server-key.pem",
    )
    c = load_insurer_credentials(path)
    assert (c.code, c.gateway, c.key_id, c.secret) == ("AIA", "gw.example:8443", "aia-k1", b"\x01" * 32)
    assert c.ca_cert == tmp_path / "ca.pem"
    assert c.tls_cert == tmp_path / "tls/server.pem" and c.tls_key == Path("/abs/server-key.pem")
    assert c.tls_client_ca is None
    assert (c.endpoint_key_id, c.endpoint_secret) == ("ep-0a0b", b"\x02" * 32)
    assert c.encryption_private_jwk == PRIV
    assert [j["kid"] for j in c.decryption_jwks] == ["AIA-k1", "AIA-k0"]
    client = c.client_credentials()
    assert (client.code, client.key_id, client.secret, client.gateway) == (
        "AIA",
        "aia-k1",
        b"\x01" * 32,
        c.gateway,
    )
    assert "secret" not in repr(c) and PRIV["d"] not in repr(c)


def test_a_pull_insurer_needs_no_endpoint_key_and_entries_may_override_tls(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [_entry(), _entry("TESTPULL", endpoint_key_id=None, endpoint_secret=None, tls_cert="own.pem")],
        tls_cert="shared.pem",
    )
    aia, pull = load_all_insurer_credentials(path)
    assert (pull.endpoint_key_id, pull.endpoint_secret) == ("", b"")
    assert (aia.tls_cert, pull.tls_cert) == (tmp_path / "shared.pem", tmp_path / "own.pem")
    assert load_insurer_credentials(path, "TESTPULL").code == "TESTPULL"


@pytest.mark.parametrize(
    ("insurers", "message"),
    [
        ([], "non-empty insurers"),
        ([_entry(code="aia")], "code must be"),
        ([_entry(secret="AQID")], "secret must be 32 bytes"),
        ([_entry(secret="not base64!")], "secret is not base64url"),
        ([_entry(endpoint_secret=None)], "endpoint_secret must be"),
        ([_entry(encryption_private_jwk={"kty": "OKP", "x": "abc"})], "private JWK"),
        ([_entry(key_id="bad key id")], "key_id is malformed"),
        ([_entry(), _entry()], "appears twice"),
    ],
)
def test_a_broken_file_says_what_is_wrong(
    tmp_path: Path, insurers: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(CredentialsError, match=message):
        load_all_insurer_credentials(_write(tmp_path, insurers))


def test_choosing_an_insurer(tmp_path: Path) -> None:
    path = _write(tmp_path, [_entry(), _entry("MTL")])
    with pytest.raises(CredentialsError, match="several insurers"):
        load_insurer_credentials(path)
    with pytest.raises(CredentialsError, match="no insurer BKI"):
        load_insurer_credentials(path, "BKI")


def test_unreadable_or_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="cannot read"):
        load_all_insurer_credentials(tmp_path / "absent.json")
    (tmp_path / "x.json").write_text("{nope")
    with pytest.raises(CredentialsError, match="not JSON"):
        load_all_insurer_credentials(tmp_path / "x.json")
