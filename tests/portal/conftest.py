"""Portal fixtures: an offline hospital portal (no clearinghouse needed) on a
scratch database, and an HTTP client that behaves like a same-origin browser."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page
from pytest_playwright_asyncio import CreateContextCallback

from tests.portal.browser import ARGS, ARTIFACTS, CHROMIUM, CONTEXT
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


# The real stack (Envoy, services, sandbox insurers), one hospital portal and
# the TESTPULL insurer portal on it: once per session, for the browser tests only
# (unit tests here request none of them). The browser, its contexts and pages are
# pytest-playwright-asyncio's fixtures (`browser`, `context`, `page`, `new_context`),
# configured below.


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


# (option, the plugin's default, ours)
_ARTIFACT_OPTIONS = (
    ("screenshot", "off", "only-on-failure"),
    ("tracing", "off", "retain-on-failure"),
    ("output", "test-results", str(ARTIFACTS)),
)


def pytest_configure(config: pytest.Config) -> None:
    """The plugin's failure artifacts, for `make test` as for `pytest tests/portal`:
    a full-page screenshot of each page and the trace of each context of a failed
    test, under ARTIFACTS/<test id>/ (the plugin empties ARTIFACTS at session start).
    Here rather than in pyproject's addopts: an absolute path whatever the working
    directory, and no plugin option in runs that do not collect tests/portal. An
    option given on the command line (other than the plugin's default) stands."""
    for dest, plugin_default, ours in _ARTIFACT_OPTIONS:
        if getattr(config.option, dest, None) == plugin_default:
            setattr(config.option, dest, ours)
    if hasattr(config.option, "full_page_screenshot"):
        config.option.full_page_screenshot = True


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, **CONTEXT}


@pytest.fixture
async def second_page(new_context: CreateContextCallback) -> Page:
    """Another person's browser (own cookies), e.g. the insurer's reviewer: a context
    of the plugin's, so it is traced and screenshotted like `page`'s."""
    context = await new_context()
    return await context.new_page()
