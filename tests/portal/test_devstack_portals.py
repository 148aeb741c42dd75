"""`make run` starts a portal for the first dev hospital and one for TESTPULL,
and says where they are and how to sign in."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from iclaim_ops.devstack.stack import free_ports
from iclaim_ops.devstack.portals import portal_database, start_portals
from tests.portal.conftest import sign_in
from tests.support.databases import drop_db
from tests.support.stack import RunningStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_portals_start_sign_in_and_stop(stack: RunningStack, tmp_path: Path) -> None:
    ports = tuple(free_ports(2))
    prefix = f"iclaim_test_portal_{secrets.token_hex(4)}"
    portals = await start_portals(tmp_path, stack.database_url, stack.credentials_path, ports, prefix)
    try:
        hospital = stack.creds().code
        assert list(portals.urls) == [hospital, "TESTPULL"]
        line = portals.describe()
        assert f"{hospital} http://localhost:{ports[0]}" in line and portals.password in line
        for url, landing in ((portals.urls[hospital], "/claims"), (portals.urls["TESTPULL"], "/queue")):
            async with httpx.AsyncClient(base_url=url, headers={"Origin": url}, timeout=20) as client:
                signed_in = await sign_in(client, portals.password)
                assert signed_in.status_code == 303
                home = await client.get("/", follow_redirects=True)
                assert home.status_code == 200 and home.url.path == landing
        # kept for the next run (the admin is created once per database), readable by its owner only
        assert (tmp_path / "portals.json").stat().st_mode & 0o777 == 0o600
    finally:
        await portals.stop()
        for code in portals.urls:
            await drop_db(portal_database(prefix, code))
    assert all(p.returncode is not None for p in portals.procs)
