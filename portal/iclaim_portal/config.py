"""The portal's configuration, built once from the environment and checked
before anything binds."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from iclaim.client.credentials import Credentials, load_dev_credentials
from iclaim.insurer.credentials import load_insurer_credentials

HOSPITAL = "hospital"
INSURER = "insurer"


@dataclass(frozen=True)
class Config:
    side: str  # HOSPITAL | INSURER: which participant this portal serves
    credentials: Credentials
    database_url: str
    origin: str  # the public origin, e.g. https://portal.example.ac.th
    host: str
    port: int
    bootstrap_admin: str | None = None  # created at start when there is no staff yet
    bootstrap_password: str | None = None

    @property
    def secure_cookies(self) -> bool:
        return self.origin.startswith("https://")

    @property
    def rp_id(self) -> str:
        return urlsplit(self.origin).hostname or "localhost"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Config:
        e = dict(os.environ if env is None else env)
        creds_path = Path(_required(e, "ICLAIM_PORTAL_CREDENTIALS"))
        code = _required(e, "ICLAIM_PORTAL_CODE")
        addr = e.get("ICLAIM_PORTAL_ADDR", "127.0.0.1:8600")
        host, _, port = addr.rpartition(":")
        origin = e.get("ICLAIM_PORTAL_ORIGIN", f"http://{addr}").rstrip("/")
        if urlsplit(origin).scheme not in ("http", "https"):
            raise ValueError("ICLAIM_PORTAL_ORIGIN must be an http(s) origin")
        return cls(
            side=side_of(creds_path, code),
            credentials=load_credentials(creds_path, code),
            database_url=_required(e, "ICLAIM_PORTAL_DATABASE_URL"),
            origin=origin,
            host=host,
            port=int(port),
            bootstrap_admin=e.get("ICLAIM_PORTAL_BOOTSTRAP_ADMIN") or None,
            bootstrap_password=e.get("ICLAIM_PORTAL_BOOTSTRAP_PASSWORD") or None,
        )


def load_credentials(path: Path, code: str) -> Credentials:
    """A hospital's credentials, or an insurer's with what its kit needs to open
    claims (previous decryption keys too)."""
    if side_of(path, code) == INSURER:
        return load_insurer_credentials(path, code)
    return load_dev_credentials(code, path)


def side_of(credentials_path: Path, code: str) -> str:
    """A code listed under "hospitals" is a hospital, under "insurers" an insurer."""
    data = json.loads(credentials_path.read_text())
    if any(h["code"] == code for h in data.get("hospitals", [])):
        return HOSPITAL
    if any(i["code"] == code for i in data.get("insurers", [])):
        return INSURER
    raise ValueError(f"no credentials for {code} in {credentials_path}")


def _required(env: dict[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise ValueError(f"{name} is required")
    return value
