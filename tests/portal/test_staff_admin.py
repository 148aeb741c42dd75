"""Staff administration against a served portal on real PostgreSQL: an admin
changes roles and disables accounts; a disabled member's sessions end at once
and the name stays taken; the portal never loses its last admin, not even when
two admins demote each other at the same moment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx

from iclaim_portal.db import SCHEMA
from tests.portal.conftest import csrf_of, sign_in
from tests.portal.support import ADMIN, RunningPortal


@asynccontextmanager
async def client(portal: RunningPortal) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=portal.url, headers={"Origin": portal.url}, timeout=10) as c:
        yield c


async def add(admin: httpx.AsyncClient, username: str, role: str, password: str) -> None:
    token = await csrf_of(admin, "/staff")
    resp = await admin.post(
        "/staff", data={"username": username, "role": role, "password": password, "csrf_token": token}
    )
    assert resp.status_code == 303, resp.text


async def post(c: httpx.AsyncClient, path: str, **data: str) -> httpx.Response:
    token = await csrf_of(c, "/actions")
    return await c.post(path, data={**data, "csrf_token": token})


async def test_role_changes_take_effect_on_the_next_request(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    await sign_in(browser_like, portal.password)
    await add(browser_like, "malee", "viewer", "malee-password-1")
    async with client(portal) as malee:
        assert (await sign_in(malee, "malee-password-1", username="malee")).status_code == 303
        assert (await malee.get("/staff")).status_code == 403
        # a viewer cannot change roles, not even its own
        assert (await post(malee, "/staff/malee/role", role="admin")).status_code == 403

        assert (await post(browser_like, "/staff/malee/role", role="admin")).status_code == 303
        assert (await malee.get("/staff")).status_code == 200  # same session, new role
        assert (await post(browser_like, "/staff/malee/role", role="viewer")).status_code == 303
        assert (await malee.get("/staff")).status_code == 403
        refused = await post(browser_like, "/staff/malee/role", role="owner")
        assert refused.status_code == 422 and 'role="alert"' in refused.text
        missing = await post(browser_like, "/staff/nobody/role", role="clerk")
        assert missing.status_code == 409 and 'role="alert"' in missing.text
    log = (await browser_like.get("/actions")).text
    assert "staff_role_changed" in log


async def test_a_disabled_member_is_signed_out_at_once_and_cannot_sign_in(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    await sign_in(browser_like, portal.password)
    await add(browser_like, "somchai", "clerk", "somchai-password-1")
    async with client(portal) as somchai:
        assert (await sign_in(somchai, "somchai-password-1", username="somchai")).status_code == 303
        assert (await somchai.get("/actions")).status_code == 200

        assert (await post(browser_like, "/staff/somchai/disable")).status_code == 303
        assert (await somchai.get("/actions")).status_code == 303  # to /signin: the session ended
        assert (await sign_in(somchai, "somchai-password-1", username="somchai")).status_code == 401
    staff_page = (await browser_like.get("/staff")).text
    assert "somchai" not in staff_page
    # the name stays taken: the staff log still refers to it
    token = await csrf_of(browser_like, "/staff")
    again = await browser_like.post(
        "/staff",
        data={"username": "somchai", "role": "clerk", "password": "another-password-1", "csrf_token": token},
    )
    assert again.status_code == 409
    assert "staff_disabled" in (await browser_like.get("/actions")).text


async def test_the_last_admin_stays_an_admin(portal: RunningPortal, browser_like: httpx.AsyncClient) -> None:
    await sign_in(browser_like, portal.password)
    own = await post(browser_like, f"/staff/{ADMIN}/disable")
    assert own.status_code == 409 and 'role="alert"' in own.text
    demoted = await post(browser_like, f"/staff/{ADMIN}/role", role="clerk")
    assert demoted.status_code == 409 and 'role="alert"' in demoted.text
    assert (await browser_like.get("/staff")).status_code == 200  # still an admin

    # With a second admin, either may step down, but not both at once.
    await add(browser_like, "nok", "admin", "nok-password-123")
    async with client(portal) as nok:
        await sign_in(nok, "nok-password-123", username="nok")
        first, second = await asyncio.gather(
            post(browser_like, "/staff/nok/role", role="viewer"),
            post(nok, f"/staff/{ADMIN}/role", role="viewer"),
        )
        # one steps down; the other is refused as the last admin (409), or, if
        # it came after, as no longer an admin (403)
        codes = sorted([first.status_code, second.status_code])
        assert codes in ([303, 403], [303, 409]), codes
    conn = await asyncpg.connect(portal.config.database_url)
    try:
        admins = await conn.fetchval(
            f"SELECT count(*) FROM {SCHEMA}.staff WHERE role = 'admin' AND disabled_at IS NULL"
        )
    finally:
        await conn.close()
    assert admins == 1
