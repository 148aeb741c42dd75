"""A renewed gateway certificate is served without a restart: the real Envoy
(python -m gateway.envoy) reads its certificate through file-based SDS and reads
the pair again when the mounted directory is swapped the way the kubelet updates
a Secret volume (a new timestamped directory, then `..data` renamed over).
Static tls_certificates would keep serving the old one until it expired."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
from pathlib import Path

import pytest

from gateway.tls import ensure_dev_tls
from tests.support.gateway import recording_gateway

pytestmark = pytest.mark.integration


def _mount_version(mount: Path, name: str, source: Path) -> None:
    """Writes a Secret version as the kubelet's atomic writer does: files in a
    new directory, a temporary `..data` link to it, renamed over the old one."""
    version = mount / name
    version.mkdir()
    shutil.copy(source / "tls" / "server.pem", version / "tls.crt")
    shutil.copy(source / "tls" / "server-key.pem", version / "tls.key")
    (mount / "..data_tmp").symlink_to(name)
    os.replace(mount / "..data_tmp", mount / "..data")
    for f in ("tls.crt", "tls.key"):
        if not (mount / f).is_symlink():
            (mount / f).symlink_to(f"..data/{f}")


async def _served_certificate(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # which certificate, not whether it is trusted
    ctx.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert der is not None
        return bytes(der)
    finally:
        writer.close()


def _der(source: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert((source / "tls" / "server.pem").read_text())


async def test_a_renewed_secret_is_served_without_a_restart(tmp_path: Path) -> None:
    state, old, new, mount = (tmp_path / n for n in ("state", "old", "new", "mount"))
    for d in (state, old, new):
        ensure_dev_tls(d)  # state's: the CA file the harness reads; old/new: two different certificates
    mount.mkdir()
    _mount_version(mount, "..2026_11_29_01", old)
    env = {
        "ICLAIM_GATEWAY_TLS_CERT": str(mount / "tls.crt"),
        "ICLAIM_GATEWAY_TLS_KEY": str(mount / "tls.key"),
    }
    async with recording_gateway(state, env) as gw:
        assert await _served_certificate(gw.port) == _der(old)
        _mount_version(mount, "..2026_11_29_02", new)
        served = await _served_certificate(gw.port)
        for _ in range(100):  # Envoy's reload is asynchronous: up to 10 s
            if served == _der(new):
                break
            await asyncio.sleep(0.1)
            served = await _served_certificate(gw.port)
        assert served == _der(new)
