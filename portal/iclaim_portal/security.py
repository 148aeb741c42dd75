"""Every request passes here first: the session from its cookie, and for unsafe
methods an Origin check and a CSRF token check (form field `csrf_token` or the
`X-CSRF-Token` header htmx sends), before any handler runs. Bodies are
bounded and read once here, then replayed to the app. No session is made here:
a page that needs one for a visitor without it (the sign-in form) makes it, so
a cookieless request (a crawler, a probe) writes nothing."""

from __future__ import annotations

import hmac
from collections.abc import Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iclaim_portal.sessions import SESSION_TTL, Session, SessionStore

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Every response: scripts only from our own /static/ (no inline script anywhere),
# no framing, forms post only here; the Referer stays same-origin (the Origin
# fallback reads it).
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
        b" frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]
# Pages (not /static/) show decrypted patient data: kept in no cache, the
# browser's included (Back after sign-out, a shared computer).
NO_STORE = (b"cache-control", b"no-store")
MAX_BODY_BYTES = 2 * 1024 * 1024
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# Set by a handler to replace the session (sign-in), to start one (a page that
# needs a CSRF token for a visitor without a session), or to drop it (sign-out).
NEW_SESSION = "new_session"
END_SESSION = "end_session"


def cookie_name(secure: bool) -> str:
    # __Host- binds the cookie to this exact origin: Secure, Path=/, no Domain.
    return "__Host-iclaim-portal" if secure else "iclaim-portal"


def session_cookie(token: str, *, secure: bool, max_age: int | None = None) -> str:
    age = int(SESSION_TTL.total_seconds()) if max_age is None else max_age
    parts = [f"{cookie_name(secure)}={token}", "Path=/", "HttpOnly", "SameSite=Strict", f"Max-Age={age}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


class Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


class SecurityMiddleware:
    def __init__(
        self, app: ASGIApp, *, sessions: Callable[[], SessionStore], origin: str, secure: bool
    ) -> None:
        self.app = app
        self._sessions = sessions
        self.origin = origin
        self.secure = secure

    @property
    def sessions(self) -> SessionStore:
        return self._sessions()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        if scope["path"].startswith("/static/"):
            await self.app(scope, receive, send)
            return
        send = _no_store(send)
        method = scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        session = await self._session(headers)
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state["session"] = session  # None: none yet (render.session_or_none)
        try:
            if method not in SAFE_METHODS:
                # read (bounded) before refusing, so the connection stays in step
                body = await _read_body(receive)
                self._check_origin(headers)
                if session is None or not await self._csrf_ok(session, headers, scope, body):
                    raise Refused(403, "csrf")
                receive = _replay(body)
        except Refused as refused:
            response = _refusal(refused)
            await response(scope, receive, self._with_cookie(send, state))
            return
        await self.app(scope, receive, self._with_cookie(send, state))

    async def _session(self, headers: dict[str, str]) -> Session | None:
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no session, not an error page
            return None
        morsel = cookie.get(cookie_name(self.secure))
        return await self.sessions.get(morsel.value) if morsel and morsel.value else None

    def _check_origin(self, headers: dict[str, str]) -> None:
        origin = headers.get("origin")
        if origin is not None:
            if origin != self.origin:
                raise Refused(403, "origin")
            return
        # Browsers send Origin on every POST; without it, the Referer must be ours.
        referer = headers.get("referer", "")
        if not referer.startswith(self.origin + "/"):
            raise Refused(403, "origin")

    async def _csrf_ok(self, session: Session, headers: dict[str, str], scope: Scope, body: bytes) -> bool:
        sent = headers.get(CSRF_HEADER)
        if sent is None:
            sent = await _form_token(scope, body)
        return sent is not None and hmac.compare_digest(sent.encode(), session.csrf_token.encode())

    def _with_cookie(self, send: Send, state: MutableMapping[str, Any]) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                header: str | None = None
                if state.get(END_SESSION):
                    header = session_cookie("", secure=self.secure, max_age=0)
                elif (new := state.get(NEW_SESSION)) is not None:
                    header = session_cookie(new.token, secure=self.secure)
                if header:
                    message = {**message, "headers": [*message["headers"], (b"set-cookie", header.encode())]}
            await send(message)

        return wrapped


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
        await send(message)

    return wrapped


def _no_store(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != NO_STORE[0]]
            message = {**message, "headers": [*kept, NO_STORE]}
        await send(message)

    return wrapped


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused(400, "disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Refused(413, "too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _form_token(scope: Scope, body: bytes) -> str | None:
    content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
    if content_type.startswith("application/x-www-form-urlencoded"):
        values = parse_qs(body.decode("utf-8", "replace")).get(CSRF_FIELD)
        return values[0] if values else None
    if content_type.startswith("multipart/form-data"):
        request = Request(scope, _replay(body))
        async with request.form(max_files=4, max_fields=100) as form:
            value = form.get(CSRF_FIELD)
            return value if isinstance(value, str) else None
    return None


# Thai first (the default language), then English: the refusal comes before any page renders.
_MESSAGES = {
    "csrf": (
        "แบบฟอร์มนี้หมดอายุหรือไม่ได้มาจากพอร์ทัลนี้ กรุณากลับไป โหลดหน้าใหม่ แล้วลองอีกครั้ง",
        "This form has expired or did not come from this portal. Go back, reload the page and try again.",
    ),
    "origin": ("ปฏิเสธ: คำขอนี้ไม่ได้มาจากพอร์ทัลนี้", "Refused: this request did not come from this portal."),
    "too_large": ("ไฟล์ใหญ่เกินไป (ไม่เกิน 2 MB)", "The upload is too large (the limit is 2 MB)."),
    "disconnected": ("คำขอถูกตัดกลางคัน", "The request was cut off."),
}


def _refusal(refused: Refused) -> Response:
    return PlainTextResponse("\n".join(_MESSAGES[refused.why]), status_code=refused.status)
