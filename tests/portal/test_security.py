"""Sign-in, sessions, CSRF and Origin against a served portal on real
PostgreSQL: what a browser (or an attacker's page) would see."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from datetime import timedelta

import asyncpg
import httpx
import pytest
from argon2.exceptions import VerifyMismatchError

from iclaim_portal import staff
from iclaim_portal.context import local_path
from iclaim_portal.security import session_cookie
from iclaim_portal.staff import MAX_FAILURES, SigninLimits
from tests.portal.authenticator import SoftAuthenticator
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
    await csrf_of(browser_like)  # the sign-in form starts the anonymous session
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


@pytest.mark.parametrize(
    "value",
    [
        "//evil.example/x",
        "/\t/evil.example",  # browsers drop the tab: //evil.example
        "/\n/evil.example",
        "/\r\n/evil.example",
        "/ /evil.example",
        "/\x00/evil.example",
        "/\u200b/evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "claims",
        "",
    ],
)
def test_a_next_that_is_not_a_path_of_this_portal_goes_home(value: str) -> None:
    assert local_path(value) == "/"


@pytest.mark.parametrize("value", ["/", "/claims", "/claims/txn_1?state=APPROVED", "/statement?a=1&b=2#top"])
def test_a_path_of_this_portal_is_followed(value: str) -> None:
    assert local_path(value) == value


async def _count(portal: RunningPortal, query: str) -> int:
    conn = await asyncpg.connect(portal.config.database_url)
    try:
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


async def test_a_cookieless_visit_to_a_page_without_a_form_writes_no_session(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    for path in ("/", "/claims", "/actions", "/lang/en?next=/claims"):
        resp = await browser_like.get(path)
        assert resp.status_code == 303, path
        assert "iclaim-portal=" not in set_cookie(resp), path
        browser_like.cookies.clear()
    assert await _count(portal, "SELECT count(*) FROM portal.sessions") == 0
    # the sign-in form needs one (its CSRF token, the passkey challenge)
    assert set_cookie(await browser_like.get("/signin")).startswith("iclaim-portal=")
    assert await _count(portal, "SELECT count(*) FROM portal.sessions") == 1
    # an unsafe request without a session is refused, and makes none either
    browser_like.cookies.clear()
    refused = await browser_like.post("/signin", data={"username": "admin", "password": portal.password})
    assert refused.status_code == 403 and "iclaim-portal=" not in set_cookie(refused)
    assert await _count(portal, "SELECT count(*) FROM portal.sessions") == 1


async def _expire_some(portal: RunningPortal) -> None:
    conn = await asyncpg.connect(portal.config.database_url)
    try:
        await conn.execute(
            "INSERT INTO portal.sessions (token_sha256, csrf_token, expires_at)"
            " SELECT sha256(('expired ' || g || random())::bytea), 'x', now() - interval '1 minute'"
            " FROM generate_series(1, 3) g"
        )
    finally:
        await conn.close()


EXPIRED = "SELECT count(*) FROM portal.sessions WHERE expires_at <= now()"


async def test_expired_sessions_go_at_each_sign_in_by_password_or_passkey(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    await _expire_some(portal)
    assert await _count(portal, EXPIRED) == 3
    await sign_in(browser_like, portal.password)
    assert await _count(portal, EXPIRED) == 0

    token = await csrf_of(browser_like, "/passkeys")
    headers = {"X-CSRF-Token": token, "Content-Type": "application/json"}
    authenticator = SoftAuthenticator()
    options = (await browser_like.post("/passkeys/options", headers=headers)).text
    created = authenticator.create(options, portal.url)
    assert (
        await browser_like.post("/passkeys", headers=headers, content=json.dumps(created))
    ).status_code == 200
    await browser_like.post("/signout", headers=headers)
    browser_like.cookies.clear()

    await _expire_some(portal)
    headers["X-CSRF-Token"] = await csrf_of(browser_like)
    options = (await browser_like.post("/signin/passkey/options", headers=headers)).text
    assertion = json.dumps(authenticator.get(options, portal.url))
    assert (await browser_like.post("/signin/passkey", headers=headers, content=assertion)).status_code == 200
    assert await _count(portal, EXPIRED) == 0


async def test_parallel_wrong_passwords_cannot_all_slip_under_the_limit(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    token = await csrf_of(browser_like)
    form = {"username": "admin", "password": "wrong-password", "next": "/", "csrf_token": token}
    tries = MAX_FAILURES + 10
    answers = await asyncio.gather(*(browser_like.post("/signin", data=form) for _ in range(tries)))
    codes = [a.status_code for a in answers]
    assert codes.count(401) == MAX_FAILURES and codes.count(429) == tries - MAX_FAILURES
    assert (await sign_in(browser_like, portal.password)).status_code == 429


def _alert(page: httpx.Response) -> str:
    found = re.search(r'<p role="alert"[^>]*>(.*?)</p>', page.text)
    assert found, page.text
    return found.group(1)


async def test_an_unknown_username_is_locked_as_an_account_is(
    portal: RunningPortal, browser_like: httpx.AsyncClient
) -> None:
    locked = {}
    for name in ("admin", "no-such-member"):
        for _ in range(MAX_FAILURES):
            assert (await sign_in(browser_like, "wrong-password", username=name)).status_code == 401
        locked[name] = await sign_in(browser_like, "wrong-password", username=name)
    assert [r.status_code for r in locked.values()] == [429, 429]
    assert _alert(locked["admin"]) == _alert(locked["no-such-member"])
    # still not recorded: the unknown name may be a password typed in the wrong field
    assert (
        await _count(portal, "SELECT count(*) FROM portal.staff_actions WHERE subject = 'no-such-member'")
        == 0
    )


async def test_other_requests_are_answered_while_a_password_is_checked(
    portal: RunningPortal, browser_like: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    checking, done = threading.Event(), threading.Event()
    waited: list[bool] = []

    class SlowHasher:
        """Checks until the test has had another page answered (or 5 s pass)."""

        def verify(self, stored: str, password: str) -> bool:
            checking.set()
            waited.append(done.wait(5))
            raise VerifyMismatchError

    monkeypatch.setattr(staff, "_hasher", SlowHasher())
    token = await csrf_of(browser_like)
    form = {"username": "admin", "password": "wrong-password", "next": "/", "csrf_token": token}
    attempt = asyncio.create_task(browser_like.post("/signin", data=form))
    for _ in range(500):
        if checking.is_set():
            break
        await asyncio.sleep(0.01)
    async with httpx.AsyncClient(base_url=portal.url) as other:
        assert (await other.get("/signin")).status_code == 200
    done.set()
    assert (await attempt).status_code == 401
    assert waited == [True]  # the page above was answered while the check ran


def test_signin_limits_per_name_and_per_address_in_a_window() -> None:
    now = [0.0]
    limits = SigninLimits(per_name=3, per_address=5, window=timedelta(minutes=15), clock=lambda: now[0])
    assert [limits.begin("somsri", "10.0.0.1") for _ in range(4)] == [True, True, True, False]
    assert limits.begin("somchai", "10.0.0.1") and limits.begin("somying", "10.0.0.1")
    assert not limits.begin("anyone-else", "10.0.0.1")  # the address used up its 5
    assert limits.begin("anyone-else", "10.0.0.2")
    now[0] += 15 * 60 + 1
    assert limits.begin("somsri", "10.0.0.1")
    limits.succeeded("somsri", "10.0.0.1")  # a right password is no failure
    assert [limits.begin("somsri", "10.0.0.1") for _ in range(4)] == [True, True, True, False]


def test_signin_limits_keep_a_bounded_number_of_keys() -> None:
    limits = SigninLimits(per_name=1, per_address=10**6, max_tracked=50)
    for i in range(1000):
        assert limits.begin(f"name-{i}", "10.0.0.1")
    assert len(limits._attempts) <= 50
