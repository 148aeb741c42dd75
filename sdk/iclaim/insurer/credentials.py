"""An insurer's credentials for the kit: how to call the gateway, how to open
claims, how to verify pushes (docs/protocol.md §10.1), how to serve TLS.

File format (JSON; secrets base64url without padding; relative paths are read
relative to the file's own folder):

    {
      "gateway": "127.0.0.1:8443",              # the clearinghouse gateway
      "ca_cert": "ca.pem",                      # CA of the gateway (optional: system roots)
      "tls_cert": "server.pem",                 # this endpoint's server certificate (push modes)
      "tls_key": "server-key.pem",
      "tls_client_ca": "hub-client-ca.pem",     # optional: require the hub's client cert (mTLS)
      "insurers": [
        {"code": "AIA",
         "key_id": "...", "secret": "...",      # the insurer's own signing key (§3)
         "encryption_private_jwk": {...},       # opens claims sealed to the insurer (§4)
         "previous_encryption_private_jwks": [{...}],   # optional, during a key rotation
         "endpoint_key_id": "ep-...", "endpoint_secret": "..."}   # verifies pushes (§10.1);
      ]                                                             # absent for pull-only
    }

`tls_cert` / `tls_key` / `tls_client_ca` may also be given per insurer entry,
which then wins over the top-level value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iclaim.client.credentials import Credentials
from iclaim.crypto.signing import KEY_ID_RE, SECRET_BYTES, b64url_decode

INSURER_CODE_RE = re.compile(r"^[A-Z0-9_]{2,16}$")


class CredentialsError(ValueError):
    """The credentials file is unreadable or incomplete; the message names the field."""


@dataclass(frozen=True)
class InsurerCredentials(Credentials):
    """An insurer's gateway credentials, plus what its push receiver needs."""

    endpoint_key_id: str = ""
    endpoint_secret: bytes = b""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    previous_encryption_private_jwks: tuple[dict[str, Any], ...] = field(default=())

    def client_credentials(self) -> Credentials:
        """What `iclaim.client.insurer.InsurerClient` needs to call the gateway:
        these credentials are that already."""
        return self

    @property
    def decryption_jwks(self) -> tuple[dict[str, Any], ...]:
        return (self.encryption_private_jwk, *self.previous_encryption_private_jwks)

    def __repr__(self) -> str:  # never print secrets or private keys
        return f"InsurerCredentials(code={self.code!r}, gateway={self.gateway!r})"


def _str(obj: Mapping[str, Any], name: str, where: str, *, required: bool = True) -> str:
    value = obj.get(name, "")
    if not isinstance(value, str) or (required and not value):
        raise CredentialsError(f"{where}: {name} must be a non-empty string")
    return value


def _secret(obj: Mapping[str, Any], name: str, where: str) -> bytes:
    text = _str(obj, name, where)
    try:
        raw = b64url_decode(text)
    except ValueError:
        raise CredentialsError(f"{where}: {name} is not base64url") from None
    if len(raw) != SECRET_BYTES:
        raise CredentialsError(f"{where}: {name} must be {SECRET_BYTES} bytes")
    return raw


def _path(base: Path, value: Any, name: str) -> Path | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise CredentialsError(f"{name} must be a path string")
    p = Path(value)
    return p if p.is_absolute() else base / p


def _jwk(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value.get("kty") or "d" not in value:
        raise CredentialsError(f"{where}: a private JWK object (with kty and d) is needed")
    return dict(value)


def _entry(data: Mapping[str, Any], entry: Any, base: Path) -> InsurerCredentials:
    if not isinstance(entry, dict):
        raise CredentialsError("insurers: each entry must be an object")
    code = _str(entry, "code", "insurer")
    if not INSURER_CODE_RE.fullmatch(code):
        raise CredentialsError("insurer: code must be 2-16 chars of [A-Z0-9_]")
    where = f"insurer {code}"
    key_id = _str(entry, "key_id", where)
    if not KEY_ID_RE.fullmatch(key_id):
        raise CredentialsError(f"{where}: key_id is malformed")
    endpoint_key_id = _str(entry, "endpoint_key_id", where, required=False)
    endpoint_secret = b""
    if endpoint_key_id:
        if not KEY_ID_RE.fullmatch(endpoint_key_id):
            raise CredentialsError(f"{where}: endpoint_key_id is malformed")
        endpoint_secret = _secret(entry, "endpoint_secret", where)
    previous = entry.get("previous_encryption_private_jwks", [])
    if not isinstance(previous, list):
        raise CredentialsError(f"{where}: previous_encryption_private_jwks must be a list")

    def tls(name: str) -> Path | None:
        return _path(base, entry.get(name, data.get(name)), name)

    return InsurerCredentials(
        code=code,
        gateway=_str(data, "gateway", "credentials"),
        ca_cert=_path(base, data.get("ca_cert"), "ca_cert"),
        key_id=key_id,
        secret=_secret(entry, "secret", where),
        encryption_private_jwk=_jwk(entry.get("encryption_private_jwk"), where),
        endpoint_key_id=endpoint_key_id,
        endpoint_secret=endpoint_secret,
        tls_cert=tls("tls_cert"),
        tls_key=tls("tls_key"),
        tls_client_ca=tls("tls_client_ca"),
        previous_encryption_private_jwks=tuple(_jwk(j, where) for j in previous),
    )


def load_all_insurer_credentials(path: Path) -> list[InsurerCredentials]:
    """Every insurer in the file, in file order."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise CredentialsError(f"{path} is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("insurers"), list) or not data["insurers"]:
        raise CredentialsError(f"{path}: an object with a non-empty insurers list is needed")
    base = Path(path).resolve().parent
    out = [_entry(data, e, base) for e in data["insurers"]]
    codes = [c.code for c in out]
    if len(set(codes)) != len(codes):
        raise CredentialsError(f"{path}: an insurer code appears twice")
    return out


def load_insurer_credentials(path: Path, code: str | None = None) -> InsurerCredentials:
    """One insurer of the file: `code`, or the only one when `code` is None."""
    return select(load_all_insurer_credentials(path), code)


def select(insurers: Sequence[InsurerCredentials], code: str | None) -> InsurerCredentials:
    if code is None:
        if len(insurers) != 1:
            raise CredentialsError("the file holds several insurers; name one")
        return insurers[0]
    for ins in insurers:
        if ins.code == code:
            return ins
    raise CredentialsError(f"no insurer {code} in the credentials file")
