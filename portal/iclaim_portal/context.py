"""What every handler reaches through `request.app.state.portal`, and the
signed-in guard."""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import asyncpg
from iclaim.client.billing import BillingClient
from iclaim.client.hospital import HospitalClient
from iclaim.client.insurer import InsurerClient
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from iclaim_portal.claims import Timeline
from iclaim_portal.config import Config
from iclaim_portal.passkeys import Passkeys
from iclaim_portal.render import Renderer, session_or_none
from iclaim_portal.sessions import SessionStore
from iclaim_portal.staff import SigninLimits, Staff, StaffStore


@dataclass
class Portal:
    config: Config
    pool: asyncpg.Pool
    staff: StaffStore
    sessions: SessionStore
    passkeys: Passkeys
    renderer: Renderer
    timeline: Timeline
    # The SDK's clients for this side, opened at start (one signed channel each).
    billing: BillingClient
    hospital: HospitalClient | None = None
    insurer: InsurerClient | None = None
    signins: SigninLimits = field(default_factory=SigninLimits)


def portal_of(request: Request) -> Portal:
    portal: Portal = request.app.state.portal
    return portal


Handler = Callable[[Request], Awaitable[Response]]


def signed_in(*, acting: bool = False, admin: bool = False) -> Callable[[Handler], Handler]:
    """Pages for staff only; `acting` pages also need a role that may change
    things, `admin` pages the admin role."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: Request) -> Response:
            portal = portal_of(request)
            session = session_or_none(request)
            staff = await portal.staff.get(session.staff_id) if session and session.staff_id else None
            if staff is None:
                return RedirectResponse(f"/signin?next={request.url.path}", status_code=303)
            if (acting and not staff.may_act) or (admin and not staff.is_admin):
                return portal.renderer.page(request, "forbidden.html", status_code=403)
            request.state.staff = staff
            return await handler(request)

        return guarded

    return wrap


async def form_values(request: Request) -> dict[str, str]:
    """The posted form's text fields (a file part is left out)."""
    async with request.form() as form:
        return {k: v for k, v in form.items() if isinstance(v, str)}


def not_found(request: Request) -> Response:
    return portal_of(request).renderer.page(request, "not_found.html", status_code=404)


def staff_of(request: Request) -> Staff:
    staff: Staff = request.state.staff
    return staff


def local_path(value: str | None, default: str = "/") -> str:
    """Only a path on this portal (no scheme, no //host) is followed after sign-in.
    Browsers drop tabs and newlines from a URL and read a backslash as a slash,
    so "/<TAB>/evil.example" would become "//evil.example": any whitespace, control
    character or backslash refuses the value outright."""
    if (
        not value
        or "\\" in value
        or any(c.isspace() or unicodedata.category(c).startswith("C") for c in value)
    ):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//"):
        return default
    return value
