"""Portal fixtures: an offline hospital portal (no clearinghouse needed) on a
scratch database, and an HTTP client that behaves like a same-origin browser."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page

from tests.portal.browser import chromium, traced_page
from tests.portal.support import ADMIN, RunningPortal, offline_credentials, running_portal
from tests.support.databases import create_db, drop_db
from tests.support.stack import RunningStack, running_stack_in


@pytest.fixture
async def portal(tmp_path: Path, make_database: Callable[[], Awaitable[str]]) -> AsyncIterator[RunningPortal]:
    async with running_portal(offline_credentials(tmp_path), "H0001", await make_database()) as running:
        yield running


@pytest.fixture
async def browser_like(portal: RunningPortal) -> AsyncIterator[httpx.AsyncClient]:
    """Sends Origin like a browser does on POST; follows no redirects by itself."""
    async with httpx.AsyncClient(base_url=portal.url, headers={"Origin": portal.url}, timeout=10) as client:
        yield client


async def csrf_of(client: httpx.AsyncClient, path: str = "/signin") -> str:
    page = await client.get(path)
    marker = 'name="csrf_token" value="'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index('"', start)]


async def sign_in(client: httpx.AsyncClient, password: str, username: str = ADMIN) -> httpx.Response:
    token = await csrf_of(client)
    return await client.post(
        "/signin", data={"username": username, "password": password, "next": "/", "csrf_token": token}
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Keeps each phase's report on the test item, so browser fixtures know a test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# The real stack (Envoy, services, sandbox insurers), one hospital portal and
# the TESTPULL insurer portal on it, and Chromium: once per session, for the
# browser tests only (unit tests here request none of them).


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    # A Redis database apart from the integration tests' stacks (they run in the same session).
    redis_db = int(os.environ.get("ICLAIM_TEST_PORTAL_REDIS_DB", "15"))
    async with running_stack_in(tmp_path_factory.mktemp("portal-stack"), redis_db=redis_db) as running:
        yield running


@asynccontextmanager
async def _portal_on(stack: RunningStack, code: str) -> AsyncIterator[RunningPortal]:
    name, url = await create_db()
    try:
        # "localhost", not an IP: WebAuthn refuses IP addresses as relying-party ids
        async with running_portal(stack.credentials_path, code, url, origin_host="localhost") as portal:
            yield portal
    finally:
        await drop_db(name)


@pytest.fixture(scope="session")
async def hospital_portal(stack: RunningStack) -> AsyncIterator[RunningPortal]:
    code = json.loads(stack.credentials_path.read_text())["hospitals"][0]["code"]
    async with _portal_on(stack, code) as portal:
        yield portal


@pytest.fixture(scope="session")
async def insurer_portal(stack: RunningStack) -> AsyncIterator[RunningPortal]:
    async with _portal_on(stack, "TESTPULL") as portal:
        yield portal


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


async def _context_page(
    request: pytest.FixtureRequest, browser: Browser, suffix: str = ""
) -> AsyncIterator[tuple[BrowserContext, Page]]:
    failed = [False]
    async with traced_page(browser, request.node.name + suffix, failed) as pair:
        yield pair
        report = getattr(request.node, "rep_call", None)
        failed[0] = report is None or report.failed


@pytest.fixture
async def context_page(
    request: pytest.FixtureRequest, browser: Browser
) -> AsyncIterator[tuple[BrowserContext, Page]]:
    async for pair in _context_page(request, browser):
        yield pair


@pytest.fixture
def page(context_page: tuple[BrowserContext, Page]) -> Page:
    return context_page[1]


@pytest.fixture
async def second_page(request: pytest.FixtureRequest, browser: Browser) -> AsyncIterator[Page]:
    """Another person's browser (own cookies), e.g. the insurer's reviewer."""
    async for _, page in _context_page(request, browser, "-second"):
        yield page
