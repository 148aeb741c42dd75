"""The ASGI app: routes, static files, security middleware, and at start the
database (migrations), the bootstrap admin and the SDK client for this side."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
from iclaim.audit.trail import GatewayTrail
from iclaim.client.billing import BillingClient
from iclaim.client.hospital import HospitalClient
from iclaim.client.insurer import InsurerClient
from iclaim.insurer.credentials import InsurerCredentials
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from iclaim_portal import db, views_auth, views_billing, views_hospital, views_insurer, views_reports
from iclaim_portal.insurer_queue import Queue, pull_forever
from iclaim_portal.claims import Timeline
from iclaim_portal.config import HOSPITAL, INSURER, Config
from iclaim_portal.context import Portal, not_found, portal_of, signed_in
from iclaim_portal.i18n import environments
from iclaim_portal.passkeys import Passkeys, RelyingParty
from iclaim_portal.render import Renderer
from iclaim_portal.rpc import refusal_reason
from iclaim_portal.security import SecurityMiddleware
from iclaim_portal.sessions import SessionStore
from iclaim_portal.staff import StaffStore

STATIC = Path(__file__).parent / "static"


@signed_in()
async def home(request: Request) -> Response:
    side = portal_of(request).config.side
    return RedirectResponse("/claims" if side == HOSPITAL else "/queue", status_code=303)


def portal_of_app(app: Starlette) -> Portal:
    portal: Portal = app.state.portal
    return portal


# What the SDK has already retried for as long as its deadline allows: the
# clearinghouse is down or busy, not the page broken.
_UNREACHABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
RETRY_AFTER_S = 30


async def clearinghouse_unreachable(request: Request, exc: Exception) -> Response:
    """A page that says so (503, Retry-After) instead of an internal error. A
    refusal a page did not handle is still the visitor's request, not the
    portal broken: NOT_FOUND a 404 page, INVALID_ARGUMENT a 400 page with the
    reason; any other stays a bug (500)."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        raise exc
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return not_found(request)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return portal_of(request).renderer.page(
            request, "bad_request.html", status_code=400, reason=refusal_reason(exc)
        )
    if code not in _UNREACHABLE:
        raise exc
    response = portal_of(request).renderer.page(request, "unavailable.html", status_code=503)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def build_app(config: Config) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await db.connect(config.database_url)
        staff = StaffStore(pool)
        if config.bootstrap_admin and await staff.count() == 0:
            await staff.create(
                config.bootstrap_admin, config.bootstrap_admin, "admin", config.bootstrap_password
            )
        hospital = HospitalClient(config.credentials) if config.side == HOSPITAL else None
        insurer = InsurerClient(config.credentials) if config.side == INSURER else None
        billing = BillingClient(config.credentials)
        app.state.portal = Portal(
            config=config,
            pool=pool,
            staff=staff,
            sessions=SessionStore(pool),
            passkeys=Passkeys(pool, RelyingParty(config.rp_id, "iClaim portal", config.origin)),
            renderer=Renderer(
                environments(), {"side": config.side, "participant_code": config.credentials.code}
            ),
            # The hub's audit trail, read over the hospital's signed channel.
            timeline=Timeline(pool, GatewayTrail(hospital.channel) if hospital else None),
            billing=billing,
            hospital=hospital,
            insurer=insurer,
        )
        puller = None
        if insurer is not None and isinstance(config.credentials, InsurerCredentials):
            puller = asyncio.create_task(pull_forever(insurer, config.credentials, Queue(pool)))
        try:
            yield
        finally:
            if puller is not None:
                puller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await puller
            for client in (hospital, insurer, billing):
                if client is not None:
                    await client.channel.close()
            await pool.close()

    routes = [
        Route("/", home, methods=["GET"]),
        *views_auth.ROUTES,
        *(views_hospital.ROUTES if config.side == HOSPITAL else []),
        *(views_insurer.ROUTES if config.side == INSURER else []),
        *views_billing.ROUTES,
        *views_reports.ROUTES,
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={grpc.aio.AioRpcError: clearinghouse_unreachable},
    )
    app.add_middleware(
        SecurityMiddleware,
        # built before the pool exists: reached at request time
        sessions=lambda: portal_of_app(app).sessions,
        origin=config.origin,
        secure=config.secure_cookies,
    )
    return app
