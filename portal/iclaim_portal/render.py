"""Rendering a page: the visitor's language, the session's CSRF token, who is
signed in."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse

from iclaim_portal.i18n import DEFAULT_LOCALE, LOCALES, translations
from iclaim_portal.sessions import Session

LANG_COOKIE = "lang"


def locale_of(request: Request) -> str:
    lang = request.cookies.get(LANG_COOKIE, DEFAULT_LOCALE)
    return lang if lang in LOCALES else DEFAULT_LOCALE


def session_or_none(request: Request) -> Session | None:
    """The visitor's session; None for one without a session yet (a safe
    request: the security middleware refuses unsafe ones without a session)."""
    new: Session | None = getattr(request.state, "new_session", None)
    session: Session | None = request.state.session
    return new or session


def session_of(request: Request) -> Session:
    """The session of a request sure to have one: an unsafe request, a signed-in page."""
    session: Session | None = request.state.session
    if session is None:
        raise RuntimeError("this request has no session")
    return session


class Renderer:
    def __init__(self, envs: dict[str, Environment], globals_: dict[str, Any]) -> None:
        self.envs = envs
        for env in envs.values():
            env.globals.update(globals_)

    def text(self, request: Request, name: str, **context: Any) -> str:
        env = self.envs[locale_of(request)]
        session = session_or_none(request)
        return env.get_template(name).render(
            request=request,
            # no session, no form to post (a page with a form makes the session first)
            csrf_token=session.csrf_token if session else "",
            staff=getattr(request.state, "staff", None),
            **context,
        )

    def page(self, request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(self.text(request, name, **context), status_code=status_code)

    def gettext(self, request: Request, message: str) -> str:
        """A message from Python code, in the visitor's language."""
        return translations(locale_of(request)).gettext(message)
