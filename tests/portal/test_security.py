"""Sign-in, sessions, CSRF and Origin against a served portal on real
PostgreSQL: what a browser (or an attacker's page) would see."""

from __future__ import annotations

import asyncpg
import httpx

from iclaim_portal.security import session_cookie
from tests.portal.conftest import csrf_of, sign_in
from tests.portal.support import RunningPortal


def set_cookie(resp: httpx.Response) -> str:
    return resp.headers.get("set-cookie", "")


async def test_first_visit_gets_a_strict_httponly_session_cookie(browser_like: httpx.AsyncClient) -> None:
    resp = await browser_like.get("/signin")
    assert resp.status_code == 200
    cookie = set_cookie(resp)
    assert cookie.startswith("iclaim-portal=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    # plain-http loopback origin: Secure would make the browser drop the cookie
    assert "Secure" not in cookie


async def test_password_sign_in_rotates_the_session_and_opens_pages(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    assert (await browser_like.get("/actions")).status_code == 303  # to /signin
    before = browser_like.cookies.get("iclaim-portal")
    resp = await sign_in(browser_like, portal.password)
    assert resp.status_code == 303, resp.text
    after = browser_like.cookies.get("iclaim-portal")
    assert before and after and before != after
    page = await browser_like.get("/actions")
    assert page.status_code == 200
    assert "signin" in page.text  # the staff log shows the sign-in


async def test_wrong_password_is_refused_and_logged(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    resp = await sign_in(browser_like, "not-" + portal.password)
    assert resp.status_code == 401
    assert 'role="alert"' in resp.text
    assert (await browser_like.get("/actions")).status_code == 303
    conn = await asyncpg.connect(portal.config.database_url)
    try:
        rows = await conn.fetch("SELECT action, subject FROM portal.staff_actions")
    finally:
        await conn.close()
    assert [(r["action"], r["subject"]) for r in rows] == [("signin_failed", "admin")]


async def test_form_without_its_csrf_token_is_refused(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    await csrf_of(browser_like)
    resp = await browser_like.post("/signin", data={"username": "admin", "password": portal.password})
    assert resp.status_code == 403
    resp = await browser_like.post(
        "/signin", data={"username": "admin", "password": portal.password, "csrf_token": "forged"}
    )
    assert resp.status_code == 403
    assert "expired" in resp.text


async def test_csrf_token_of_another_session_is_refused(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=portal.url, headers={"Origin": portal.url}) as other:
        theirs = await csrf_of(other)
    await csrf_of(browser_like)
    resp = await browser_like.post(
        "/signin", data={"username": "admin", "password": portal.password, "csrf_token": theirs}
    )
    assert resp.status_code == 403


async def test_htmx_header_token_is_accepted_for_unsafe_requests(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    await sign_in(browser_like, portal.password)
    token = await csrf_of(browser_like, "/actions")  # the sign-out form carries it
    refused = await browser_like.post("/signout")
    assert refused.status_code == 403
    resp = await browser_like.post("/signout", headers={"X-CSRF-Token": token})
    assert resp.status_code == 303
    assert "Max-Age=0" in set_cookie(resp)
    assert (await browser_like.get("/actions")).status_code == 303


async def test_cross_origin_post_is_refused_even_with_a_valid_token(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    token = await csrf_of(browser_like)
    form = {"username": "admin", "password": portal.password, "csrf_token": token}
    evil = await browser_like.post("/signin", data=form, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    assert "did not come from this portal" in evil.text
    # without Origin (httpx merges the client's headers, so it is removed from the built request)
    req = browser_like.build_request("POST", "/signin", data=form)
    del req.headers["Origin"]
    refused = await browser_like.send(req)
    assert refused.status_code == 403
    req = browser_like.build_request("POST", "/signin", data=form)
    del req.headers["Origin"]
    req.headers["Referer"] = portal.url + "/signin"
    ok = await browser_like.send(req)
    assert ok.status_code == 303, ok.text  # a Referer of ours is enough


async def test_oversized_body_is_refused_with_a_message(browser_like: httpx.AsyncClient) -> None:
    token = await csrf_of(browser_like)
    resp = await browser_like.post(
        "/signin",
        files={"fhir_file": ("big.json", b"x" * (10 * 1024 * 1024), "application/json")},
        data={"csrf_token": token},
    )
    assert resp.status_code == 413
    assert "too large" in resp.text


async def test_next_after_sign_in_stays_on_this_portal(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    token = await csrf_of(browser_like)
    resp = await browser_like.post(
        "/signin",
        data={
            "username": "admin",
            "password": portal.password,
            "next": "//evil.example/x",
            "csrf_token": token,
        },
    )
    assert resp.status_code == 303
    assert resp.headers["location"] == "/"


def test_https_portals_use_a_host_only_secure_cookie() -> None:
    cookie = session_cookie("tok", secure=True)
    assert cookie.startswith("__Host-iclaim-portal=tok;")
    assert {"Secure", "HttpOnly", "SameSite=Strict", "Path=/"} <= set(cookie.split("; "))
    assert "Domain" not in cookie


async def test_admin_adds_staff_and_a_viewer_may_look_but_not_act(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    await sign_in(browser_like, portal.password)
    token = await csrf_of(browser_like, "/staff")
    viewer_password = "viewer-password-1"
    short = await browser_like.post(
        "/staff", data={"username": "somsri", "role": "viewer", "password": "short", "csrf_token": token}
    )
    assert short.status_code == 422 and 'role="alert"' in short.text
    added = await browser_like.post(
        "/staff",
        data={"username": "somsri", "role": "viewer", "password": viewer_password, "csrf_token": token},
    )
    assert added.status_code == 303
    assert "somsri" in (await browser_like.get("/staff")).text

    async with httpx.AsyncClient(base_url=portal.url, headers={"Origin": portal.url}) as viewer:
        assert (await sign_in(viewer, viewer_password, username="somsri")).status_code == 303
        assert (await viewer.get("/actions")).status_code == 200
        assert (await viewer.get("/claims/new")).status_code == 403
        assert (await viewer.get("/staff")).status_code == 403
        token = await csrf_of(viewer, "/actions")
        refused = await viewer.post(
            "/staff", data={"username": "x", "role": "admin", "password": "p" * 20, "csrf_token": token}
        )
        assert refused.status_code == 403


async def test_pages_and_static_files_carry_a_strict_content_security_policy(
    browser_like: httpx.AsyncClient,
) -> None:
    for path in ("/signin", "/static/htmx.min.js"):
        resp = await browser_like.get(path)
        assert resp.status_code == 200
        csp = resp.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["x-content-type-options"] == "nosniff"


async def test_password_guessing_locks_the_account_but_not_its_passkeys(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    for _ in range(10):
        assert (await sign_in(browser_like, "wrong-password")).status_code == 401
    locked = await sign_in(browser_like, portal.password)
    assert locked.status_code == 429
    assert 'role="alert"' in locked.text
    # an unknown name is not recorded (it may be a password typed in the wrong field)
    assert (await sign_in(browser_like, "x", username="hunter2-typed-here")).status_code == 401
    conn = await asyncpg.connect(portal.config.database_url)
    try:
        subjects = {r[0] for r in await conn.fetch("SELECT subject FROM portal.staff_actions")}
    finally:
        await conn.close()
    assert subjects == {"admin", ""}


async def test_an_unreachable_clearinghouse_is_a_503_page_not_an_internal_error(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    # This portal's gateway address answers nothing: the SDK retries until its
    # deadline, then the page says the clearinghouse cannot be reached.
    assert (await sign_in(browser_like, portal.password)).status_code == 303
    resp = await browser_like.get("/claims", timeout=60)
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "30"
    assert "ไม่พร้อมให้บริการชั่วคราว" in resp.text  # Thai by default
